"""gen/parse.py's diagnostics, one code at a time: message, hint and span
of each, and several in one file. The programs it builds:
test_parse_programs.py."""
from pathlib import Path

import pytest

from parse_helpers import at, errors, only, run


# ---------------------------------------------------------------- diagnostics, one code at a time

HEAD = "import keras\nfrom keras.layers import Input, Dense\nx = Input((3,))\n"  # line 4 is the first test line


def one_error(src, code):
    prog, diags = run(HEAD + src)
    (d,) = [d for d in diags.items if d.code == code]
    assert d.severity == "error" and d.hint, d.render(None)
    assert len(errors(diags)) == 1, diags.render()
    return d


def test_syntax_error():
    prog, diags = run("x = (1,\ny = 2\n")
    assert prog is None
    d = only(diags, "syntax-error")
    assert d.message == ("invalid syntax: parser error: error at 2:4: expected one of !=, %, &, (, ), *, **, +, ,, "
                         "-, ., /, //, :=, <, <<, <=, ==, >, >=, >>, @, [, ^, and, if, in, is, not, or, |")
    at(d, 2, 1, 2, 2)


def test_unknown_layer():
    d = one_error("y = keras.layers.Conv2D(3)(x)\n", "unknown-layer")
    assert d.message == "gen does not support keras.layers.Conv2D."
    assert "Dense" in d.hint and "TimeDistributed" in d.hint
    at(d, 4, 5, 4, 24)
    d = one_error("from keras.layers import Dence\ny = Dence(3)(x)\n", "unknown-layer")
    assert d.message == 'gen does not support keras.layers.Dence. Did you mean "Dense"?'
    at(d, 5, 5, 5, 10)


def test_unsupported_statements_all_reported():
    src = ("def f():\n    pass\nif x:\n    y = 1\nfor i in []:\n    pass\nwhile False:\n    pass\n"
           "class A:\n    pass\nwith a:\n    pass\ntry:\n    pass\nexcept Exception:\n    pass\n"
           "del x\nglobal g\na, b = 1, 2, 3\nx += 1\nx.attr = 3\n")
    prog, diags = run(HEAD + src)
    found = [(d.code, d.span.line) for d in diags.items]
    assert found == [("unsupported-statement", line) for line in (4, 6, 8, 10, 12, 14, 16, 20, 21, 22, 23, 24)]
    d = diags.items[0]
    assert d.message == "gen does not support 'def' statements in a model file."
    at(d, 4, 1, 5, 9)
    assert diags.items[-2].message == ("gen supports augmented assignment only to a name bound to a constant. "
                                       "Received: x (bound to <KerasTensor>).")
    assert diags.items[-1].message == "gen can only assign to a plain name, not to x.attr."
    assert len(prog.layers) == 1  # what came before is kept


def test_undefined_name():
    d = one_error("units = 4\ny = Dense(unit)(x)\n", "undefined-name")
    assert d.message == "name 'unit' is not defined. Did you mean \"units\"?"
    at(d, 5, 11, 5, 15)
    d = one_error("y = Dense(4)(later)\nlater = x\n", "undefined-name")
    assert d.message == "name 'later' is not defined."


@pytest.mark.parametrize("expr, message, col, end", [
    ("__import__('os').system('x')", "gen does not evaluate the call __import__('os').system('x').", 11, 39),
    ("open('f')", "gen does not evaluate the call open('f').", 11, 20),
    ("eval('1')", "gen does not evaluate the call eval('1').", 11, 20),
    ("np.zeros(3)", "gen does not evaluate the call np.zeros(3).", 11, 22),
    ("np.pi", "gen does not evaluate numpy.pi (only Keras names are understood).", 11, 16),
    ("len", "gen does not evaluate the Python builtin 'len'.", 11, 14),
    ("lambda: 1", "gen does not evaluate lambda expressions such as lambda: 1.", 11, 20),
    ("[i for i in (1, 2)]", "gen does not evaluate comprehensions such as [i for i in (1, 2)].", 11, 30),
    ("f'{n}'", "gen does not evaluate f-strings with expressions.", 11, 17),
    ("(1, 2)[0]", "gen does not evaluate subscripts such as (1, 2)[0].", 11, 20),
    ("x.shape", "gen does not evaluate attribute access x.shape on <KerasTensor>.", 11, 18),
    ("'a' * 2", "gen does not evaluate '*' on 'a' (of type str) and 2 (of type int).", 11, 18),
    ("*[4]", "gen does not evaluate '*' arguments.", 11, 15),
])
def test_unsupported_expressions(expr, message, col, end):
    d = one_error(f"import numpy as np\nn = 1\ny = Dense({expr})(x)\n", "unsupported-expression")
    assert d.message == message
    at(d, 6, col, 6, end)


