"""Data-parallel passes (gen/parts.py): a model of Dense, Activation and
Concatenate layers runs a pass over a big enough batch in parts of its rows,
a thread each. Against Keras: test_keras_conformance_schedules.py, test_conformance_parts.
Here: the parts give what the one-call passes give through fit (shuffled
batches, a last batch too small for parts, validation), evaluate and predict;
when they run; their sum of the gradients and its NaN/Inf count; a
non-finite step stops as any other."""
import numpy as np
import pytest

from genmods import generated, random_data

# (example, model): generated modules with parts
CASES = [("mlp", "model"), ("regressor", "regressor"), ("reuse_shared_dense", "chain")]


def no_parts(monkeypatch, mod):
    monkeypatch.setattr(mod, "_RT_PARTS_MIN_ROWS", 1 << 40)


@pytest.mark.parametrize("example,name", CASES)
def test_parts_equal_one_call_passes(example, name, monkeypatch):
    mod = generated(example, name)
    monkeypatch.setattr(mod, "_RT_PARTS_MIN_MACS", 0)
    assert mod.Model._parts
    xs, ys = random_data(mod.Model, 300, np.random.default_rng(3))
    runs = {}
    for parts in (True, False):
        if not parts:
            no_parts(monkeypatch, mod)
        m = mod.Model(seed=4)
        assert (m._parts_for(96) > 0) == (parts and mod.numba.get_num_threads() > 1)
        # batches of 96, 96 and 48 rows (the last below _RT_PARTS_MIN_ROWS), 60 validation rows
        h = m.fit(xs, ys, epochs=2, batch_size=96, validation_split=0.2, verbose=0)
        runs[parts] = (h, m.get_weights(), m.evaluate(xs, ys, batch_size=100), m.predict(xs, batch_size=150))
    (h1, w1, e1, p1), (h0, w0, e0, p0) = runs[True], runs[False]
    assert sorted(h1) == sorted(h0)
    for k in h0:
        np.testing.assert_allclose(h1[k], h0[k], rtol=2e-5, atol=1e-6)
    for a, b in zip(w1, w0):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    for k in e0:
        np.testing.assert_allclose(e1[k], e0[k], rtol=2e-5, atol=1e-6)
    for a, b in zip(p1 if isinstance(p1, list) else [p1], p0 if isinstance(p0, list) else [p0]):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_parts_only_where_they_pay(monkeypatch):
    mod = generated("mlp", "model")
    m = mod.Model(seed=0)
    threads = mod.numba.get_num_threads()
    want = threads if threads > 1 else 0
    assert m._parts_for(64) == want and m._parts_for(1024) == want
    assert m._parts_for(63) == 0  # owned rows or one-call passes below
    assert mod.Model._parts_macs == 784 * 64 + 64 * 64 + 64 * 10
    m._fuse_small = False  # benchmark() times each layer's own kernels
    assert m._parts_for(1024) == 0
    monkeypatch.setattr(mod, "_rt_parts_threads", lambda: 0)
    assert mod.Model(seed=0)._parts_for(1024) == 0
    assert not generated("twitter", "model").Model._parts  # an Embedding and an LSTM


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sum_parts_and_its_nonfinite_count(dtype):
    mod = generated("mlp", "model")
    r = np.random.default_rng(0)
    for P in (1, 2, 3):
        G = r.standard_normal((P, 1001)).astype(dtype)
        g = np.full(1001, np.nan, dtype)
        assert mod._rt_sum_parts(g, G) == 0
        want = G[0].copy()
        for p in range(1, P):
            want += G[p]
        np.testing.assert_array_equal(g, want)  # summed in row order
    big = np.finfo(dtype).max
    G = np.zeros((2, 50), dtype)
    G[:, 7] = big  # finite parts whose sum overflows
    G[1, 9] = np.nan
    assert mod._rt_sum_parts(np.empty(50, dtype), G) == 2


