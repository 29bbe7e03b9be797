"""gen/parse.py: model files -> ir.Program, never executed: the import
spellings, constants, creation order, the seed examples, compile() and fit().
Diagnostics one code at a time: test_parse_diagnostics.py."""
from pathlib import Path

import pytest

from gen import ir
from gen.diagnostics import Span

from parse_helpers import at, errors, only, run

ROOT = Path(__file__).resolve().parents[1]
SEEDS = sorted((ROOT.parent / "shared" / "seed-examples").glob("*.py")) or sorted((ROOT / "examples").glob("*.py"))


def shape(prog: ir.Program):
    """Everything of a Program except spans and variable names."""
    layers = [(l.id, l.order, l.cls, {k: a.value for k, a in l.args.items()}, l.inner) for l in prog.layers]
    calls = [(c.id, c.callee, c.inputs, c.outputs) for c in prog.calls]
    models = []
    for m in prog.models:
        comp = m.compile and (m.compile.optimizer, {k: a.value for k, a in m.compile.optimizer_args.items()},
                              m.compile.loss and m.compile.loss.value)
        fit = m.fit and (m.fit.x, m.fit.y, {k: a.value for k, a in m.fit.args.items()})
        models.append((m.id, m.order, m.name and m.name.value, m.inputs, m.outputs, comp, fit))
    return layers, calls, models


# ---------------------------------------------------------------- import spellings

BODY = """
a = {Input}(shape=(8,), name='a')
b = {Input}(shape=(8,), name='b')
h = {concatenate}([{Dense}(4, activation='relu')(a), {Dense}(4)(b)], axis=-1)
out = {Dense}(1, activation='sigmoid')(h)
model = {Model}(inputs=[a, b], outputs=out)
model.compile(optimizer={Adam}(0.01), loss='binary_crossentropy')
model.fit([xa, xb], y, epochs=3)
"""

SPELLINGS = {
    "from-imports": ("from keras.layers import Input, Dense, concatenate\nfrom keras.models import Model\n"
                     "from keras.optimizers import Adam",
                     dict(Input="Input", Dense="Dense", concatenate="concatenate", Model="Model", Adam="Adam")),
    "from-keras-import-layers": ("from keras import layers, models, optimizers",
                                 dict(Input="layers.Input", Dense="layers.Dense", concatenate="layers.concatenate",
                                      Model="models.Model", Adam="optimizers.Adam")),
    "import-keras": ("import keras",
                     dict(Input="keras.Input", Dense="keras.layers.Dense", concatenate="keras.layers.concatenate",
                          Model="keras.Model", Adam="keras.optimizers.Adam")),
    "module-aliases": ("import keras.layers as L\nimport keras.models as M\nimport keras.optimizers as O",
                       dict(Input="L.Input", Dense="L.Dense", concatenate="L.concatenate", Model="M.Model",
                            Adam="O.Adam")),
    "name-aliases": ("from keras.layers import Input as I, Dense as D, concatenate as cat\n"
                     "from keras import Model as Mo\nfrom keras.optimizers import Adam as A",
                     dict(Input="I", Dense="D", concatenate="cat", Model="Mo", Adam="A")),
    "tensorflow-from": ("from tensorflow.keras.layers import Input, Dense, concatenate\n"
                        "from tensorflow.keras.models import Model\nfrom tensorflow.keras.optimizers import Adam",
                        dict(Input="Input", Dense="Dense", concatenate="concatenate", Model="Model", Adam="Adam")),
    "from-tensorflow-import-keras": ("from tensorflow import keras",
                                     dict(Input="keras.layers.Input", Dense="keras.layers.Dense",
                                          concatenate="keras.layers.concatenate", Model="keras.models.Model",
                                          Adam="keras.optimizers.Adam")),
    "import-tensorflow-as-tf": ("import tensorflow as tf",
                                dict(Input="tf.keras.Input", Dense="tf.keras.layers.Dense",
                                     concatenate="tf.keras.layers.concatenate", Model="tf.keras.Model",
                                     Adam="tf.keras.optimizers.Adam")),
    "alias-by-assignment": ("import keras\nL = keras.layers\nDense = L.Dense",
                            dict(Input="L.Input", Dense="Dense", concatenate="L.concatenate",
                                 Model="keras.Model", Adam="keras.optimizers.Adam")),
}