def test_unsupported_model_methods_and_calls():
    d = one_error("m = keras.Model(x, x)\nm.save('m.keras')\n", "unsupported-expression")
    assert d.message == "gen does not evaluate Model.save()."
    at(d, 5, 1, 5, 7)
    d = one_error("print(x)\n", "unsupported-expression")
    assert d.message == "gen does not evaluate the call print(x)."


def test_import_call_in_layer_argument_is_reported_and_never_run(tmp_path):
    marker = Path("/tmp/PWNED_gen_test")
    if marker.exists():
        marker.unlink()
    src = HEAD + "y = Dense(4, activation=__import__('os').system('touch /tmp/PWNED_gen_test'))(x)\n"
    path = tmp_path / "evil.py"
    path.write_text(src)
    prog, diags = run(path.read_text(), str(path))
    d = only(diags, "unsupported-expression")
    assert d.message.startswith("gen does not evaluate the call __import__('os').system(")
    at(d, 4, 25)
    assert not marker.exists()
    # the layer is still recorded (its activation dropped), so later stages can go on
    assert [l.cls for l in prog.layers] == ["InputLayer", "Dense"]


def test_not_a_tensor():
    d = one_error("y = Dense(4)(3)\n", "not-a-tensor")
    assert d.message == ("A Dense layer can only be called on a tensor or a list of tensors. "
                         "Received: 3 (of type int).")
    at(d, 4, 14, 4, 15)
    d = one_error("d = Dense(4)\ny = Dense(4)([x, d])\n", "not-a-tensor")
    assert d.message.endswith("Received: [<KerasTensor>, <Dense layer object>].")
    d = one_error("m = keras.Model(x, outputs=5)\n", "not-a-tensor")
    assert d.message == "All `outputs` values must be KerasTensors. Received: outputs=5 (of type int)."
    at(d, 4, 28, 4, 29)


def test_not_a_layer():
    d = one_error("t = keras.layers.TimeDistributed(Dense)\n", "not-a-layer")
    assert d.message == ("Please initialize `TimeDistributed` layer with a `keras.layers.Layer` instance. "
                         "Received: the class Dense.")
    at(d, 4, 34, 4, 39)


def test_unknown_keyword():
    d = one_error("y = Dense(4, activaton='relu')(x)\n", "unknown-keyword")
    assert d.message == "Unrecognized keyword argument passed to Dense: 'activaton'. Did you mean \"activation\"?"
    assert d.hint == "Dense accepts: units, activation, use_bias, name"
    at(d, 4, 14, 4, 23)
    d = one_error("o = keras.optimizers.RMSprop(lr=0.01)\n", "unknown-keyword")
    assert d.message == "Unrecognized keyword argument passed to RMSprop: 'lr'."
    assert d.hint == "Keras 3 spells it learning_rate"
    at(d, 4, 30, 4, 32)
    d = one_error("y = Dense(4)(x, training=True)\n", "unknown-keyword")
    assert d.message == "Unrecognized keyword argument passed to Dense.__call__: 'training'."


def test_too_many_missing_and_duplicate_arguments():
    d = one_error("y = Dense(4, 'relu', True, 'd')(x)\n", "too-many-arguments")
    assert d.message == ("Dense() takes at most 3 positional arguments (units, activation, use_bias) "
                         "but 4 were given.")
    at(d, 4, 28, 4, 31)
    d = one_error("y = Dense(activation='relu')(x)\n", "missing-argument")
    assert d.message == "Dense() missing required argument: 'units'."
    at(d, 4, 5, 4, 29)
    d = one_error("y = Dense(4, units=5)(x)\n", "duplicate-argument")
    assert d.message == "Dense() got multiple values for argument 'units'."
    at(d, 4, 14, 4, 21)


