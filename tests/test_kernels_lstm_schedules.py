"""LSTM schedules: the packed panel products, the blocks schedule against the
steps schedule and finite differences, the thread ranges and their pool
after a fork, the rows schedule on threads, and a product on one BLAS
thread."""

import os
import time

import numpy as np
import pytest

from fd import (ACT_PAIRS, F32, F64, SIGMOID, TANH, K, assert_grad, lstm_grads, lstm_ref, lstm_run,
                numgrad, numgrad_at, rng, stacked)


# ------------------------------------------------- lstm: blocks schedule

@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize("M", [1, 2, 3, 4, 7, 8, 13, 16, 33])
@pytest.mark.parametrize("K_,N", [(1, 16), (16, 16), (37, 48), (128, 512)])
def test_lstm_panels_product(M, K_, N, dtype):
    """The packed product (8, 4, 2 and 1 rows at a time, 16 columns a panel)
    against float64 numpy; a may be one step of a (B, T, K) array and c a
    block of rows, as the blocks schedule passes them."""
    r = rng(60)
    a3 = r.standard_normal((M, 3, K_)).astype(dtype)
    w = r.standard_normal((K_, N)).astype(dtype)
    panels = np.full((N // 16, K_, 16), np.nan, dtype)
    K._lstm_pack_panels(panels, w)
    np.testing.assert_array_equal(panels.transpose(1, 0, 2).reshape(K_, N), w)
    panels_t = np.full((K_ // 16, N, 16), np.nan, dtype)
    if K_ % 16 == 0:  # the panels of w.T (the backward pass's)
        K._lstm_pack_panels_t(panels_t, w)
        np.testing.assert_array_equal(panels_t.transpose(1, 0, 2).reshape(N, K_), w.T)
    c = np.full((M + 2, N), np.nan, dtype)
    K._panels_product(c[1:M + 1], a3[:, 1], panels)
    want = a3[:, 1].astype(F64) @ w.astype(F64)
    tol = 1e-5 if dtype == F32 else 1e-12
    np.testing.assert_allclose(c[1:M + 1], want, rtol=tol, atol=tol * np.sqrt(K_))
    assert np.isnan(c[0]).all() and np.isnan(c[M + 1]).all()  # rows outside the block untouched


@pytest.mark.parametrize("K_,N", [(13, 48), (16, 80), (64, 2048)])
@pytest.mark.parametrize("Q", [1, 2, 3])
def test_lstm_pack_panels_in_ranges(monkeypatch, K_, N, Q):
    """Both packings with their panels split over Q threads (the split
    forced at any size) give every panel, whatever the share of each
    thread; rows of w by 8 with a remainder (K_ 13)."""
    import numba
    monkeypatch.setattr(K, "_LSTM_PACK_SPLIT_MIN", 0)
    monkeypatch.setattr(numba, "get_num_threads", lambda: Q)
    w = rng(62).standard_normal((K_, N)).astype(F32)
    panels = np.full((N // 16, K_, 16), np.nan, F32)
    K._lstm_pack_panels(panels, w)
    np.testing.assert_array_equal(panels.transpose(1, 0, 2).reshape(K_, N), w)
    if K_ % 16 == 0:
        panels_t = np.full((K_ // 16, N, 16), np.nan, F32)
        K._lstm_pack_panels_t(panels_t, w)
        np.testing.assert_array_equal(panels_t.transpose(1, 0, 2).reshape(N, K_), w.T)


def lstm_inputs(r, B, T, I, U, dtype, rk_scale=0.3):
    """x (B, T, I) and the weights W (I, 4U), Rk (U, 4U), b (4U,) of a test
    LSTM, drawn from r in that order."""
    G = 4 * U
    x = r.standard_normal((B, T, I)).astype(dtype)
    W = (0.3 * r.standard_normal((I, G))).astype(dtype)
    Rk = (rk_scale * r.standard_normal((U, G))).astype(dtype)
    b = (0.3 * r.standard_normal(G)).astype(dtype)
    return x, W, Rk, b


def blocks_forced(monkeypatch, Q):
    """The blocks schedule with Q blocks whatever the dtype and batch (0: never)."""
    monkeypatch.setattr(K, "_lstm_blocks", lambda B, T, U, dtype, per_step: Q)


@pytest.mark.parametrize("B,U,Q", [(8, 16, 1), (13, 16, 2), (37, 32, 2), (17, 48, 3)])
@pytest.mark.parametrize("act,ract", ACT_PAIRS)
@pytest.mark.parametrize("rs", [True, False])
@pytest.mark.parametrize("dtype", [F32, F64])
def test_lstm_blocks_schedule_equals_steps(B, U, Q, act, ract, rs, dtype, monkeypatch):
    """The blocks schedule (Q blocks of rows, each running all T steps with
    packed products) against the steps schedule on the same data: outputs,
    caches and the weight and input gradients."""
    r = rng(61)
    T, I = 5, 7
    x, W, Rk, b = lstm_inputs(r, B, T, I, U, dtype)
    R = r.standard_normal((B, T if rs else 1, U)).astype(dtype)
    out = {}
    for name, q in (("blocks", Q), ("steps", 0)):
        blocks_forced(monkeypatch, q)
        y, caches = lstm_run(x, W, Rk, b, act, ract, rs, True)
        grads = [np.zeros_like(a) for a in (x, W, Rk, b)]
        lstm_grads(x, W, Rk, b, R, caches, act, ract, rs, True, 1, *grads, wmode=1)
        out[name] = [y, *caches, *grads]
    tol = 1e-5 if dtype == F32 else 1e-12  # of each array's largest value: sums of B T terms
    for got, want in zip(out["blocks"], out["steps"]):
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol * np.abs(want).max())


@pytest.mark.parametrize("act,ract", ACT_PAIRS)
@pytest.mark.parametrize("rs", [True, False])
@pytest.mark.parametrize("per_step", [False, True], ids=["narrow", "wide"])
def test_lstm_blocks_backward_fd(act, ract, rs, per_step, monkeypatch):
    """Finite differences of the blocks schedule's backward pass (float64):
    two blocks of 4 and 5 rows."""
    blocks_forced(monkeypatch, 2)
    r = rng(62)
    B, T, I, U = 9, 3, 2, 16
    G = 4 * U
    x = r.standard_normal((B, T, I))
    W, Rk, b = 0.4 * r.standard_normal((I, G)), 0.4 * r.standard_normal((U, G)), 0.4 * r.standard_normal(G)
    R = r.standard_normal((B, T if rs else 1, U))

    def loss():
        return float(np.sum(R * lstm_run(x, W, Rk, b, act, ract, rs, per_step)[0]))

    _, caches = lstm_run(x, W, Rk, b, act, ract, rs, per_step)
    grads = [np.full_like(a, np.nan) for a in (x, W, Rk, b)]
    lstm_grads(x, W, Rk, b, R, caches, act, ract, rs, per_step, 1, *grads, wmode=1)
    for g, a in zip(grads, (x, W, Rk, b)):
        assert_grad(g, numgrad(loss, a))


@pytest.mark.parametrize("B,Q", [(9, 2), (9, 3), (2, 1)])
@pytest.mark.parametrize("wmode", [1, 2])
@pytest.mark.parametrize("dtype", [F32, F64])
def test_lstm_block_grads_over_chunks_of_steps(B, Q, wmode, dtype, monkeypatch):
    """The blocks sum their shares of the weight gradients step by step, in
    chunks of _LSTM_GRAD_CHUNK rows (steps x a block's rows): T 150 gives
    blocks of 2-5 rows 2-3 chunks each, the last one short. Against the steps schedule's product over all B T rows, written
    (wmode 1) or added (wmode 2) to gradients that hold values already."""
    assert K._LSTM_GRAD_CHUNK // 5 < 150 < 3 * (K._LSTM_GRAD_CHUNK // 3)
    r = rng(63)
    T, I, U = 150, 3, 16
    x, W, Rk, b = lstm_inputs(r, B, T, I, U, dtype)
    R = r.standard_normal((B, 1, U)).astype(dtype)
    start = [r.standard_normal(a.shape).astype(dtype) for a in (W, Rk, b)]
    out = {}
    for name, q in (("blocks", Q), ("steps", 0)):
        blocks_forced(monkeypatch, q)
        _, caches = lstm_run(x, W, Rk, b, TANH, SIGMOID, False, True)
        grads = [a.copy() for a in start]
        lstm_grads(x, W, Rk, b, R, caches, TANH, SIGMOID, False, True, 0, None, *grads, wmode=wmode)
        out[name] = grads
    tol = 1e-5 if dtype == F32 else 1e-12
    for got, want in zip(out["blocks"], out["steps"]):
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol * np.abs(want).max())


@pytest.mark.parametrize("Q", [1, 2])
@pytest.mark.parametrize("wmode", [1, 2])
@pytest.mark.parametrize("mode", [1, 0])
def test_lstm_blocks_stop_once_the_gradient_vanished(Q, wmode, mode, monkeypatch):
    """Forget gates near 0 and small recurrent weights: the gradient falls
    below the cells' floor within a few steps back from T. The blocks stop
    there (_lstm_vanished), never reading the earlier caches (NaN here), and
    write the earlier dzs as zeros: the same dzs, input and weight gradients
    as the steps schedule, which runs every step; the block's open chunk of
    weight-gradient sums still added. Without an input gradient (mode 0)
    nothing reads dzs afterwards: the steps not run stay unwritten."""
    r = rng(64)
    B, T, I, U = 9, 150, 3, 16
    G = 4 * U
    x, W, Rk, b = lstm_inputs(r, B, T, I, U, F32, rk_scale=0.01)
    b[U:2 * U] = -9.0  # forget gates ~1e-4
    R = r.standard_normal((B, 1, U)).astype(F32)
    start = [r.standard_normal(a.shape).astype(F32) for a in (W, Rk, b)]
    out = {}
    for name, q in (("blocks", Q), ("steps", 0)):
        blocks_forced(monkeypatch, q)
        _, caches = lstm_run(x, W, Rk, b, TANH, SIGMOID, False, True)
        if q:  # steps the blocks must not reach: NaN gates would make NaN dz
            caches[0][:, :T - 30] = np.nan
        dzs, dx = np.full((B, T, G), np.nan, F32), np.full_like(x, np.nan)
        dw = stacked(*[a.copy() for a in start])
        dzt = np.full((B, G), np.nan, F32)
        K.lstm_backward(dx, dw, dzs, np.full((B, U), np.nan, F32), np.full((B, U), np.nan, F32), dzt,
                        R, x, *caches, W, Rk, np.full((G, U), np.nan, F32), TANH, SIGMOID, False, True, mode, wmode)
        out[name] = (dzs, dx, dw)
    dzs = out["steps"][0]
    assert (dzs[:, :T - 20] == 0).all() and (dzs[:, T - 1] != 0).any()  # vanished well before step 0
    if mode == 0:
        got = out["blocks"][0]
        assert np.isnan(got[:, :T - 30]).all() and not np.isnan(got[:, T - 1]).any()
        written = ~np.isnan(got)
        np.testing.assert_allclose(got[written], dzs[written], rtol=1e-5, atol=1e-5 * np.abs(dzs).max())
        out = {k: v[2:] for k, v in out.items()}  # dx unwritten by both
    for got, want in zip(out["blocks"], out["steps"]):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


def test_lstm_blocks_taken(monkeypatch):
    """The blocks schedule: float32, units a multiple of 16, from 2 rows;
    one block for a small pass, else a block a thread of 8 rows or more for
    the wide layers of the steps schedule, 16 for the narrow ones."""
    monkeypatch.setattr(K.numba, "get_num_threads", lambda: 2)
    assert K._lstm_blocks(32, 25, 128, F32, True) == 2
    assert K._lstm_blocks(8, 25, 128, F32, True) == 1  # 8 rows: one block of 8
    assert K._lstm_blocks(32, 2, 128, F32, True) == 1  # 2^22.6 of work: one block
    assert K._lstm_blocks(2, 25, 512, F32, True) == 1
    assert K._lstm_blocks(1, 25, 128, F32, True) == 0  # one row: a vector product
    assert K._lstm_blocks(32, 25, 120, F32, True) == 0
    assert K._lstm_blocks(32, 25, 128, F64, True) == 0
    assert K._lstm_blocks(256, 25, 32, F32, False) == 2
    assert K._lstm_blocks(32, 100, 32, F32, False) == 2  # 2^25.1 of work
    assert K._lstm_blocks(64, 25, 32, F32, False) == 1  # 2^24.1 of work
    assert K._lstm_blocks(2, 25, 16, F32, False) == 1
    assert K._lstm_blocks(1, 400, 32, F32, False) == 0
    assert K._lstm_blocks(16, 1000, 32, F32, False) == 1  # 16 rows: one block of 16
    monkeypatch.setattr(K.numba, "get_num_threads", lambda: 1)
    assert K._lstm_blocks(32, 25, 128, F32, True) == 1
    assert K._lstm_blocks(256, 100, 32, F32, False) == 1


def test_in_ranges_covers_the_rows():
    """Q ranges cover rows 0..n-1 once each; a pool made for fewer threads is
    replaced by a bigger one when more ranges come."""
    K._RANGE_POOL.clear()
    seen = []
    K._in_ranges(lambda b0, b1: seen.append((b0, b1)), 2, 10)
    assert sorted(seen) == [(0, 5), (5, 10)] and K._RANGE_POOL[0][1] == 1
    seen.clear()
    K._in_ranges(lambda b0, b1: seen.append((b0, b1)), 3, 10)
    assert sorted(seen) == [(0, 3), (3, 6), (6, 10)] and K._RANGE_POOL[0][1] == 2
    seen.clear()
    K._in_ranges(lambda b0, b1: seen.append((b0, b1)), 1, 10)
    assert seen == [(0, 10)]


def test_range_pool_after_fork():
    """A forked child makes its own pool: the parent's threads are not in it."""
    if not hasattr(os, "fork"):
        pytest.skip("no fork")
    r = rng(63)
    B, T, I, U = 16, 3, 2, 16
    args = (r.standard_normal((B, T, I)).astype(F32), (0.3 * r.standard_normal((I, 4 * U))).astype(F32),
            (0.3 * r.standard_normal((U, 4 * U))).astype(F32), np.zeros(4 * U, F32), TANH, SIGMOID, True, True)
    K._RANGE_POOL.clear()
    K._in_ranges(lambda b0, b1: None, 2, B)  # the parent's pool, with its thread
    assert K._RANGE_POOL and K._RANGE_POOL[0][1] == 1
    y, _ = lstm_run(*args)
    pid = os.fork()
    if pid == 0:  # child: the same run through a new pool, or a hang the parent's timeout reports
        code = 1
        try:
            code = 0 if not K._RANGE_POOL and np.array_equal(lstm_run(*args)[0], y) else 3
            K._in_ranges(lambda b0, b1: None, 2, B)
        finally:
            os._exit(code)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            assert os.waitstatus_to_exitcode(status) == 0
            return
        time.sleep(0.05)
    os.kill(pid, 9)
    pytest.fail("the forked child hung on the parent's range pool")


@pytest.mark.parametrize("per_step", [False, True], ids=["rows", "steps"])
@pytest.mark.parametrize("rs", [True, False])
def test_lstm_parallel_path(rs, per_step):
    """B * T * 4U above _LSTM_ROWS_FORWARD_MIN and _LSTM_PARALLEL_MIN (the
    rows schedule splits the batch over threads, forward and backward):
    forward vs numpy, spot FD of the backward."""
    r = rng(41)
    B, T, I, U = 130, 8, 4, 128
    G = 4 * U
    assert B * T * G >= max(K._LSTM_PARALLEL_MIN, K._LSTM_ROWS_FORWARD_MIN)
    x = r.standard_normal((B, T, I))
    W = 0.3 * r.standard_normal((I, G))
    Rk = 0.1 * r.standard_normal((U, G))
    b = 0.3 * r.standard_normal(G)
    y, caches = lstm_run(x, W, Rk, b, TANH, SIGMOID, rs, per_step)
    np.testing.assert_allclose(y, lstm_ref(x, W, Rk, b, TANH, SIGMOID, rs), rtol=1e-10, atol=1e-12)
    R = r.standard_normal(y.shape)

    def loss():
        return float(np.sum(R * lstm_run(x, W, Rk, b, TANH, SIGMOID, rs, per_step)[0]))

    dW, dR, db, dx = np.zeros_like(W), np.zeros_like(Rk), np.zeros_like(b), np.empty_like(x)
    lstm_grads(x, W, Rk, b, R, caches, TANH, SIGMOID, rs, per_step, 1, dx, dW, dR, db)
    for a, d in ((W, dW), (Rk, dR), (b, db), (x, dx)):
        idx = r.choice(a.size, 12, replace=False)
        np.testing.assert_allclose(d.reshape(-1)[idx], numgrad_at(loss, a, idx), rtol=1e-5, atol=1e-7)


def test_blas_one_thread():
    """_blas_one_thread runs a product on one OpenBLAS thread and restores the
    count, also when the call raises. scipy's Linux wheels bundle OpenBLAS,
    so there it must be found."""
    import glob
    import importlib.util
    root = list(importlib.util.find_spec("scipy").submodule_search_locations)[0]
    f = K._scipy_openblas()
    if f is None:
        assert not glob.glob(os.path.join(root + ".libs", "*openblas*")), "scipy's OpenBLAS not found"
        return
    set_n, get_n = f
    before = get_n()
    try:
        set_n(2)
        assert K._blas_one_thread(get_n) == 1 and get_n() == 2

        def boom():
            raise KeyError("x")
        with pytest.raises(KeyError):
            K._blas_one_thread(boom)
        assert get_n() == 2
    finally:
        set_n(before)
