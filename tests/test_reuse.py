"""Reuse (issue 3): models called like layers, shared layer objects and
TimeDistributed, checked beyond the Keras conformance suite (which runs every
examples/reuse*.py model already):

- float64 finite differences of *every* weight entry on the model whose
  Dense runs at three call sites (two of them in a row) and on a
  TimeDistributed(Model) + LSTM model;
- gradient accumulation of a shared layer whatever order its call sites
  run in (source variants that make gen order them differently), against
  finite differences and against Keras's own gradients;
- every generated module owns its weights, even when the model files share
  an inner model between several outer models;
- `layer_weights()` of an outer model lists a nested model's (and a
  TimeDistributed wrapper's) weights under its name, in Keras's order.
"""
from __future__ import annotations

import re

import numpy as np
import pytest

import keras_oracle as ko
from conftest import EXAMPLES, import_module_from_path, run_gen
from genmods import generated, random_data


def _loss(m, xs, ys):
    return m.evaluate(xs, ys, batch_size=len(ys[0]))["loss"]


def fd_check_every_entry(m, xs, ys, eps=1e-6):
    """Central differences of the float64 total loss for every entry of every
    weight, against compute_gradients. Returns the number of entries checked."""
    _, grads = m.compute_gradients(xs, ys)
    # get_weights() is layer_weights() flattened in layer order (no weight is
    # listed under two layers: gen refuses such models)
    flat_grads = [g for gs in grads.values() for g in gs]
    weights = m.get_weights()
    assert [g.shape for g in flat_grads] == [w.shape for w in weights]
    checked = 0
    for i, (w, g) in enumerate(zip(weights, flat_grads)):
        for k in range(w.size):
            orig = w.flat[k]
            losses = []
            for delta in (eps, -eps):
                w.flat[k] = orig + delta
                m.set_weights(weights)
                losses.append(_loss(m, xs, ys))
            w.flat[k] = orig
            fd = (losses[0] - losses[1]) / (2 * eps)
            assert abs(fd - g.flat[k]) <= 1e-8 + 1e-6 * abs(fd), (i, k, fd, g.flat[k])
            checked += 1
    m.set_weights(weights)
    return checked


# ---------------------------------------------------------------------------
# finite differences, every entry


@pytest.mark.parametrize("example,model", [
    ("reuse_shared_dense", "chain"),    # one Dense at three call sites, two in a row
    ("reuse_td_lstm", "clip_model"),    # TimeDistributed(Model) followed by an LSTM
])
def test_every_weight_entry_matches_finite_differences(example, model):
    mod = generated(example, model)
    m = mod.Model(seed=3, dtype=np.float64)
    xs, ys = random_data(mod.Model, 4, np.random.default_rng(5), np.float64)
    n_weights = sum(w.size for w in m.get_weights())
    assert fd_check_every_entry(m, xs, ys) == n_weights


def test_three_call_sites_use_one_set_of_weights():
    """chain.py: `shared` runs three times on one set of weights; its gradient
    is the sum over the call sites (compute_gradients of the whole model equals
    the sum of per-site contributions, measured by freezing the others)."""
    mod = generated("reuse_shared_dense", "chain")
    src = (EXAMPLES.parent / "generated" / "reuse_shared_dense" / "chain.py").read_text()
    assert len(re.findall(r"dense_forward\(b\['shared_call\d'\]", src)) == 3
    m = mod.Model(seed=0, dtype=np.float64)
    assert [w.shape for w in m.layer_weights()["shared"]] == [(4, 4), (4,)]
    assert [n for n, _c, ws in m._layers if ws] == ["shared", "out"]


# ---------------------------------------------------------------------------
# shared-layer gradient accumulation, call sites in any order

_ORDER_TEMPLATE = """\
from keras import Input, Model
from keras.layers import Dense, Concatenate

a = Input(shape=(3,), name='a')
b = Input(shape=(3,), name='b')
shared = Dense(3, activation='tanh', name='shared')
{calls}
{head}
chain = Model(inputs=[a, b], outputs={outputs}, name='chain')
chain.compile(optimizer='sgd', loss='mse')
"""

# Call sites: sa = shared(a), sh = shared(sa) (the same Dense twice in a row),
# sb = shared(b). gen runs calls in the depth-first order of the outputs, so
# the heads below give different forward (and so backward) orders, and change
# which consumer of sa writes its gradient first and which accumulates.
ORDER_VARIANTS = {
    # forward order of the call sites, and the source
    "b-a-h": ("sa = shared(a)\nsh = shared(sa)\nsb = shared(b)",
              "out = Dense(2, name='out')(Concatenate()([sb, sh, sa]))", "out"),
    "a-h-b": ("sa = shared(a)\nsh = shared(sa)\nsb = shared(b)",
              "out = Dense(2, name='out')(Concatenate()([sh, sb, sa]))", "out"),
    "a-b-h": ("sb = shared(b)\nsa = shared(a)\nsh = shared(sa)",
              "out = Dense(2, name='out')(Concatenate()([sa, sb, sh]))", "out"),
    # sa feeds a head that runs before sh exists: in the backward pass
    # shared(sa)'s call writes d sa first and the concatenation accumulates
    "a-b-[cat]-h": ("sa = shared(a)\nsb = shared(b)\nsh = shared(sa)",
                    "p = Dense(2, name='p')(Concatenate()([sa, sb]))\nq = Dense(1, name='q')(sh)", "[p, q]"),
    "a-h-[q]-b": ("sa = shared(a)\nsb = shared(b)\nsh = shared(sa)",
                  "p = Dense(2, name='p')(Concatenate()([sa, sb]))\nq = Dense(1, name='q')(sh)", "[q, p]"),
}


