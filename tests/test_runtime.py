"""The runtime (templates/runtime*.py) tested through a hand-written fake
generated module (runtime_helpers.py): construction and initialisers,
predict and input structure, targets, losses and metrics, the weights API
and summary. Gradients, training steps and fit: test_runtime_fit.py."""

import math

import numpy as np
import pytest

from runtime_helpers import data, two_data


# -- construction and initialisers ------------------------------------------

def test_flat_buffers_and_views(fake_mod):
    m = fake_mod.Model(seed=0)
    assert m._params.dtype == np.float32 and m._params.size == 15
    for w, g in zip(m._w, m._g):
        assert np.shares_memory(w, m._params) and np.shares_memory(g, m._grads)
    assert [w.shape for w in m.get_weights()] == [(4, 3), (3,)]
    assert m.iterations == 0
    assert fake_mod.Model(dtype=np.float64)._params.dtype == np.float64
    with pytest.raises(ValueError):
        fake_mod.Model(dtype=np.int32)


def test_initialisers(fake_mod):
    m = fake_mod.Inits(seed=3)
    emb, kernel, rec, bias = m.get_weights()
    assert np.abs(emb).max() <= 0.05 and emb.std() > 0.01
    limit = math.sqrt(6 / (8 + 64))
    assert np.abs(kernel).max() <= limit and np.abs(kernel).max() > 0.9 * limit
    np.testing.assert_allclose(rec @ rec.T, np.eye(16), atol=1e-5)  # rows orthonormal
    np.testing.assert_array_equal(bias, np.r_[np.zeros(16), np.ones(16), np.zeros(32)])
    again = fake_mod.Inits(seed=3).get_weights()
    assert all(np.array_equal(a, b) for a, b in zip(m.get_weights(), again))
    assert not np.array_equal(fake_mod.Inits(seed=4).get_weights()[0], emb)
    assert m._opt_state and len(m._opt_state) == 3  # rmsprop: v, m, mg
    # without momentum or centering only v is read: m and mg take no memory
    assert [st.size for st in m._opt_state] == [m._params.size, 0, 0]


def test_zero_biases(fake_mod):
    m = fake_mod.TwoOut(seed=0)
    assert not m._w[2].any() and not m._w[4].any()


# -- predict and input structure ---------------------------------------------

def test_predict_single_and_multi(fake_mod):
    m = fake_mod.Model(seed=0)
    x, _ = data(70)
    p = m.predict(x)
    assert isinstance(p, np.ndarray) and p.shape == (70, 3)
    np.testing.assert_allclose(p.sum(axis=1), 1, rtol=1e-5)
    np.testing.assert_array_equal(p, m.predict(x, batch_size=7))
    np.testing.assert_array_equal(p, m.predict([x]))
    np.testing.assert_array_equal(p, m.predict({"x": x}))
    np.testing.assert_allclose(p, m.predict(x.astype(np.float64)), rtol=1e-6)
    t = fake_mod.TwoOut(seed=0)
    xs, _ = two_data()
    out = t.predict(xs)
    assert isinstance(out, list) and [o.shape for o in out] == [(10, 1), (10, 3)]
    by_name = t.predict({"aux": xs[1], "ids": xs[0]})
    assert all(np.array_equal(a, b) for a, b in zip(out, by_name))
    assert t.input_names == ("ids", "aux") and t.output_names == ("o1", "o2")


def test_predict_ints_cast_for_float_input(fake_mod):
    m = fake_mod.Model(seed=0)
    xi = np.arange(8).reshape(2, 4)
    np.testing.assert_allclose(m.predict(xi), m.predict(xi.astype(np.float32)))


@pytest.mark.parametrize("bad, words", [
    (lambda x: x[0], ["'ids'", "'aux'", "single array"]),
    (lambda x: [x[0]], ["2 inputs", "1 arrays"]),
    (lambda x: {"ids": x[0]}, ["Missing", "'aux'"]),
    (lambda x: {"ids": x[0], "aux": x[1], "extra": x[1]}, ["Unknown", "'extra'"]),
    (lambda x: [x[0], x[1][:, :1]], ["'aux'", "(None, 2)", "shape=(10, 1)"]),
    (lambda x: [x[0], x[1][:, :, None]], ["'aux'", "(None, 2)", "shape=(10, 2, 1)"]),
    (lambda x: [x[0].astype(np.float32), x[1]], ["'ids'", "(None, 3)", "float32"]),
    (lambda x: [x[0][:5], x[1]], ["cardinality", "'ids' has 5", "'aux' has 10"]),
    (lambda x: [x[0], np.full((10, 2), "a")], ["'aux'", "(None, 2)"]),
])
def test_bad_inputs(fake_mod, bad, words):
    t = fake_mod.TwoOut(seed=0)
    xs, _ = two_data()
    with pytest.raises(ValueError) as err:
        t.predict(bad(xs))
    for w in words:
        assert w in str(err.value), (w, str(err.value))


