"""Whole generated models' execution paths, each against the plain per-layer
one: the one-call forward pass of small batches (_forward_small), training
on one OpenBLAS thread, owned rows (_forward_owned and the owned backward
and update), steps in parts and their sums on the threads, and
Model.benchmark() timing each of them."""
import inspect
import re

import numpy as np
import pytest

from genmods import GENERATED, all_generated, generated, random_data

SMALL = [(e, m) for e, m in all_generated() if "\ndef _forward_small(" in (GENERATED / e / f"{m}.py").read_text()]


def test_small_forward_only_where_every_layer_has_a_serial_kernel():
    with_lstm = {(e, m) for e, m in all_generated() if "lstm_forward(" in (GENERATED / e / f"{m}.py").read_text()}
    assert ("mlp", "model") in SMALL and len(SMALL) >= 10
    assert with_lstm and not with_lstm & set(SMALL)


def _count_small_calls(mod, monkeypatch):
    """A list that each one-call forward pass (_forward_small) appends
    OpenBLAS's thread count to as it starts."""
    calls = []
    fused, blas = mod._forward_small, mod._scipy_openblas()
    monkeypatch.setattr(mod, "_forward_small", lambda *a: calls.append(blas[1]() if blas else 1) or fused(*a))
    return calls


@pytest.mark.parametrize("example,model", SMALL)
def test_small_forward_is_the_per_layer_forward(example, model, monkeypatch):
    """Small batches run the forward pass as one compiled call; it gives the
    bits of the per-layer path."""
    mod = generated(example, model)
    calls = _count_small_calls(mod, monkeypatch)
    one, per_layer = mod.Model(seed=3), mod.Model(seed=3)
    per_layer._fuse_small = False
    rng = np.random.default_rng(0)
    for n in (1, 7):
        xs, _ = random_data(mod.Model, n, rng)
        got = one.predict(xs)
        assert len(calls) == 1
        calls.clear()
        for a, b in zip(*(([o] if isinstance(o, np.ndarray) else o) for o in (got, per_layer.predict(xs)))):
            np.testing.assert_array_equal(a, b)