@pytest.fixture(scope="module")
def order_modules(tmp_path_factory):
    """{variant: (generated module, model file)}: one file per variant."""
    root = tmp_path_factory.mktemp("reuse_order")
    out = {}
    for key, (calls, head, outputs) in ORDER_VARIANTS.items():
        stem = "order_" + re.sub(r"\W", "_", key)
        path = root / f"{stem}.py"
        path.write_text(_ORDER_TEMPLATE.format(calls=calls, head=head, outputs=outputs))
        proc = run_gen(path, root / stem)
        assert proc.returncode == 0, proc.stderr
        out[key] = (import_module_from_path(root / stem / "chain.py"), path)
    return out


def _forward_sites(mod) -> list[str]:
    """The shared layer's call sites in the generated forward pass, named by
    what they are applied to: a, b, or h (the output of another call)."""
    src = open(mod.__file__).read()
    fwd = src[src.index("def _forward(self"):src.index("def _backward(self")]
    calls = re.findall(r"dense_forward\(b\['shared_call\d'\], b\['(\w+)'\]", fwd)
    return [x if x in ("a", "b") else "h" for x in calls]


@pytest.mark.parametrize("variant", list(ORDER_VARIANTS))
def test_shared_layer_gradients_in_any_call_order(variant, order_modules):
    mod, path = order_modules[variant]
    want_order = [s for s in variant.split("-") if not s.startswith("[")]
    assert _forward_sites(mod) == want_order, "the variant runs its call sites in the order it is named after"

    m = mod.Model(seed=7, dtype=np.float64)
    # against finite differences, every entry
    xs, ys = random_data(mod.Model, 5, np.random.default_rng(11), np.float64)
    fd_check_every_entry(m, xs, ys)

    # against Keras's own gradients (float64, same weights, same batch)
    kmodel = ko.build_keras_models(path, floatx="float64")["chain"]
    kmodel.set_weights(m.get_weights())
    x, y = ko.random_batch(kmodel, 5, np.random.default_rng(12))
    x = [a.astype(np.float64) for a in x]
    y = [a.astype(np.float64) for a in y] if isinstance(y, list) else y.astype(np.float64)
    want = ko.keras_step_results(kmodel, ko.recompile_kwargs(kmodel), x, y, steps=0)
    metrics, grads = m.compute_gradients(x, y)
    assert metrics["loss"] == pytest.approx(want["loss"], rel=1e-6)
    assert list(want["layer_grads"]) == [k for k, v in grads.items() if v]
    for lname, arrays in want["layer_grads"].items():
        for g, w in zip(grads[lname], arrays):
            np.testing.assert_allclose(g, w, rtol=1e-9, atol=1e-12, err_msg=lname)
    # the shared layer's gradient really is a sum over three sites
    assert np.abs(grads["shared"][0]).max() > 0


def test_order_variants_accumulate_in_different_orders(order_modules):
    """The variants do exercise different accumulation orders: in some the
    concatenation's backward overwrites d sa and shared(sa)'s accumulates
    into it, in others the reverse."""
    firsts = set()
    for mod, _path in order_modules.values():
        src = open(mod.__file__).read()
        bwd = src[src.index("def _backward(self"):]
        sa = re.search(r"dense_forward\(b\['(shared_call\d)'\], b\['a'\]", src).group(1)
        # the input-gradient mode: dense_backward's next-to-last argument (wmode is last), concat's last
        writes = [(k, args.split(", ")[-2 if k == "dense_backward" else -1]) for k, args in
                  re.findall(rf"^\s*((?:dense|concat)_backward)\(b\['d_{sa}'\](.*)\)$", bwd, re.M)]
        assert [mode for _k, mode in writes] == ["1", "2"], writes
        firsts.add(writes[0][0])
    assert firsts == {"dense_backward", "concat_backward"}


# ---------------------------------------------------------------------------
# each generated module owns its weights


