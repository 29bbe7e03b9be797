"""Whole generated models: float64 finite differences of the full backward
pass, training that learns, and a module that runs with numpy + numba only."""
import inspect
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from genmods import GENERATED, all_generated, generated, random_data

TRAINABLE = [(e, m) for e, m in all_generated() if "_optimizer = None" not in (GENERATED / e / f"{m}.py").read_text()]


def _fd_entries(w, g, rng, k=6):
    """Entries to check: the largest gradients and a few random ones."""
    flat = np.abs(g).ravel()
    top = np.argsort(flat)[-k:]
    rand = rng.integers(0, flat.size, k)
    return sorted(set(top.tolist()) | set(rand.tolist()))


@pytest.mark.parametrize("example,model", TRAINABLE)
def test_whole_model_gradients_match_finite_differences(example, model):
    mod = generated(example, model)
    m = mod.Model(seed=1, dtype=np.float64)
    rng = np.random.default_rng(0)
    xs, ys = random_data(mod.Model, 3, rng, np.float64)
    _, grads = m.compute_gradients(xs, ys)
    weights = m.layer_weights()
    eps = 1e-6
    checked = 0
    for lname, ws in weights.items():
        for j, w in enumerate(ws):
            g = grads[lname][j]
            assert g.shape == w.shape
            for idx in _fd_entries(w, g, rng):
                orig = w.flat[idx]
                losses = []
                for delta in (eps, -eps):
                    w.flat[idx] = orig + delta
                    m.set_layer_weights({lname: ws})
                    losses.append(m.evaluate(xs, ys, batch_size=3)["loss"])
                w.flat[idx] = orig
                m.set_layer_weights({lname: ws})
                fd = (losses[0] - losses[1]) / (2 * eps)
                assert abs(fd - g.flat[idx]) <= 1e-6 + 1e-4 * abs(fd), (lname, j, idx, fd, g.flat[idx])
                checked += 1
    assert checked > 0


def _mlp_task(n, rng, dtype):
    x = rng.normal(size=(n, 784)).astype(dtype)
    x[:, 20:] *= 0.05  # small noise elsewhere, so what is learnt generalises to fresh samples
    teacher = np.random.default_rng(42).normal(size=(784, 10))
    teacher[20:] = 0  # the signal lives in 20 of the 784 features
    labels = np.argmax(x @ teacher, axis=1)
    return x, np.eye(10, dtype=dtype)[labels]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_mlp_learns_a_teacher(dtype):
    mod = generated("mlp", "model")
    m = mod.Model(seed=0, dtype=dtype)
    rng = np.random.default_rng(0)
    x, y = _mlp_task(2048, rng, dtype)
    xv, yv = _mlp_task(512, rng, dtype)
    before = m.evaluate(xv, yv)
    h = m.fit(x, y, epochs=5, batch_size=32, verbose=0)
    after = m.evaluate(xv, yv)
    assert h["loss"][-1] < h["loss"][0] * 0.5
    assert after["loss"] < before["loss"] * 0.5
    assert before["accuracy"] < 0.3 < 0.7 < after["accuracy"]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_tagger_learns_token_tags(dtype):
    """Sequence task with real signal: each token's tag is token % 8."""
    mod = generated("tagger", "tagger")
    m = mod.Model(seed=0, dtype=dtype)
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 50, (1024, 12))
    tags = ids % 8
    before = m.evaluate(ids, tags)
    m.fit(ids, tags, epochs=8, batch_size=32, verbose=0)
    after = m.evaluate(ids, tags)
    assert after["loss"] < before["loss"] * 0.5
    assert before["accuracy"] < 0.25 and after["accuracy"] > 0.8