def _spelled(name):
    header, names = SPELLINGS[name]
    return header + "\n" + BODY.format(**names)


@pytest.mark.parametrize("name", sorted(SPELLINGS))
def test_every_import_spelling_gives_the_same_program(name):
    ref, ref_diags = run(_spelled("from-imports"))
    prog, diags = run(_spelled(name))
    assert not diags.items, diags.render()
    assert not ref_diags.items, ref_diags.render()
    assert shape(prog) == shape(ref)


def test_the_reference_program_shape():
    prog, _ = run(_spelled("from-imports"))
    classes = [(l.order, l.cls) for l in prog.layers]
    assert classes == [(0, "InputLayer"), (1, "InputLayer"), (2, "Dense"), (3, "Dense"), (4, "Concatenate"),
                       (5, "Dense")]
    concat = prog.layers[4]
    assert {k: a.value for k, a in concat.args.items()} == {"axis": -1}
    t = lambda i: ir.Ref("tensor", i)  # noqa: E731
    assert [(c.callee, c.inputs, c.outputs) for c in prog.calls] == [
        (ir.Ref("layer", 0), (), (0,)), (ir.Ref("layer", 1), (), (1,)),
        (ir.Ref("layer", 2), t(0), (2,)), (ir.Ref("layer", 3), t(1), (3,)),
        (ir.Ref("layer", 4), (t(2), t(3)), (4,)), (ir.Ref("layer", 5), t(4), (5,))]
    (model,) = prog.models
    assert (model.order, model.var, model.inputs, model.outputs) == (6, "model", (t(0), t(1)), t(5))
    assert model.compile.optimizer == "Adam"
    assert model.compile.optimizer_args["learning_rate"].value == 0.01
    assert (model.fit.x, model.fit.y, model.fit.args["epochs"].value) == (("opaque", "opaque"), "opaque", 3)
    assert prog.producer(4) == (prog.calls[4], 0)
    assert prog.tensor_spans[5] == Span("m.py", 8, 7, 8, 40)


def test_same_name_rebound_is_flow_sensitive():
    prog, diags = run("from keras.layers import Dense, Input\nx = Input((3,))\nDense = 3\ny = Dense(4)(x)\n")
    d = only(diags, "unsupported-expression")
    at(d, 4, 5)
    assert "not callable" in d.message
    assert [l.cls for l in prog.layers] == ["InputLayer"]


# ---------------------------------------------------------------- constants

def test_constants_and_arithmetic():
    src = """
from keras.layers import Input, Embedding, Dense
vocab = 10000
maxlen: int = 2 * 50
units = 2 * 32
a = b = units // 3 + 7 % 4 - 2 ** 3
half = -1 / 4
name = 'out' + "_" 'put'
shape = (maxlen,) + (1,)
cfg = {'rate': +0.5, 'n': [1, 2]}
units += 1
flag = f'plain'
x = Input(shape=(maxlen,), dtype='int32')
e = Embedding(vocab, units, name=name)(x)
"""
    prog, diags = run(src)
    assert not diags.items, diags.render()
    inp, emb = prog.layers
    assert inp.args["shape"].value == (100,)
    assert {k: a.value for k, a in emb.args.items()} == {"input_dim": 10000, "output_dim": 65, "name": "out_put"}
    assert emb.var is None
    # the evaluator's environment is internal, so check the values through a layer
    src2 = src + "d = Dense(a, activation=flag)\nq = Dense(units=shape, name=cfg)\nr = Dense(half)\n"
    prog, diags = run(src2)
    assert not diags.items, diags.render()
    d, q, r = prog.layers[2:]
    assert d.args["units"].value == 64 // 3 + 7 % 4 - 2 ** 3 and d.args["activation"].value == "plain" and d.var == "d"
    assert q.args["units"].value == (100, 1) and q.args["name"].value == {"rate": 0.5, "n": (1, 2)}
    assert r.args["units"].value == -0.25


def test_arg_items_spans():
    prog, _ = run("from keras.layers import Input\nx = Input(shape=(3, 40))\n")
    arg = prog.layers[0].args["shape"]
    assert arg.span == Span("m.py", 2, 17, 2, 24)  # the parentheses belong to the tuple
    assert arg.items == (Span("m.py", 2, 18, 2, 19), Span("m.py", 2, 21, 2, 23))