def test_ids_out_of_range_checked_before_kernels(fake_mod):
    t = fake_mod.TwoOut(seed=0)
    calls = []
    real = t._forward
    t._forward = lambda *a: calls.append(1) or real(*a)
    xs, ys = two_data()
    for bad in (10, -1):
        ids = xs[0].copy()
        ids[4, 2] = bad
        for call in (lambda: t.predict([ids, xs[1]]), lambda: t.fit([ids, xs[1]], ys, verbose=0),
                     lambda: t.evaluate([ids, xs[1]], ys)):
            with pytest.raises(ValueError, match=rf"'ids'.*{bad}.*\(4, 2\).*\[0, 10\)"):
                call()
    assert calls == []
    t.predict(xs)
    assert calls


def test_non_finite_inputs(fake_mod):
    m = fake_mod.Model(seed=0)
    x, y = data()
    x[3, 1] = np.nan
    with pytest.raises(ValueError, match=r"'x'.*\(None, 4\).*nan.*\(3, 1\)"):
        m.predict(x)
    y2 = y.copy()
    y2[0, 0] = np.inf
    with pytest.raises(ValueError, match="Target 'dense'"):
        m.evaluate(data()[0], y2)
    m.check_finite = False
    assert np.isnan(m.predict(x)[3]).all()
    assert np.isfinite(fake_mod.Model(check_finite=False).predict(data()[0])).all()


