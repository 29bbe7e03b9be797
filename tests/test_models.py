"""Whole generated models: float64 finite differences of the full backward
pass, training that learns, a module that runs with numpy + numba only (and
loads numba's BLAS and its cached kernels lean, in fresh processes), the
batch-buffer cache, the deferred NaN/Inf check of big inputs and buffer
alignment. The execution paths (one-call forward, owned rows, parts,
benchmark): test_models_paths.py; Embedding and LSTM specifics:
test_models_embedding.py."""
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
