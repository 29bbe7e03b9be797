"""Optimizer kernels (SGD, RMSprop, Adam): the update formulas against numpy,
the owned-spans, chunked and row-sparse parallel paths against the serial
updates, and state below the normal numbers stored as zero."""

import numpy as np
import pytest

from fd import F32, F64, OPT_CONFIGS, K, rng, run_ours


# ------------------------------------------------------------- optimizers

def np_sgd(w, g, m, lr, momentum, nesterov):
    if momentum == 0:
        return w - lr * g, m
    m = momentum * m - lr * g
    return (w + momentum * m - lr * g if nesterov else w + m), m


def np_rmsprop(w, g, v, m, mg, lr, rho, momentum, eps, centered):
    v = rho * v + (1 - rho) * g * g
    den = v + eps
    if centered:
        mg = rho * mg + (1 - rho) * g
        den = den - mg * mg
    inc = lr * g / np.sqrt(den)
    if momentum > 0:
        m = momentum * m + inc
        return w - m, v, m, mg
    return w - inc, v, m, mg


def np_adam(w, g, m, v, vhat, lr, b1, b2, eps, amsgrad, t):
    m = m + (g - m) * (1 - b1)
    v = v + (g * g - v) * (1 - b2)
    alpha = lr * np.sqrt(1 - b2 ** t) / (1 - b1 ** t)
    if amsgrad:
        vhat = np.maximum(vhat, v)
        return w - alpha * m / (np.sqrt(vhat) + eps), m, v, vhat
    return w - alpha * m / (np.sqrt(v) + eps), m, v, vhat


def run_ref(kind, cfg, w0, grads):
    w = w0.astype(F64)
    P = w.size
    m, v, mg, vhat = np.zeros(P), np.zeros(P), np.zeros(P), np.zeros(P)
    for it, g in enumerate(grads):
        g = g.astype(F64)
        if kind == "sgd":
            w, m = np_sgd(w, g, m, cfg["learning_rate"], cfg["momentum"], cfg["nesterov"])
        elif kind == "rmsprop":
            w, v, m, mg = np_rmsprop(w, g, v, m, mg, cfg["learning_rate"], cfg["rho"],
                                     cfg["momentum"], cfg["epsilon"], cfg["centered"])
        else:
            w, m, v, vhat = np_adam(w, g, m, v, vhat, cfg["learning_rate"], cfg["beta_1"],
                                    cfg["beta_2"], cfg["epsilon"], cfg["amsgrad"], it + 1)
    return w


@pytest.mark.parametrize("kind,cfg", OPT_CONFIGS)
@pytest.mark.parametrize("dtype", [F32, F64])
def test_optimizer_formulas(kind, cfg, dtype):
    r = rng(15)
    P = 1000
    w0 = r.standard_normal(P).astype(dtype)
    # varying gradients (amsgrad's max matters when |g| shrinks)
    grads = [(r.standard_normal(P) * s).astype(dtype) for s in (1.0, 2.0, 0.1, 0.5, 0.05)]
    w = run_ours(kind, cfg, w0, grads)
    ref = run_ref(kind, cfg, w0, grads)
    tol = dict(rtol=2e-5, atol=1e-6) if dtype == F32 else dict(rtol=1e-11, atol=1e-13)
    np.testing.assert_allclose(w, ref, **tol)
    assert not np.allclose(w, w0)


@pytest.mark.parametrize("name", ["sgd", "rmsprop", "adam"])
def test_optimizer_owned_spans_equal_serial(name):
    """The owned-rows update runs each part's spans on its thread; every
    value must get the serial update's bits, each exactly once."""
    P = 10_007
    r = np.random.default_rng(5)
    w0, g = r.normal(size=P).astype(np.float32), r.normal(size=P).astype(np.float32)
    args = {"sgd": (0.01, 0.9, True), "rmsprop": (0.001, 0.9, 0.5, 1e-7, True),
            "adam": (0.001, 0.9, 0.999, 1e-7, True, 3)}[name]
    nstate = {"sgd": 1, "rmsprop": 3, "adam": 3}[name]
    spans = np.array([(0, 100, 0), (100, 5000, 1), (5000, 9000, 0), (9000, 9500, 1), (9500, P, 0)], np.int64)
    results = []
    for owned in (True, False):
        w, state = w0.copy(), [np.full(P, 0.1, np.float32) for _ in range(nstate)]
        if owned:
            getattr(K, f"_{name}_owned")(w, g, *state, *args, spans, 2)
        else:
            getattr(K, f"_{name}_serial")(w, g, *state, *args)
        results.append([w] + state)
    for a, b in zip(*results):
        assert np.array_equal(a, b)
    assert not np.array_equal(results[0][0], w0)