# ---------------------------------------------------------------- creation order

def _orders(src):
    prog, diags = run("from keras.layers import Input, Dense, Concatenate, concatenate\n"
                      "a = Input((3,))\nb = Input((3,))\n" + src)
    assert not diags.items, diags.render()
    return [(l.cls, l.args["units"].value if "units" in l.args else None) for l in
            sorted(prog.layers, key=lambda l: l.order)][2:], prog


def test_callee_is_created_before_its_argument():
    order, prog = _orders("y = Dense(2)(Dense(3)(a))\n")
    assert order == [("Dense", 2), ("Dense", 3)]
    inner, outer = prog.calls[2:]
    assert inner.callee == ir.Ref("layer", 3) and outer.callee == ir.Ref("layer", 2)
    assert outer.inputs == ir.Ref("tensor", inner.outputs[0])


def test_concatenate_function_creates_its_layer_after_its_arguments():
    order, _ = _orders("y = concatenate([Dense(2)(a), Dense(3)(b)])\n")
    assert order == [("Dense", 2), ("Dense", 3), ("Concatenate", None)]


def test_concatenate_class_is_created_before_its_inputs():
    order, _ = _orders("y = Concatenate()([Dense(2)(a), Dense(3)(b)])\n")
    assert order == [("Concatenate", None), ("Dense", 2), ("Dense", 3)]


def test_positional_then_keyword_order_and_models_share_the_counter():
    src = ("from keras import Model\nfrom keras.layers import TimeDistributed\n"
           "m = Model(a, Dense(5)(Dense(6)(a)), name='inner')\n"
           "t = TimeDistributed(Dense(7), name='td')\n"
           "n = Model(inputs=b, outputs=Dense(8)(b))\n")
    order, prog = _orders(src)
    assert order == [("Dense", 5), ("Dense", 6), ("Dense", 7), ("TimeDistributed", None), ("Dense", 8)]
    m, n = prog.models
    assert (m.order, m.var, m.name.value, n.order, n.var) == (4, "m", "inner", 8, "n")
    td = prog.layers[5]
    assert td.cls == "TimeDistributed" and td.inner == ir.Ref("layer", 4) and set(td.args) == {"name"}
    assert td.var == "t"


def test_calling_models():
    src = """
import keras
a = keras.Input((3,))
p = keras.layers.Dense(2)(a)
q = keras.layers.Dense(1)(a)
two = keras.Model(a, [p, q])
one = keras.Model(a, p)
x = keras.Input((3,))
r2 = two(x)
r1 = one(x)
out = keras.layers.concatenate(r2)
m = keras.Model(x, [out, r1])
"""
    prog, diags = run(src)
    assert not diags.items, diags.render()
    two_call, one_call, concat_call = prog.calls[-3:]
    assert two_call.callee == ir.Ref("model", 0) and two_call.inputs == ir.Ref("tensor", 3)
    assert len(two_call.outputs) == 2 and one_call.callee == ir.Ref("model", 1) and len(one_call.outputs) == 1
    assert concat_call.inputs == tuple(ir.Ref("tensor", t) for t in two_call.outputs)
    assert prog.models[2].outputs == (ir.Ref("tensor", concat_call.outputs[0]), ir.Ref("tensor", one_call.outputs[0]))
    assert [m.order for m in prog.models] == [3, 4, 7]


def test_model_call_results_follow_the_outputs_structure():
    src = """
import keras
a = keras.Input((3,))
p = keras.layers.Dense(2)(a)
named = keras.Model(a, {'p': p, 'q': p})
x = keras.Input((3,))
d = named(x)
m = keras.Model(inputs={'x': x}, outputs=d)
"""
    prog, diags = run(src)
    assert not diags.items, diags.render()
    m = prog.models[1]
    call = prog.calls[-1]
    assert m.inputs == {"x": ir.Ref("tensor", 2)}
    assert m.outputs == {"p": ir.Ref("tensor", call.outputs[0]), "q": ir.Ref("tensor", call.outputs[1])}


# ---------------------------------------------------------------- seed examples