def test_outer_models_sharing_an_inner_model_own_separate_weights():
    """reuse_two_outer.py: `base` is inside `mid` inside `scorer`, and
    TimeDistributed in `sequencer`; Keras shares the variables, each
    generated module has its own copy."""
    base = generated("reuse_two_outer", "base").Model(seed=0)
    mid = generated("reuse_two_outer", "mid").Model(seed=0)
    scorer_mod = generated("reuse_two_outer", "scorer")
    seq_mod = generated("reuse_two_outer", "sequencer")
    scorer, seq = scorer_mod.Model(seed=0), seq_mod.Model(seed=0)
    # same seed, same initial values of base's Dense everywhere it appears
    dense0 = base.layer_weights()["dense"]
    assert [w.shape for w in scorer.layer_weights()["functional_1"]] == [(3, 4), (4,), (4, 2), (2,)]
    for got in (mid.layer_weights()["functional"], scorer.layer_weights()["functional_1"][:2],
                seq.layer_weights()["time_distributed"]):
        for g, w in zip(got, dense0):
            np.testing.assert_array_equal(g, w)

    before = {k: [w.copy() for w in m.get_weights()] for k, m in
              (("base", base), ("mid", mid), ("scorer", scorer), ("sequencer", seq))}
    rng = np.random.default_rng(0)
    xs, ys = random_data(scorer_mod.Model, 16, rng)
    scorer.fit(xs, ys, epochs=2, batch_size=4, verbose=0)
    assert not np.array_equal(scorer.layer_weights()["functional_1"][0], before["scorer"][0])
    for k, m in (("base", base), ("mid", mid), ("sequencer", seq)):
        for g, w in zip(m.get_weights(), before[k]):
            np.testing.assert_array_equal(g, w, err_msg=f"training scorer changed {k}")
    after_scorer = [w.copy() for w in scorer.get_weights()]
    xs, ys = random_data(seq_mod.Model, 16, rng)
    seq.fit(xs, ys, epochs=2, batch_size=4, verbose=0)
    assert not np.array_equal(seq.get_weights()[0], before["sequencer"][0])
    for g, w in zip(scorer.get_weights(), after_scorer):
        np.testing.assert_array_equal(g, w, err_msg="training sequencer changed scorer")
    # two instances of one module are independent too
    other = scorer_mod.Model(seed=0)
    for g, w in zip(other.get_weights(), before["scorer"]):
        np.testing.assert_array_equal(g, w)


# ---------------------------------------------------------------------------
# nested weights under the nested model's name, in Keras's order

NESTED = [("reuse_heads", "heads"), ("reuse_siamese", "siamese"), ("reuse_nested_lstm", "pair_tagger"),
          ("reuse_two_outer", "scorer"), ("reuse_two_outer", "sequencer"), ("reuse_td_lstm", "clip_model"),
          ("reuse", "reused"), ("reuse", "video_model")]


@pytest.mark.parametrize("example,model", NESTED)
def test_layer_weights_follow_keras_layers(example, model):
    """Values, not only shapes: with the generated weights loaded into Keras,
    every `layer.get_weights()` of the Keras model equals the generated
    `layer_weights()[layer.name]`, array by array (so a nested model's
    weights sit under its name, in its own get_weights() order); and
    Keras's per-layer weights loaded by name reproduce Keras's predictions."""
    kmodel = ko.build_keras_models(EXAMPLES / f"{example}.py")[model]
    mod = generated(example, model)
    m = mod.Model(seed=4)
    kmodel.set_weights(m.get_weights())
    lw = m.layer_weights()
    assert [k for k, v in lw.items() if len(v)] == [l.name for l in kmodel.layers if l.weights]
    for layer in kmodel.layers:
        got, want = lw[layer.name], layer.get_weights()
        assert len(got) == len(want), layer.name
        for g, w in zip(got, want):
            np.testing.assert_array_equal(g, w, err_msg=layer.name)

    # the other way: a fresh Keras model's weights, by layer name
    fresh = ko.build_keras_models(EXAMPLES / f"{example}.py")[model]
    m2 = mod.Model(seed=9)
    m2.set_layer_weights({l.name: l.get_weights() for l in fresh.layers})
    for g, w in zip(m2.get_weights(), fresh.get_weights()):
        np.testing.assert_array_equal(g, w)
    x, _ = ko.random_batch(fresh, 3, np.random.default_rng(0))
    want = fresh.predict_on_batch(x)
    got = m2.predict(x)
    for g, w in zip(got if isinstance(got, list) else [got], want if isinstance(want, list) else [want]):
        np.testing.assert_allclose(g, np.asarray(w), rtol=1e-4, atol=1e-6)


def test_one_weight_under_two_entries_is_refused(tmp_path):
    """Keras lists a layer used both directly and inside a nested model under
    both entries of model.layers (the same variables). gen does not support
    that yet and says so instead of generating a module that cannot start."""
    path = tmp_path / "mixed.py"
    path.write_text(
        "from keras.layers import Input, Dense\n"
        "from keras.models import Model\n"
        "d = Dense(3, activation='relu')\n"
        "i = Input(shape=(3,))\n"
        "inner = Model(i, d(i))\n"
        "x = Input(shape=(3,))\n"
        "both = Model(x, d(inner(x)))\n")
    proc = run_gen(path, tmp_path / "out")
    assert proc.returncode == 2
    assert "error[unsupported-sharing]" in proc.stderr + proc.stdout
    assert "'functional' and 'dense'" in proc.stderr + proc.stdout
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