def _unflushed_update(name, w, g, state, args):
    """The same span with a floor of 0: the update without the flush. (numba
    returns the spans' float32 scalars as Python floats: cast them back.)"""
    dt = w.dtype.type
    cast = lambda a: [dt(v) if isinstance(v, float) else v for v in a]  # noqa: E731
    if name == "sgd":
        lr_, mu, _tiny = cast(K._sgd_args(w, args[0], args[1]))
        K._sgd_span(np.int64(0), w.shape[0], w, g, *state, lr_, mu, args[1], args[2], dt(0))
    elif name == "rmsprop":
        a = cast(K._rmsprop_args(w, *args))
        K._rmsprop_span(np.int64(0), w.shape[0], w, g, *state, *a[:-1], dt(0))
    else:
        a = cast(K._adam_args(w, args[0], args[1], args[2], args[3], args[5]))
        K._adam_span(np.int64(0), w.shape[0], w, g, *state, *a[:-1], dt(0), args[4])


@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize("name,args", [
    ("sgd", (0.01, 0.9, False)), ("sgd", (0.01, 0.8, True)),
    ("rmsprop", (0.001, 0.9, 0.0, 1e-7, False)), ("rmsprop", (0.01, 0.8, 0.5, 1e-7, True)),
    ("adam", (0.001, 0.9, 0.999, 1e-7, False, 0)), ("adam", (0.01, 0.8, 0.9, 1e-7, True, 0))])