ISOLATED = textwrap.dedent("""
    import importlib.abc, sys
    BLOCKED = {"gen", "jinja2", "libcst", "keras", "torch", "jax", "tensorflow", "pytest", "hypothesis"}
    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"blocked: {name}")
    sys.meta_path.insert(0, Block())
    sys.path.insert(0, sys.argv[1])
    import numpy as np, numba, scipy.linalg
    numba.njit(lambda a: np.dot(a, a))(np.ones((2, 2)))  # what numba's own linear algebra loads
    def third_party():
        return {n.split(".")[0] for n in sys.modules if not n.startswith("_")} - set(sys.stdlib_module_names)
    baseline = third_party()
    import model
    m = model.Model(seed=0)
    x = np.random.default_rng(0).normal(size=(8, 784)).astype(np.float32)
    y = np.eye(10, dtype=np.float32)[np.arange(8) % 10]
    print(m.train_on_batch(x, y)["loss"] > 0, m.predict(x).shape)
    print(" ".join(sorted(third_party() - baseline - {"model"})) or "-")
""")


def test_generated_module_needs_only_numpy_numba_scipy(tmp_path):
    shutil.copy(GENERATED / "mlp" / "model.py", tmp_path / "model.py")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    r = subprocess.run([sys.executable, "-c", ISOLATED, str(tmp_path)], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    ok, third = r.stdout.strip().splitlines()
    assert ok == "True (8, 10)"
    assert third == "-", f"the generated module imported more than numpy + numba + scipy: {third}"


SMALL = [(e, m) for e, m in all_generated() if "\ndef _forward_small(" in (GENERATED / e / f"{m}.py").read_text()]


def test_small_forward_only_where_every_layer_has_a_serial_kernel():
    with_lstm = {(e, m) for e, m in all_generated() if "lstm_forward(" in (GENERATED / e / f"{m}.py").read_text()}
    assert ("mlp", "model") in SMALL and len(SMALL) >= 10
    assert with_lstm and not with_lstm & set(SMALL)


def _count_small_calls(mod, monkeypatch):
    calls = []
    fused = mod._forward_small
    monkeypatch.setattr(mod, "_forward_small", lambda *a: calls.append(1) or fused(*a))
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
    """Training takes the one-call forward pass too, with the same bits (on
    one OpenBLAS thread, as that call runs in training: OpenBLAS's two-thread
    path rounds some products differently); from the first batch size at
    which a Dense output reaches the parallel kernels' size, the forward
    pass takes the per-layer path (mlp: one module is enough, the test is
    the same line in every module)."""
    mod = generated("mlp", "model")
    calls = _count_small_calls(mod, monkeypatch)
    monkeypatch.setattr(mod, "_rt_owned_threads", lambda: 0)  # the one-call path, not owned rows
    monkeypatch.setattr(mod, "_RT_PARTS_MIN_ROWS", 1 << 40)  # ... nor parts (test_parts.py)
    one, per_layer = mod.Model(seed=3), mod.Model(seed=3)
    per_layer._fuse_small = False
    xs, ys = random_data(mod.Model, 32, np.random.default_rng(1))
    for _ in range(3):
        one.train_on_batch(xs, ys)
        mod._blas_one_thread(per_layer.train_on_batch, xs, ys)
    assert len(calls) == 3
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

LEAN = textwrap.dedent("""
    import sys
    sys.path.insert(0, sys.argv[1])
    import numpy as np
    import model
    m = model.Model(seed=0)
    x = np.random.default_rng(0).normal(size=(8, 784)).astype(np.float32)
    y = np.eye(10, dtype=np.float32)[np.arange(8) % 10]
    m.train_on_batch(x, y)
    p = m.predict(x)
    print("scipy.linalg" in sys.modules, type(sys.modules["scipy.linalg.cython_blas"].__pyx_capi__).__name__)
    import scipy.linalg
    from scipy.linalg import cython_blas
    print(cython_blas is sys.modules["scipy.linalg.cython_blas"], scipy.linalg.solve(np.eye(2), np.ones(2)).tolist(),
          np.allclose(p, m.predict(x)))
    from numba.core.runtime import rtsys
    def set_up():  # numba's compiler context loads arraymath; rtsys._init: its runtime's LLVM code compiled
        return f'{"numba.np.arraymath" in sys.modules}/{rtsys._init}'
    before = set_up()
    if sys.argv[2] == "miss":  # a kernel signature not in the cache compiles, as before
        m64 = model.Model(seed=0, dtype=np.float64)
        m64.train_on_batch(x.astype(np.float64), y.astype(np.float64))
        print(before, set_up(), m64.predict(x.astype(np.float64)).dtype)
    else:
        print(before)
    np.save("p.npy", p) if sys.argv[2] == "first" else print(np.array_equal(np.load("p.npy"), p))
""")


def test_generated_module_loads_blas_without_scipy_linalg(tmp_path):
    """numba's BLAS comes from scipy.linalg.cython_blas alone (scipy.linalg
    would add 14 MB of resident memory); scipy.linalg imports normally later.
    A second process loads the kernels from the cache without setting up
    numba's compiler (its context and runtime functions: 30 MB), gets the
    same bits, and still compiles what the cache does not hold."""
    shutil.copy(GENERATED / "mlp" / "model.py", tmp_path / "model.py")
    out = []
    for run in ("first", "miss"):
        r = subprocess.run([sys.executable, "-c", LEAN, str(tmp_path), run], cwd=tmp_path,
                           capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr
        out.append(r.stdout.split("\n"))
    assert out[0][:3] == ["False dict", "True [1.0, 1.0] True", "True/True"]  # compiled
    assert out[1][:4] == ["False dict", "True [1.0, 1.0] True", "False/False True/True float64", "True"]


WARM = textwrap.dedent("""
    import sys
    sys.path.insert(0, sys.argv[1])
    import numpy as np
    from genmods import generated, random_data
    from numba.core.runtime import rtsys
    model = generated("twitter", "model")  # the name the tests' own imports use: one cache
    m = model.Model(seed=0)
    rng = np.random.default_rng(0)
    for n in (3, 300):  # serial and parallel kernels
        xs, ys = random_data(model.Model, n, rng)
        m.train_on_batch(xs, ys)
    got = m.predict(xs, batch_size=n)
    got = [got] if isinstance(got, np.ndarray) else got
    print("numba.np.arraymath" in sys.modules, rtsys._init)
    np.savez(sys.argv[2], *got, *m.get_weights())
""")


def test_warm_process_loads_lstm_embedding_parallel_kernels_without_compiler_setup(tmp_path):
    """twitter (Embedding, LSTM, the parallel kernels, the sparse update) in
    a second process: loaded without numba's compiler set-up, the same bits.
    A kernel whose object code needed that set-up would stop the process
    (LLVM cannot resolve a symbol), so this covers every kernel kind. The
    first process compiles what the tests before it have not."""
    runs = []
    for k in range(2):
        r = subprocess.run([sys.executable, "-c", WARM, str(Path(__file__).parent), str(tmp_path / f"run{k}.npz")],
                           cwd=tmp_path, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr
        runs.append(r.stdout.strip())
    assert runs[0] in ("True True", "False False") and runs[1] == "False False"
    first, second = np.load(tmp_path / "run0.npz"), np.load(tmp_path / "run1.npz")
    assert len(first.files) == 16  # 2 outputs, 14 weights
    for k in first.files:
        np.testing.assert_array_equal(first[k], second[k])


@pytest.mark.parametrize("optimizer", [None, ("sgd", {"learning_rate": 0.05})], ids=["rmsprop", "sgd"])
def test_sparse_embedding_update_equals_dense(optimizer, monkeypatch):
    """twitter (RMSprop) updates only the embedding rows a batch used, with
    the skipped steps' decay of v applied later; 30 steps where rows sit out
    for several steps must match the dense update. The row updates also
    zero the gradient rows they read (the next step's scatter adds into
    them): a row left dirty would show here too."""
    mod = generated("twitter", "model")
    monkeypatch.setitem(mod._OPTIMIZER_KERNELS, "sgd", mod.sgd_update)  # the module ships all optimizer kernels
    Sparse = mod.Model if optimizer is None else type("Sparse", (mod.Model,), {"_optimizer": optimizer})

    class DenseUpdate(Sparse):
        _sparse_tables = ()

    sparse, dense = Sparse(seed=0), DenseUpdate(seed=0)
    assert sparse._sparse and not dense._sparse
    rng = np.random.default_rng(0)
    for step in range(30):
        vocab = rng.integers(0, 40, 6)  # a few rows per step, from a small pool: long gaps
        ids = vocab[rng.integers(0, 6, (4, 100))]
        extra = rng.normal(size=(4, 5)).astype(np.float32)
        lab = rng.integers(0, 2, (4, 1)).astype(np.float32)
        a = sparse.train_on_batch([ids, extra], [lab, lab])
        b = dense.train_on_batch([ids, extra], [lab, lab])
        assert a == pytest.approx(b, rel=1e-5)
    for wa, wb in zip(sparse.get_weights(), dense.get_weights()):
        np.testing.assert_allclose(wa, wb, rtol=1e-5, atol=1e-7)
    sparse._flush_sparse()
    if optimizer is None:
        np.testing.assert_allclose(sparse._opt_state[0], dense._opt_state[0], rtol=1e-5, atol=1e-12)


@pytest.mark.parametrize("example,model", [("twitter", "model"), ("stacked_lstm", "stacked")])
def test_lstm_weight_gradients_on_panels_equal_blas(example, model, monkeypatch):
    """An LSTM's weight gradients (and an embedded LSTM's kernel gradient)
    through the threaded panel product (_lstm_grad_panels), taken here at
    any size, are BLAS's up to float32 rounding."""
    mod = generated(example, model)
    rng = np.random.default_rng(3)
    xs, ys = random_data(mod.Model, 24, rng, np.float32)
    grads = {}
    calls = []
    on_panels = mod._lstm_grad_panels
    for name, least in (("blas", 1 << 62), ("panels", 0)):
        monkeypatch.setattr(mod, "_LSTM_GRAD_MIN_MACS", least)
        monkeypatch.setattr(mod, "_LSTM_GRAD_MAX_OUTPUT", 1 << 62)
        monkeypatch.setattr(mod, "_lstm_grad_panels", lambda *a: calls.append(a[0].shape) or on_panels(*a))
        grads[name] = mod.Model(seed=1).compute_gradients(xs, ys)[1]
        assert bool(calls) == (name == "panels")
    for lname, gs in grads["blas"].items():
        for g, h in zip(gs, grads["panels"][lname]):
            np.testing.assert_allclose(h, g, rtol=1e-4, atol=1e-6 * max(1.0, float(np.abs(g).max())))


def test_predict_allocates_no_gradient_buffers_and_cache_is_bounded():
    """predict/evaluate allocate only the forward pass's buffers; training
    adds the backward ones; at most _RT_CACHE_LIMIT batch sizes stay
    allocated (least recently used dropped), and results do not depend on it."""
    mod = generated("twitter", "model")
    m = mod.Model(seed=0)
    rng = np.random.default_rng(0)
    xs, ys = random_data(mod.Model, 8, rng, np.float32)
    p8 = m.predict(xs, batch_size=8)
    b = m._cache[8]
    assert not b.grads and not any(k.startswith("d_") or k.endswith("_dzs") for k in b.bufs)
    m.train_on_batch(xs, ys)
    assert m._cache[8].grads and "lstm_dzs" in m._cache[8].bufs
    for bs in (1, 2, 3, 5):
        m.predict(xs, batch_size=bs)
    # the last batch of predict(8 samples, batch_size=5) has 3 samples
    assert len(m._cache) == mod._RT_CACHE_LIMIT and list(m._cache)[-2:] == [5, 3] and 8 not in m._cache
    m2 = mod.Model(seed=0)
    m2.train_on_batch(xs, ys)
    np.testing.assert_array_equal(m.predict(xs, batch_size=8)[0], m2.predict(xs, batch_size=8)[0])
    assert not np.array_equal(p8[0], m.predict(xs, batch_size=8)[0])  # the step changed the weights


def _spy_input_checks(mod, monkeypatch):
    """The sizes of the arrays the module's whole-array NaN/Inf check reads."""
    calls, real = [], mod._rt_has_nonfinite
    monkeypatch.setattr(mod, "_rt_has_nonfinite", lambda a: calls.append(a.size) or real(a))
    return calls


def test_predict_checks_a_big_input_through_its_first_layer(monkeypatch):
    """From _RT_DEFER_CHECK_MIN values, predict reads an input that only Dense
    layers read once, not twice: their kernels report NaN/Inf among the
    pre-activations, and only then is the input checked, with the error the
    check before _forward gave (relu maps NaN and -inf to 0, so the output
    alone would not tell). It checks up front for a small input, and when
    a kernel row has no nonzero weight (a BLAS may skip zero weights)."""
    mod = generated("mlp", "model")
    calls = _spy_input_checks(mod, monkeypatch)
    m, off = mod.Model(seed=0), mod.Model(seed=0, check_finite=False)
    n = 1200
    x = np.random.default_rng(3).random((n, 784), dtype=np.float32)
    assert 100 * 784 >= mod._RT_DEFER_CHECK_MIN and 100 * 64 < mod._ACTIVATION_PARALLEL_MIN <= 1024 * 64
    for bs in (n, 1024, 100, 32):  # one batch; batches (parallel path, small path _forward_small)
        np.testing.assert_array_equal(m.predict(x, batch_size=bs), off.predict(x, batch_size=bs))
    assert calls == []  # all counted by the first layer's kernel: read once
    for at, v in (((0, 0), np.nan), ((n - 1, 783), -np.inf), ((700, 400), np.inf), ((1100, 5), -np.inf)):
        xb = x.copy()
        xb[at] = v
        xb[at[0] + 1:, 0] = np.nan  # a later NaN is not the one reported
        msg = f"Input 'input_layer' (expected shape (None, 784)) contains {v} at index {at}; pass check_finite=False"
        for bs in (n, 1024, 100):
            with pytest.raises(ValueError, match=re.escape(msg)):
                m.predict(xb, batch_size=bs)
    calls.clear()
    huge = np.full((1024, 784), 3e38, np.float32)  # finite, but x @ kernel overflows: checked, no error
    np.testing.assert_array_equal(m.predict(huge, batch_size=1024), off.predict(huge, batch_size=1024))
    assert calls == [huge.size]
    calls.clear()
    m.predict(x[:50], batch_size=1024)
    assert calls == [50 * 784]  # small: checked up front
    w = m.get_weights()
    w[0][5] = np.finfo(np.float32).tiny / 2  # a row of subnormals counts as zero
    m.set_weights(w)
    calls.clear()
    m.predict(x, batch_size=1024)
    assert calls == [x.size]  # a row without weights: checked up front
    xb = x.copy()
    xb[9, 5] = np.nan
    with pytest.raises(ValueError, match=re.escape("contains nan at index (9, 5)")):
        m.predict(xb, batch_size=1024)


def test_predict_checks_each_input_through_a_shared_layer(monkeypatch):
    """Two inputs read by the calls of one shared encoder: each is checked
    through them, and the error names the input that holds the NaN."""
    mod = generated("reuse_siamese", "siamese")
    assert mod.Model._checked_inputs == {0: (0,), 1: (0,)}
    assert generated("twitter", "model").Model._checked_inputs == {}  # ids, and an input read by a concat
    calls = _spy_input_checks(mod, monkeypatch)
    m = mod.Model(seed=0)
    n = mod._RT_DEFER_CHECK_MIN // 4
    rng = np.random.default_rng(4)
    xs = [rng.standard_normal((n, 4)).astype(np.float32) for _ in range(2)]
    m.predict(xs, batch_size=n)
    assert calls == []
    for k, name in enumerate(("left", "right")):
        bad = [a.copy() for a in xs]
        bad[k][n - 2, 3] = np.nan
        with pytest.raises(ValueError, match=re.escape(f"Input '{name}' (expected shape (None, 4)) contains nan at index ({n - 2}, 3)")):
            m.predict(bad, batch_size=n)


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


def test_predict_projection_cache_follows_the_weights():
    """A fused Embedding -> LSTM predicts from rows of table @ kernel,
    computed as ids first need them; every API write of the weights drops
    them. A row's projection never depends on what else was computed, so
    predicting a batch again, or after other batches, gives the same bits."""
    mod = generated("twitter", "model")
    m = mod.Model(seed=0)
    rng = np.random.default_rng(3)
    xs, ys = random_data(mod.Model, 6, rng, np.float32)
    first = m.predict(xs, batch_size=6)
    (version, _p, done), = m._proj.values()
    assert 0 < done.sum() <= xs[0].size  # only the batch's rows
    other = random_data(mod.Model, 6, rng, np.float32)[0]
    m.predict(other, batch_size=6)
    for a, b in zip(first, m.predict(xs, batch_size=6)):
        np.testing.assert_array_equal(a, b)
    m.train_on_batch(xs, ys)
    after = m.predict(xs, batch_size=6)  # weights changed: not the stale projection
    assert m._proj[(0, 1)][0] != version
    fresh = mod.Model(seed=0)
    fresh.set_weights(m.get_weights())
    for a, b in zip(after, fresh.predict(xs, batch_size=6)):
        np.testing.assert_array_equal(a, b)
    version = m._proj[(0, 1)][0]
    m.set_layer_weights({"lstm": [w * 0.5 for w in m.layer_weights()["lstm"]]})
    fresh.set_weights(m.get_weights())
    for a, b in zip(m.predict(xs, batch_size=6), fresh.predict(xs, batch_size=6)):
        np.testing.assert_array_equal(a, b)
    assert m._proj[(0, 1)][0] != version
    # the same function as the training path's projection (within rounding)
    b = m._batch(6)
    outs = m._forward(b.bufs, m._prep_inputs(xs), True)
    for a, o in zip(m.predict(xs, batch_size=6), outs):
        np.testing.assert_allclose(a, o, rtol=1e-6, atol=1e-7)


def test_predict_projection_cache_survives_an_interrupt(monkeypatch):
    """Rows are marked computed before the kernel fills them: an interrupt
    in between must unmark them, or later predicts read garbage."""
    mod = generated("twitter", "model")
    xs, _ = random_data(mod.Model, 4, np.random.default_rng(5), np.float32)
    want = mod.Model(seed=0).predict(xs)
    m = mod.Model(seed=0)

    def interrupted(*args):
        raise KeyboardInterrupt

    with monkeypatch.context() as mp:
        mp.setattr(mod, "_lstm_project_rows_range", interrupted)
        with pytest.raises(KeyboardInterrupt):
            m.predict(xs)
    for a, b in zip(m.predict(xs), want):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("gathered", [True, False], ids=["training-step", "compute-gradients"])
def test_table_row_gradients_checked_where_they_are(gathered):
    """A training step leaves the table rows' gradients in the fused kernel's
    buffer (no scatter into the table's gradient); compute_gradients
    scatters them. Either way the non-finite check reads them, and the
    scatter-free step gives the table's gradient the scatter would."""
    mod = generated("twitter", "model")
    m = mod.Model(seed=0)
    xs, ys = random_data(mod.Model, 4, np.random.default_rng(5), np.float32)
    xs, ts, _kinds, n = m._prep(xs, ys)
    b = m._batch(n)
    m._gradients(b, m._forward(b.bufs, xs, True), ts, gathered=gathered)
    rows, gr, was_gathered = m._rowgrads[0]
    assert was_gathered == gathered and len(rows) == len(np.unique(xs[0]))
    dense = np.zeros_like(m._w[0])
    dense[rows] = gr[:len(rows)] if gathered else gr[rows]
    _, grads = mod.Model(seed=0).compute_gradients(*random_data(mod.Model, 4, np.random.default_rng(5), np.float32))
    np.testing.assert_allclose(dense, grads["embedding"][0], rtol=1e-6, atol=1e-9)
    assert not m._grads_nonfinite()
    (gr[1] if gathered else gr[rows[1]])[3] = np.nan
    assert m._grads_nonfinite()


@pytest.mark.parametrize("example", ["mlp", "twitter"])
def test_weights_state_and_buffers_start_on_64_byte_boundaries(example):
    """The flat weights, gradients and optimizer state and every float buffer
    of a training batch start on a cache line (_rt_empty): the panel
    products read weights by 64-byte vectors, ~15% slower across lines."""
    m = generated(example, "model").Model(seed=0)
    arrays = {"params": m._params, "grads": m._grads}
    arrays.update((f"opt_state[{i}]", s) for i, s in enumerate(m._opt_state) if s.size)
    bufs = m._batch(1024, grads=True).bufs
    arrays.update((k, a) for k, a in bufs.items() if isinstance(a, np.ndarray) and a.size and a.dtype.kind == "f")
    assert len(arrays) >= 8
    assert {k: a.ctypes.data % 64 for k, a in arrays.items() if a.ctypes.data % 64} == {}