def test_optimizers():
    base = "m = keras.Model(x, x)\n"
    d = one_error(base + "m.compile(optimizer='rmsprp', loss='mse')\n", "unknown-optimizer")
    assert d.message == "Could not interpret optimizer identifier: 'rmsprp'. Did you mean \"rmsprop\"?"
    assert "'rmsprop', 'sgd' and 'adam'" in d.hint
    at(d, 5, 21, 5, 29)
    d = one_error(base + "m.compile(optimizer=keras.optimizers.Adagrad(), loss='mse')\n", "unknown-optimizer")
    assert d.message == "gen does not support the optimizer keras.optimizers.Adagrad."
    prog, diags = run(HEAD + "opt = keras.optimizers.Adam(learning_rate=0.5)\n" + base +
                      "m.compile(opt, loss='mse')\n")
    assert not diags.items
    assert prog.models[0].compile.optimizer_args["learning_rate"].value == 0.5


def test_bad_constant_and_not_compiled():
    d = one_error("n = 1 / 0\n", "bad-constant")
    assert d.message == "gen cannot compute this constant: division by zero."
    at(d, 4, 5, 4, 10)
    d = one_error("n = 10 ** 10 ** 10\n", "bad-constant")
    assert d.message == "gen cannot compute this constant: the integer is too large."
    d = one_error("m = keras.Model(x, x)\nm.fit(a, b)\n", "not-compiled")
    assert d.message == "You must call `compile()` before using the model."
    at(d, 5, 1, 5, 12)


def test_many_errors_in_one_file_are_all_reported_and_objects_kept():
    src = HEAD + """y = Dense(4, activaton='relu')(x)
z = keras.layers.Conv2D(3)(y)
w = Dense(open('f'))(y)
for i in range(3):
    y = Dense(2)(y)
v = Dense(2)(undefined)
m = keras.Model(x, y)
m.compile(optimizer='nope', loss='mse')
m.fit(data, labels, epochs=1 / 0)
"""
    prog, diags = run(src)
    codes = [d.code for d in diags.sorted()]
    assert codes == ["unknown-keyword", "unknown-layer", "unsupported-expression", "unsupported-statement",
                     "undefined-name", "unknown-optimizer", "bad-constant"]
    assert [l.cls for l in prog.layers] == ["InputLayer", "Dense", "Dense"]
    (m,) = prog.models
    assert m.compile is not None and m.fit is not None and m.fit.args == {}
    assert "\n    = help: " in diags.render()


def test_keras_activation_functions_and_method_results():
    src = HEAD + """y = Dense(2, activation=keras.activations.relu)(x)
m = keras.Model(x, y)
m.compile('adam', 'mse')
h = m.fit(*data)
z = Dense(h)(x)
m.fit([*parts], labels)
"""
    prog, diags = run(src)
    assert prog.layers[1].args["activation"].value == "relu"
    found = [(d.code, d.span.line, d.span.col, d.message) for d in diags.items]
    assert found == [("unsupported-expression", 7, 11, "gen does not evaluate '*' arguments."),
                     ("unsupported-expression", 8, 11, "gen does not evaluate the result of model.fit().")]
    assert prog.models[0].fit.x == "opaque" and prog.models[0].fit.y == "opaque"


def test_tuple_unpacking_of_constants_and_tensors():
    from gen.diagnostics import Diagnostics
    from gen.parse import parse
    src = "from keras.layers import Input, Dense\nsteps, features = 7, 3\nx = Input(shape=(steps, features))\n" \
          "a, b = 1, 2, 3\n"
    d = Diagnostics(source=src)
    prog = parse("m.py", src, d)
    assert prog.layers[0].args["shape"].value == (7, 3)
    assert [(x.code, x.span.line) for x in d.items] == [("unsupported-statement", 4)]
    assert "Cannot unpack 3 value(s) into 2 names." in d.items[0].message