def test_optimizer_state_below_normal_is_zero_and_weights_unchanged(name, args, dtype):
    """Weights whose gradient stops (dead ReLUs) decay their optimizer state
    into subnormal numbers, which cost a microcode assist per operation on
    Intel cores. The update stores those as zero, as XLA does; the weights
    must get the bits of the update that keeps them."""
    r = np.random.default_rng(11)
    P = 2000
    tiny = np.finfo(dtype).tiny
    w0 = r.normal(size=P).astype(dtype)
    used = [True] if name == "sgd" else [True, args[2] > 0, args[4]] if name == "rmsprop" else [True, True, args[4]]
    # small normal state, a few steps from the subnormal range ((0,) where unused)
    state0 = [(1.0 + np.abs(r.normal(size=P if u else 0))).astype(dtype) * dtype(tiny * 4.0) for u in used]
    w, wu = w0.copy(), w0.copy()
    state, stu = [st.copy() for st in state0], [st.copy() for st in state0]
    live = r.random(P) < 0.3  # weights with gradients at first and now and then; the rest, none
    for t in range(300):
        g = np.zeros(P, dtype)
        if t < 3 or (t > 150 and t % 7 == 0):
            g[live] = r.normal(size=int(live.sum())) * 1e-3
        step_args = args[:5] + (t + 1,) if name == "adam" else args
        getattr(K, f"{name}_update")(w, g, *state, *step_args)
        _unflushed_update(name, wu, g, stu, step_args)
    assert np.array_equal(w, wu)
    assert not np.array_equal(w, w0)
    subnormal = lambda a: (a != 0) & (np.abs(a) < tiny)  # noqa: E731
    for st, su in zip(state, stu):
        assert not subnormal(st).any()
        normal = ~subnormal(su)
        assert np.array_equal(st[normal], su[normal])
    # the reference reached the subnormal range, so the flush was exercised
    assert any(subnormal(su).sum() > P // 4 for su in stu if su.size)
    if name == "rmsprop":  # epsilon 0 (0 / sqrt(0)): nothing flushed, the update as it was
        v = np.full(P, tiny * 1.5, dtype)
        K.rmsprop_update(w, np.zeros(P, dtype), v, np.zeros(0, dtype), np.zeros(0, dtype),
                         0.001, 0.5, 0.0, 0.0, False)
        assert subnormal(v).all() and np.isfinite(w).all()


def test_rmsprop_rows_state_below_normal_is_zero():
    """The row-sparse RMSprop, and its flush of owed decays, store subnormal
    v as zero too; the weights are those of the dense update."""
    r = np.random.default_rng(12)
    V, D, tiny = 50, 8, np.finfo(np.float32).tiny
    w0 = r.normal(size=(V, D)).astype(np.float32)
    w, v, last = w0.copy(), np.full((V, D), tiny * 2.0**10, np.float32), np.zeros(V, np.int64)
    wd, vd = w0.copy().ravel(), v.copy().ravel()
    for step in range(120):
        rows = np.array([0, 7] if step % 40 == 0 else [7], np.int64)
        g = np.zeros((V, D), np.float32)
        g[7] = r.normal(size=D) * 1e-3 if step < 3 else 0.0
        K.rmsprop_update_rows(w, g.copy(), v, last, rows, False, step, 0.001, 0.9, 1e-7)
        K.rmsprop_update(wd, g.ravel(), vd, np.zeros(0, np.float32), np.zeros(0, np.float32),
                         0.001, 0.9, 0.0, 1e-7, False)
    K.rmsprop_flush_rows(v, last, 120, 0.9, 1e-7)
    assert np.array_equal(w.ravel(), wd)
    assert np.array_equal(v.ravel(), vd)
    assert (v == 0).sum() > V * D // 2 and not ((v != 0) & (v < tiny)).any()


@pytest.mark.parametrize("gathered", [False, True], ids=["table-grad", "gathered"])
@pytest.mark.parametrize("name", ["sgd", "rmsprop"])
def test_row_updates_in_parallel_equal_serial(name, gathered, monkeypatch):
    """From _OPTIMIZER_PARALLEL_MIN values the row-sparse updates run a
    range of rows a thread (three here, of unequal sizes); every weight,
    state value, step count and zeroed gradient must be the serial result."""
    V, D = 3000, 512
    n = -(-K._OPTIMIZER_PARALLEL_MIN // D) + 38
    assert n % 3 != 0 and n <= V
    rng = np.random.default_rng(4)
    rows = np.sort(rng.choice(V, n, replace=False)).astype(np.int64)
    w0 = rng.normal(size=(V, D)).astype(np.float32)
    g0 = rng.normal(size=(n, D) if gathered else (V, D)).astype(np.float32)
    v0 = np.abs(rng.normal(size=(V, D))).astype(np.float32)
    last0 = rng.integers(0, 5, V).astype(np.int64)
    monkeypatch.setattr(K.numba, "get_num_threads", lambda: 3)
    split = K._in_ranges
    calls = []
    monkeypatch.setattr(K, "_in_ranges", lambda kernel, Q, *a: calls.append(Q) or split(kernel, Q, *a))
    serial = getattr(K, f"_{name}_rows")
    results = []
    for fn in (getattr(K, f"{name}_update_rows"), lambda *a: serial(0, n, *a)):
        w, g, v, last = w0.copy(), g0.copy(), v0.copy(), last0.copy()
        if name == "sgd":
            fn(w, g, rows, gathered, 0.01)
        else:
            fn(w, g, v, last, rows, gathered, 7, 0.001, 0.9, 1e-7)
        results.append((w, g, v, last))
    assert calls == [3]
    for a, b in zip(*results):
        assert np.array_equal(a, b)
    assert not np.array_equal(results[0][0], w0)
    calls.clear()  # below _OPTIMIZER_PARALLEL_MIN values: one range, on this thread
    w, g, v, last = w0.copy(), g0.copy(), v0.copy(), last0.copy()
    args = (0.01,) if name == "sgd" else (7, 0.001, 0.9, 1e-7)
    state = () if name == "sgd" else (v, last)
    getattr(K, f"{name}_update_rows")(w, g, *state, rows[:10], gathered, *args)
    assert calls == [1]


@pytest.mark.parametrize("name", ["sgd", "rmsprop", "adam"])
def test_optimizer_chunked_path_equals_serial(name):
    """Above _OPTIMIZER_PARALLEL_MIN parameters the update runs in parallel
    chunks; every element must get exactly the serial result."""
    P = K._OPTIMIZER_PARALLEL_MIN + 12345
    rng = np.random.default_rng(3)
    w0 = rng.normal(size=P).astype(np.float32)
    g = rng.normal(size=P).astype(np.float32)
    fn = getattr(K, f"{name}_update")
    args = {"sgd": (0.01, 0.9, True), "rmsprop": (0.001, 0.9, 0.5, 1e-7, True),
            "adam": (0.001, 0.9, 0.999, 1e-7, True, 3)}[name]
    nstate = {"sgd": 1, "rmsprop": 3, "adam": 3}[name]
    results = []
    for n in (P, 1000):  # the whole buffer (chunked), then the same elements in small serial calls
        w = w0.copy()
        state = [np.full(P, 0.1, np.float32) for _ in range(nstate)]
        if n == P:
            fn(w, g, *state, *args)
        else:
            for lo in range(0, P, n):
                fn(w[lo:lo + n], g[lo:lo + n], *[s[lo:lo + n] for s in state], *args)
        results.append((w, state))
    assert np.array_equal(results[0][0], results[1][0])
    for a, b in zip(results[0][1], results[1][1]):
        assert np.array_equal(a, b)