@pytest.mark.parametrize("path", SEEDS, ids=lambda p: p.name)
def test_seed_examples_parse_cleanly(path):
    prog, diags = run(path.read_text(), str(path))
    assert not errors(diags), diags.render()
    assert prog.models and prog.layers
    if path.name == "twitter.py":
        (w,) = diags.items
        assert (w.severity, w.code) == ("warning", "keras2-keyword")
        assert w.message == "compile() got the Keras 2 keyword 'loss_weight'; Keras 3 spells it 'loss_weights'."
        at(w, 32, 64, 32, 75)
        assert prog.models[0].compile.loss_weights.value == (1.0, 0.2)
    else:
        assert not diags.items, diags.render()


def test_seed_twitter_shape():
    path = next(p for p in SEEDS if p.name == "twitter_named.py")
    prog, _ = run(path.read_text(), str(path))
    assert [l.cls for l in prog.layers] == ["InputLayer", "Embedding", "LSTM", "Dense", "InputLayer", "Concatenate",
                                           "Dense", "Dense", "Dense", "Dense"]
    (m,) = prog.models
    assert m.fit.x == {"main_input": "opaque", "aux_input": "opaque"}
    assert m.fit.y == {"main_output": "opaque", "aux_output": "opaque"}
    assert m.compile.loss.value == {"main_output": "binary_crossentropy", "aux_output": "binary_crossentropy"}
    assert {k: a.value for k, a in m.fit.args.items()} == {"epochs": 50, "batch_size": 32}


def test_seed_reuse_shape():
    path = next(p for p in SEEDS if p.name == "reuse.py")
    prog, _ = run(path.read_text(), str(path))
    model, reused, video = prog.models
    assert (model.var, reused.var, video.var) == ("model", "reused", "video_model")
    assert [m.order for m in prog.models] == [4, 6, 9]
    td = next(l for l in prog.layers if l.cls == "TimeDistributed")
    assert td.inner == ir.Ref("model", 0) and dict(td.args) == {}
    call = prog.producer(reused.outputs.id)[0]
    assert call.callee == ir.Ref("model", 0)


# ---------------------------------------------------------------- compile / fit

def test_compile_and_fit_forms():
    src = """
import keras
from keras.optimizers import SGD
x = keras.Input((3,))
m = keras.Model(x, keras.layers.Dense(1)(x))
opt = SGD(0.1, 0.9, nesterov=True)
m.summary()
m.compile(optimizer='adam', loss='mse')
m.compile(opt, 'mse', metrics=['accuracy'])
history = m.fit(x=data, y=None, batch_size=16, shuffle=False, validation_split=0.2, validation_data=(vx, vy))
"""
    prog, diags = run(src)
    assert not diags.items, diags.render()
    (m,) = prog.models
    assert m.compile.optimizer == "SGD"  # the second compile replaced the first
    assert {k: a.value for k, a in m.compile.optimizer_args.items()} == {
        "learning_rate": 0.1, "momentum": 0.9, "nesterov": True}
    assert m.compile.metrics.value == ("accuracy",)
    assert (m.fit.x, m.fit.y, m.fit.y_span) == ("opaque", None, Span("m.py", 10, 27, 10, 31))
    assert {k: a.value for k, a in m.fit.args.items()} == {
        "batch_size": 16, "shuffle": False, "validation_split": 0.2, "validation_data": ("opaque", "opaque")}


def test_default_optimizer_and_case_insensitive_strings():
    src = "import keras\nx = keras.Input((3,))\nm = keras.Model(x, x)\nm.compile(loss='mse')\n"
    prog, diags = run(src)
    assert not diags.items and prog.models[0].compile.optimizer == "RMSprop"
    prog, diags = run(src.replace("loss='mse'", "'SGD'"))
    assert not diags.items and prog.models[0].compile.optimizer == "SGD"


def test_fit_data_is_never_evaluated_but_calls_are_flagged():
    src = ("import keras, numpy as np\nx = keras.Input((3,))\nm = keras.Model(x, x)\nm.compile('sgd', 'mse')\n"
           "m.fit(np.load('x.npy'), {'out': undefined_labels})\n")
    prog, diags = run(src)
    d = only(diags, "not-evaluated")
    assert d.severity == "warning" and not errors(diags)
    assert d.message == "gen does not evaluate np.load('x.npy'): fit() data arrives at run time."
    at(d, 5, 7, 5, 23)
    assert prog.models[0].fit.x == "opaque" and prog.models[0].fit.y == {"out": "opaque"}