def test_small_forward_in_training_and_where_a_layer_goes_parallel(monkeypatch):
    """Training takes the one-call forward pass too, on one OpenBLAS thread
    (OpenBLAS's two-thread path rounds some products differently), with the
    bits of the per-layer forward pass (both steps on one thread: whether
    the backward pass's products round alike on one and two threads depends
    on OpenBLAS's kernel; with OPENBLAS_CORETYPE=Haswell they do not); from
    the first batch size at which a Dense output reaches the parallel
    kernels' size, the forward pass takes the per-layer path (mlp: one module
    is enough, the test is the same line in every module)."""
    mod = generated("mlp", "model")
    calls = _count_small_calls(mod, monkeypatch)
    monkeypatch.setattr(mod, "_rt_owned_threads", lambda: 0)  # the one-call path, not owned rows
    monkeypatch.setattr(mod, "_RT_PARTS_MIN_ROWS", 1 << 40)  # ... nor parts (test_parts.py)
    one, per_layer = mod.Model(seed=3), mod.Model(seed=3)
    per_layer._fuse_small = False
    xs, ys = random_data(mod.Model, 32, np.random.default_rng(1))
    mod.Model(seed=3).train_on_batch(xs, ys)
    assert calls == [1], calls  # OpenBLAS's threads as the pass started
    for _ in range(3):
        mod._blas_one_thread(one.train_on_batch, xs, ys)
        mod._blas_one_thread(per_layer.train_on_batch, xs, ys)
    assert len(calls) == 4
    calls.clear()
    for a, b in zip(one.get_weights(), per_layer.get_weights()):
        np.testing.assert_array_equal(a, b)
    width = int(re.search(r"xs\[0\]\.shape\[0\] \* (\d+) < _ACTIVATION_PARALLEL_MIN",
                          inspect.getsource(mod.Model._forward)).group(1))
    assert width == 64
    big = -(-mod._ACTIVATION_PARALLEL_MIN // width)  # the first batch size with a parallel-sized output
    m, rng = mod.Model(seed=0), np.random.default_rng(0)
    xs, _ = random_data(mod.Model, big, rng)
    m.predict(xs, batch_size=big)
    assert not calls
    xs, _ = random_data(mod.Model, big - 1, rng)
    m.predict(xs, batch_size=big)
    assert calls


def test_training_forward_of_small_batches_runs_on_one_blas_thread(monkeypatch):
    """A training step under _RT_TRAIN_ONE_THREAD_ROWS rows runs its one-call
    forward pass on one OpenBLAS thread (the update after it then writes
    weights no other core holds); bigger batches, predict and models with
    more than _RT_TRAIN_ONE_THREAD_WEIGHTS weight values keep every thread."""
    mod = generated("mlp", "model")
    one_thread = []
    wrapped = mod._blas_one_thread
    monkeypatch.setattr(mod, "_blas_one_thread", lambda fn, *a: one_thread.append(fn) or wrapped(fn, *a))
    calls = _count_small_calls(mod, monkeypatch)
    monkeypatch.setattr(mod, "_rt_owned_threads", lambda: 0)  # else its big kernel's rows are owned
    monkeypatch.setattr(mod, "_RT_PARTS_MIN_ROWS", 1 << 40)  # ... or from 64 rows its passes run in parts
    m, rng = mod.Model(seed=0), np.random.default_rng(0)
    rows = mod._RT_TRAIN_ONE_THREAD_ROWS
    for n, trains, expected in ((rows - 1, True, 1), (rows, True, 0), (rows - 1, False, 0)):
        xs, ys = random_data(mod.Model, n, rng)
        one_thread.clear()
        calls.clear()
        m.train_on_batch(xs, ys) if trains else m.predict(xs, batch_size=n)
        assert calls and len(one_thread) == expected, (n, trains, one_thread)
    assert m._params.size <= mod._RT_TRAIN_ONE_THREAD_WEIGHTS
    monkeypatch.setattr(mod, "_RT_TRAIN_ONE_THREAD_WEIGHTS", m._params.size - 1)
    xs, ys = random_data(mod.Model, rows - 1, rng)
    one_thread.clear()
    m.train_on_batch(xs, ys)
    assert not one_thread


@pytest.mark.parametrize("parts", [2, 3])
def test_owned_rows_training_steps(parts, monkeypatch):
    """With numba's threads, a training step under _RT_TRAIN_ONE_THREAD_ROWS
    rows of a model with a big Dense kernel (mlp: 784 x 64) splits that
    kernel's rows over the threads (_forward_owned, the owned backward and
    update): the weights stay within float32 rounding of the steps without
    it, whose update is the same; predict and bigger batches take the other
    paths, and the update spans cover every value once."""
    mod = generated("mlp", "model")
    assert mod.Model._owned_kernels == (0,)
    monkeypatch.setattr(mod, "_rt_owned_threads", lambda: parts)
    fused = mod._forward_owned
    owned_calls = []
    monkeypatch.setattr(mod, "_forward_owned", lambda *a: owned_calls.append(1) or fused(*a))
    m = mod.Model(seed=3)
    assert m._owned_parts is None  # counted at the first owned step: predict alone starts no threads
    assert m._owned_parts_for(32) == parts
    monkeypatch.setattr(mod, "_rt_owned_threads", lambda: 0)
    plain = mod.Model(seed=3)
    assert plain._owned_parts_for(32) == 0
    spans = m._owned_spans
    covered = np.zeros(m._params.size, np.int64)
    for lo, hi, p in spans:
        covered[lo:hi] += 1
        assert 0 <= p < parts
    assert covered.min() == covered.max() == 1
    assert sorted({int(p) for lo, hi, p in spans if hi <= 784 * 64}) == list(range(parts))
    rng = np.random.default_rng(2)
    for n in (32, 5, 63):
        xs, ys = random_data(mod.Model, n, rng)
        for _ in range(3):
            a, b = m.train_on_batch(xs, ys), plain.train_on_batch(xs, ys)
            np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-5)
        assert m._owned_step and not plain._owned_step
    assert len(owned_calls) == 9
    for a, b in zip(m.get_weights(), plain.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(m._opt_state[0], plain._opt_state[0], rtol=1e-4, atol=1e-9)
    owned_calls.clear()
    xs, ys = random_data(mod.Model, mod._RT_TRAIN_ONE_THREAD_ROWS, rng)
    m.train_on_batch(xs, ys)
    m.predict(xs[0][:8])
    assert not owned_calls and not m._owned_step


def test_parts_step_updates_on_the_threads(monkeypatch):
    """After a training step in parts, a model with owned-rows kernels (mlp)
    updates the halves of its flat buffer on the threads (_parts_spans)
    when OpenMP's threads spin between regions, and serially when they do
    not: the same weights either way (the update is element-wise)."""
    mod = generated("mlp", "model")
    monkeypatch.setattr(mod, "_rt_parts_threads", lambda: 2)  # parts on any machine
    xs, ys = random_data(mod.Model, 128, np.random.default_rng(5))
    runs = {}
    summed = mod._rt_sum_parts_owned
    for threads in (2, 0):
        monkeypatch.setattr(mod, "_rt_owned_threads", lambda: threads)
        m = mod.Model(seed=1)
        seen, owned, sums = [], m._opt_owned, []
        m._opt_owned = lambda *a: seen.append(a[-2].copy()) or owned(*a)
        monkeypatch.setattr(mod, "_rt_sum_parts_owned", lambda *a: sums.append(a[-2].copy()) or summed(*a))
        for _ in range(3):
            m.train_on_batch(xs, ys)
        assert m._pgrads is not None and not m._owned_step  # the steps ran in parts
        runs[threads] = (m.get_weights(), seen, sums)
    n = m._params.size
    assert len(runs[2][1]) == len(runs[2][2]) == 3 and not runs[0][1] and not runs[0][2]
    for spans in runs[2][1] + runs[2][2]:  # the gradients summed where they are applied
        np.testing.assert_array_equal(spans, [[0, n // 2, 0], [n // 2, n, 1]])
    for a, b in zip(runs[2][0], runs[0][0]):
        np.testing.assert_array_equal(a, b)


def test_parts_gradients_summed_on_the_threads_are_the_serial_sums():
    """_rt_sum_parts_owned: each thread sums its spans of the parts'
    gradients; the bits and the NaN/Inf count of _rt_sum_parts."""
    mod = generated("mlp", "model")
    rng = np.random.default_rng(6)
    G = rng.standard_normal((3, 1000)).astype(np.float32)
    G[1, 17], G[2, 600], G[0, 999] = np.nan, np.inf, -np.inf
    want = np.empty(1000, np.float32)
    assert mod._rt_sum_parts(want, G) == 3
    spans = np.array([[0, 100, 1], [100, 640, 0], [640, 1000, 1]], np.int64)
    got = np.full(1000, 7.0, np.float32)
    assert mod._rt_sum_parts_owned(got, G, spans, 2) == 3
    np.testing.assert_array_equal(got, want)
    assert np.array_equal(want[:17], G[0, :17] + G[1, :17] + G[2, :17])  # row order


def test_owned_rows_non_finite_gradient_stops_the_step(monkeypatch):
    """A NaN/Inf in an owned part of a kernel's gradient (counted where that
    part's thread computed it, not by the runtime's own check) stops the
    step before any weight or optimizer state changes."""
    mod = generated("mlp", "model")
    monkeypatch.setattr(mod, "_rt_owned_threads", lambda: 2)
    m = mod.Model(seed=0)
    xs, ys = random_data(mod.Model, 32, np.random.default_rng(0))
    m.train_on_batch(xs, ys)
    orig = mod.dense_backward_owned

    def poisoned(dx, dkernel, dbias, dz, y, xp, *rest):
        xp[-1] = np.inf  # the last row of the input's last column block: only the last part's rows of dkernel
        return orig(dx, dkernel, dbias, dz, y, xp, *rest)

    monkeypatch.setattr(mod, "dense_backward_owned", poisoned)
    weights, state, it = m.get_weights(), [s.copy() for s in m._opt_state], m.iterations
    with pytest.raises(FloatingPointError, match="Non-finite gradient"):
        m.train_on_batch(xs, ys)
    assert m._owned_bad[0].tolist()[0] == 0 and m._owned_bad[0].tolist()[1] > 0
    assert not np.isfinite(m._g[0][-1]).all() and np.isfinite(m._g[0][:-1]).all()
    for a, b in zip(weights, m.get_weights()):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(state, m._opt_state):
        np.testing.assert_array_equal(a, b)
    assert m.iterations == it


def test_benchmark_reports_every_kernel_and_restores_the_module():
    """Model.benchmark() times each kernel entry point, numba kernels and the
    Python ones that pick serial or parallel kernels (the fused LSTM, the
    dense layers, the optimizer), and puts the module back as it was."""
    mod = generated("twitter", "model")
    before = {k: getattr(mod, k) for k in ("lstm_embedded_forward", "lstm_embedded_backward",
                                           "dense_backward", "dense_forward", "rmsprop_update_rows")}
    res = mod.Model(seed=0).benchmark(batch_size=4, steps=2, warmup=1)
    assert res["batch_size"] == 4 and res["samples_per_s"] > 0
    assert set(before) <= set(res["kernels_ms"]), sorted(res["kernels_ms"])
    assert all(getattr(mod, k) is f for k, f in before.items())


@pytest.mark.parametrize("fuse", [True, False])
def test_benchmark_times_each_layer_of_a_one_call_forward(fuse):
    """A model whose small batches run the forward pass as one call is timed
    layer by layer; the model's own setting is back afterwards."""
    mod = generated("mlp", "model")
    m = mod.Model(seed=0)
    m._fuse_small = fuse
    res = m.benchmark(batch_size=4, steps=2, warmup=1)
    assert "dense_forward" in res["kernels_ms"], sorted(res["kernels_ms"])
    assert m._fuse_small is fuse


def test_benchmark_also_times_the_steps_as_fit_runs_them():
    """benchmark() reports the step as fit takes it too: in parts at batch 128
    (mlp, two threads or more), with owned rows or layer kernels below."""
    mod = generated("mlp", "model")
    m = mod.Model(seed=0)
    parts = m._parts_for(128)
    res = m.benchmark(batch_size=128, steps=2, warmup=1)
    assert res["fit_samples_per_s"] > 0
    assert res["fit_path"] == (f"{parts} parts" if parts else "layer kernels")
    assert m._fit_path(8) in ("owned rows", "layer kernels")