def test_parts_non_finite_loss_keeps_weights():
    mod = generated("mlp", "model")
    m = mod.Model(seed=0)
    xs, ys = random_data(mod.Model, 128, np.random.default_rng(5))
    assert m._parts_for(128) or mod.numba.get_num_threads() == 1
    huge = m.get_weights()
    huge[4][:] = 3e38  # the softmax layer's kernel: inf - inf in its pre-activations
    huge[4][:, 0] = -3e38
    m.set_weights(huge)
    with np.errstate(all="ignore"):
        with pytest.raises(FloatingPointError, match="epoch 1, batch 1: Non-finite loss"):
            m.fit(xs, ys, batch_size=128, verbose=0)
        with pytest.raises(FloatingPointError, match="Non-finite loss"):
            m.train_on_batch(xs, ys)
    assert m.iterations == 0
    assert all(np.array_equal(a, b) for a, b in zip(m.get_weights(), huge))


@pytest.mark.parametrize("example,name", CASES)
def test_parts_gradients_equal_one_call_gradients(example, name, monkeypatch):
    """The parts' gradients, summed, are the batch's: those compute_gradients
    (no parts) gives, on shuffled rows gathered by the parts."""
    mod = generated(example, name)
    monkeypatch.setattr(mod, "_RT_PARTS_MIN_MACS", 0)
    m = mod.Model(seed=2)
    xs, ys = random_data(mod.Model, 100, np.random.default_rng(6))
    order = np.random.default_rng(7).permutation(100)
    b = m._batch(100)
    m._train_step_parts(b, xs, ys, order, [None] * len(ys), 2)  # a 2-part step, whatever the thread count
    got = m._grads.copy()
    ref = mod.Model(seed=2)
    _, grads = ref.compute_gradients([x[order] for x in xs], [y[order] for y in ys])
    want = np.concatenate([np.ravel(g) for layer in grads.values() for g in layer])
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def test_parts_predict_reports_a_non_finite_input():
    """predict checks a big input for NaN/Inf through its first layer's
    pre-activations (runtime: _defers_check); the parts count them too."""
    mod = generated("mlp", "model")
    m = mod.Model(seed=0)
    x = np.random.default_rng(8).random((1024, 784), dtype=np.float32)
    assert m._parts_for(512) or mod.numba.get_num_threads() == 1
    for at, bad, batch in (((700, 5), np.nan, 1024), ((3, 0), np.inf, 512)):
        y = x.copy()
        y[at] = bad
        with pytest.raises(ValueError, match=rf"contains {bad} at index \({at[0]}, {at[1]}\)"):
            m.predict(y, batch_size=batch)
    assert np.isfinite(m.predict(x, batch_size=1024)).all()


@pytest.mark.parametrize("n", [1000, 64, 33])
def test_forward_parts_computes_every_chunk_whatever_the_threads(n):
    """_forward_parts hands out chunks of _RT_PARTS_CHUNK_ROWS rows to the
    thread that is free (_take_next): every row is computed, and each row's
    result is the same on 1, 2 or 3 threads (chunks fixed, not halves), and
    within float32 rounding of the one-call pass. The buffers start as NaN,
    so a chunk never handed out shows."""
    mod = generated("mlp", "model")
    m = mod.Model(seed=0)
    x = np.random.default_rng(5).random((n, 784), dtype=np.float32)
    m._fuse_small = False  # the layer kernels, no parts
    want = m._forward(m._batch(n, grads=False).bufs, [x], False)[0].copy()
    outs = []
    for P in (1, 2, 3):
        bufs = [np.full((n, k), np.nan, np.float32) for k in (64, 64, 10)]
        assert mod._forward_parts(P, m._params, bufs[0], x, bufs[1], bufs[2]) == 0
        assert all(np.isfinite(b).all() for b in bufs), P
        outs.append(bufs[2])
    assert all(np.array_equal(outs[0], o) for o in outs[1:])
    np.testing.assert_allclose(outs[0], want, rtol=1e-5, atol=1e-7)