def test_non_finite_inputs_big(fake_mod):
    """From _RT_CHECK_PARALLEL_MIN values the check runs on every thread: it
    still finds a NaN or Inf anywhere, and reports the first."""
    m = fake_mod.Model(seed=0)
    n = fake_mod._RT_CHECK_PARALLEL_MIN // 4 + 3
    x = np.zeros((n, 4), np.float32)
    assert x.size >= fake_mod._RT_CHECK_PARALLEL_MIN
    assert not fake_mod._rt_has_nonfinite(x.reshape(-1))
    for at, v in (((n - 1, 3), np.inf), ((n // 2, 0), np.nan)):
        x[at] = v
        with pytest.raises(ValueError, match=rf"'x'.*{v}.*\({at[0]}, {at[1]}\)"):
            m.predict(x, batch_size=n)
    x[7, 2] = -np.inf
    with pytest.raises(ValueError, match=r"-inf.*\(7, 2\)"):  # the first of three
        m.predict(x, batch_size=n)


# -- targets, losses, metrics ---------------------------------------------

def test_metric_keys_single_and_multi(fake_mod):
    m = fake_mod.Model(seed=0)
    x, y = data()
    assert list(m.evaluate(x, y)) == ["accuracy", "loss"]
    t = fake_mod.TwoOut(seed=0)
    xs, ys = two_data()
    logs = t.evaluate(xs, ys)
    assert list(logs) == ["loss", "o1_accuracy", "o1_loss", "o2_accuracy", "o2_loss"]
    assert all(type(v) is float for v in logs.values())
    assert logs["loss"] == pytest.approx(logs["o1_loss"] + 0.5 * logs["o2_loss"], rel=1e-6)
    assert list(fake_mod.Linear(seed=0).evaluate(x, y)) == ["loss"]


def test_loss_is_batch_mean(fake_mod):
    m = fake_mod.Model(seed=0, dtype=np.float64)
    x, y = data(13)
    p = m.predict(x)
    want = -np.mean(np.sum(y * np.log(p), axis=1))
    assert m.evaluate(x, y, batch_size=5)["loss"] == pytest.approx(want, rel=1e-9)
    acc = np.mean(p.argmax(1) == y.argmax(1))
    assert m.evaluate(x, y, batch_size=13)["accuracy"] == pytest.approx(acc)


def test_target_structures(fake_mod):
    t = fake_mod.TwoOut(seed=0)
    xs, ys = two_data()
    ref = t.evaluate(xs, ys)
    variants = [
        {"o2": ys[1], "o1": ys[0]},
        (ys[0], ys[1]),
        [ys[0][:, 0], ys[1][:, None]],          # (n,) for a (1,) output; sparse (n, 1) squeezed
        [ys[0].astype(np.float64), ys[1].astype(np.float32)],  # integral float class ids
    ]
    for v in variants:
        assert t.evaluate(xs, v) == ref
    with pytest.raises(ValueError, match=r"Target 'o2'.*\[0, 3\)"):
        t.evaluate(xs, [ys[0], ys[1] + 3])
    with pytest.raises(ValueError, match=r"Target 'o1' expected shape \(None, 1\)"):
        t.evaluate(xs, [np.zeros((10, 2)), ys[1]])
    with pytest.raises(ValueError, match="Missing data for target 'o2'"):
        t.evaluate(xs, {"o1": ys[0]})
    with pytest.raises(ValueError, match="cardinality"):
        t.evaluate(xs, [ys[0][:9], ys[1][:9]])


def test_accuracy_kind_from_shapes(fake_mod):
    k = fake_mod._Runtime._accuracy_kind
    assert k((1,), (5, 1)) == "binary"
    assert k((4,), (5,)) == "sparse_categorical"
    assert k((4,), (5, 1)) == "sparse_categorical"
    assert k((4,), (5, 4)) == "categorical"
    assert k((7, 4), (5, 7)) == "sparse_categorical"


def test_sequence_output_flattened(fake_mod):
    m = fake_mod.Seq(seed=0, dtype=np.float64)
    rng = np.random.default_rng(0)
    x = rng.random((6, 2, 4))
    t = rng.integers(0, 3, (6, 2))
    p = m.predict(x)
    assert p.shape == (6, 2, 3)
    picked = np.take_along_axis(p, t[..., None], axis=-1)
    logs = m.evaluate(x, t)
    assert logs["loss"] == pytest.approx(-np.log(picked).mean(), rel=1e-9)
    assert logs["accuracy"] == pytest.approx(np.mean(p.argmax(-1) == t))
    assert m.evaluate(x, t[..., None]) == logs


# -- weights API --------------------------------------------------------------

def test_set_weights_checks_everything_first(fake_mod):
    m = fake_mod.Model(seed=0)
    w0 = m.get_weights()
    new = [np.ones((4, 3)), np.ones(3)]
    with pytest.raises(ValueError, match="expected 2 arrays, Received: 1"):
        m.set_weights(new[:1])
    with pytest.raises(ValueError, match=r"weight 1 \('dense/bias'\) expected shape \(3,\)"):
        m.set_weights([new[0], np.ones(4)])
    assert all(np.array_equal(a, b) for a, b in zip(m.get_weights(), w0))
    m.set_weights(new)
    assert all((w == 1).all() for w in m.get_weights())
    assert np.shares_memory(m._w[0], m._params)  # views stay valid
    m.get_weights()[0][...] = 7  # copies, not views
    assert (m._w[0] == 1).all()


def test_layer_weights_round_trip(fake_mod):
    t, u = fake_mod.TwoOut(seed=0), fake_mod.TwoOut(seed=1)
    lw = t.layer_weights()
    assert list(lw) == ["ids", "embedding", "aux", "o1", "o2"] and lw["aux"] == []
    u.set_layer_weights(lw)
    assert all(np.array_equal(a, b) for a, b in zip(t.get_weights(), u.get_weights()))
    v = fake_mod.TwoOut(seed=2)
    before = v.get_weights()
    v.set_layer_weights({"o1": lw["o1"]})  # a subset
    after = v.get_weights()
    assert np.array_equal(after[1], lw["o1"][0]) and np.array_equal(after[0], before[0])
    with pytest.raises(ValueError, match="Unknown layer 'nope'"):
        v.set_layer_weights({"o2": lw["o2"], "nope": []})
    with pytest.raises(ValueError, match=r"o2.*kernel.*\(4, 3\)"):
        v.set_layer_weights({"o1": [np.zeros((4, 1)), np.zeros(1)],  # valid, but not applied
                             "o2": [np.zeros((3, 4)), np.zeros(3)]})
    assert all(np.array_equal(a, b) for a, b in zip(v.get_weights(), after))


def test_save_load_weights(fake_mod, tmp_path):
    t = fake_mod.TwoOut(seed=0)
    path = tmp_path / "w.npz"
    t.save_weights(path)
    assert [p.name for p in tmp_path.iterdir()] == ["w.npz"]  # no temp file left
    u = fake_mod.TwoOut(seed=1, dtype=np.float64)
    u.load_weights(path)
    assert all(np.allclose(a, b) for a, b in zip(t.get_weights(), u.get_weights()))
    t.save_weights(str(path))  # overwrite in place
    m = fake_mod.Model(seed=0)
    w0 = m.get_weights()
    with pytest.raises(ValueError, match=r"weight 0 is 'embedding/embeddings' in the file, "
                                         r"'dense/kernel' in the model"):
        m.load_weights(path)
    assert all(np.array_equal(a, b) for a, b in zip(m.get_weights(), w0))


def test_load_weights_shape_mismatch(fake_mod, tmp_path):
    class Wide(fake_mod.Model):
        _layers = (("x", "InputLayer", ()),
                   ("dense", "Dense", (("kernel", (4, 3)), ("bias", (5,)))))

    path = tmp_path / "wide.npz"
    Wide(seed=0).save_weights(path)
    m = fake_mod.Model(seed=0)
    w0 = m.get_weights()
    with pytest.raises(ValueError, match=r"weight 1 \('dense/bias'\) expected shape \(3,\)"):
        m.load_weights(path)
    assert all(np.array_equal(a, b) for a, b in zip(m.get_weights(), w0))


def test_summary(fake_mod, capsys):
    fake_mod.TwoOut(seed=0).summary()
    out = capsys.readouterr().out
    assert 'Model: "two_out"' in out
    for text in ("Layer (type)", "Output Shape", "Param #", "embedding (Embedding)",
                 "(None, 3, 2)", "ids (InputLayer)", "(None, 3)", "o2 (Dense)", "15",
                 "Total params: 40 (160.00 B)", "Trainable params: 40"):
        assert text in out, text
