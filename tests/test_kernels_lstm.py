"""LSTM kernels: forward against a numpy LSTM, the transposes, the rows
schedule, the cells (Keras's default activations' shortcuts, the gradient
floor, the gate activations' accuracy), and float64 finite differences of
the backward pass. The blocks schedule and the parallel paths:
test_kernels_lstm_schedules.py."""

import numpy as np
import pytest

from fd import (ACT_PAIRS, F32, F64, RELU, SIGMOID, TANH, K, assert_grad, lstm_grads, lstm_ref,
                lstm_run, numgrad, rng)


# ------------------------------------------------------------------- lstm

@pytest.mark.parametrize("per_step,transposed", [(False, False), (True, False), (True, True)],
                         ids=["rows", "steps", "steps-transposed"])
@pytest.mark.parametrize("act,ract", ACT_PAIRS)
@pytest.mark.parametrize("rs", [True, False])
@pytest.mark.parametrize("use_bias", [True, False])
def test_lstm_forward(act, ract, rs, use_bias, per_step, transposed, monkeypatch):
    # per_step False: the rows schedule, which otherwise runs only for big batches
    monkeypatch.setattr(K, "_LSTM_ROWS_FORWARD_MIN", 0)
    # steps-transposed: each step's product as (rkt @ h.T).T, otherwise from 64 units
    monkeypatch.setattr(K, "_LSTM_FORWARD_TRANSPOSED_MIN_UNITS", 0 if transposed else 1 << 30)
    r = rng(8)
    B, T, I, U = 4, 6, 5, 3
    x = r.standard_normal((B, T, I)).astype(F32)
    W = (0.5 * r.standard_normal((I, 4 * U))).astype(F32)
    Rk = (0.5 * r.standard_normal((U, 4 * U))).astype(F32)
    b = (0.5 * r.standard_normal(4 * U)).astype(F32) if use_bias else np.zeros(0, F32)
    y, (zs, xh, cp, tc) = lstm_run(x, W, Rk, b, act, ract, rs, per_step)
    ref = lstm_ref(*(a.astype(F64) for a in (x, W, Rk, b)), act, ract, rs)
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=2e-6)
    # xh's rows are [x_t | h_{t-1} | 1] (no 1 without a bias)
    np.testing.assert_array_equal(xh[:, :, :I], x)
    assert xh.shape[2] == I + U + use_bias and (not use_bias or np.all(xh[:, :, -1] == 1))
    hp = xh[:, :, I:I + U]
    assert np.all(hp[:, 0] == 0) and np.all(cp[:, 0] == 0)
    # hp[:, t] is h_{t-1}: the last cached one is the h before the final step
    ref_seq = lstm_ref(*(a.astype(F64) for a in (x, W, Rk, b)), act, ract, True)
    np.testing.assert_allclose(hp[:, -1], ref_seq[:, -2], rtol=1e-5, atol=2e-6)


@pytest.mark.parametrize("M", [1, 7, 8, 9, 15, 16, 17, 48, 2048])
@pytest.mark.parametrize("N", [1, 3, 32])
@pytest.mark.parametrize("kernel", ["_lstm_transpose", "_lstm_transpose_weights"])
def test_lstm_transpose(kernel, M, N):
    """Both transposes copy blocks of source rows (16, 8 for weights), then
    the rest; the source may be one step of a (B, T, G) array (the backward
    steps)."""
    transpose = getattr(K, kernel)
    src = rng(46).standard_normal((M, N)).astype(F32)
    dst = np.full((N, M), np.nan, F32)
    transpose(dst, src)
    np.testing.assert_array_equal(dst, src.T)
    steps = rng(47).standard_normal((M, 3, N)).astype(F32)
    transpose(dst, steps[:, 1, :])
    np.testing.assert_array_equal(dst, steps[:, 1, :].T)


@pytest.mark.parametrize("U", [9, 40])
@pytest.mark.parametrize("parallel", [False, True], ids=["serial", "parallel"])
def test_lstm_rows_schedule_same_bits_for_a_row_anywhere(parallel, U, monkeypatch):
    """The rows schedule runs rows in pairs that share their weight reads; a
    row without a partner runs with itself. Either way a row's outputs and
    gate gradients are the bits it gets alone (a batch of one)."""
    monkeypatch.setattr(K, "_LSTM_ROWS_FORWARD_MIN", 0)
    monkeypatch.setattr(K, "_LSTM_PARALLEL_MIN", 0 if parallel else 1 << 40)
    r = rng(14)
    B, T, I = 5, 7, 4
    x = r.standard_normal((B, T, I)).astype(F32)
    W, Rk = (0.5 * r.standard_normal((I, 4 * U))).astype(F32), (0.5 * r.standard_normal((U, 4 * U))).astype(F32)
    b = (0.5 * r.standard_normal(4 * U)).astype(F32)
    dy = r.standard_normal((B, T, U)).astype(F32)

    def run(rows):
        y, (zs, xh, cp, tc) = lstm_run(x[rows], W, Rk, b, TANH, SIGMOID, True, False)
        n = len(rows)
        dzs = np.full((n, T, 4 * U), np.nan, F32)
        K._lstm_recurrence_backward(dzs, np.full((n, U), np.nan, F32), np.full((n, U), np.nan, F32),
                                    np.zeros((0, 0), F32), dy[rows], zs, cp, tc, Rk, np.zeros((0, 0), F32),
                                    TANH, SIGMOID, True, False, np.zeros((I + U + 1, 4 * U), F32), xh, 1)
        return y, dzs

    y, dzs = run(list(range(B)))
    for i in range(B):
        y1, dzs1 = run([i])
        np.testing.assert_array_equal(y[i], y1[0])
        np.testing.assert_array_equal(dzs[i], dzs1[0])


@pytest.mark.parametrize("U", [3, 37])
def test_lstm_cell_forward_default_activations_bit_equal(U):
    """The float32 cell for Keras's default (tanh, sigmoid) is a shortcut
    through fewer passes; it gives the bits of the general passes, done here
    one by one with their own kernels and numpy's float32 arithmetic."""
    r = rng(12)
    z = (3 * r.standard_normal(4 * U)).astype(F32)
    h0, c0 = r.standard_normal(U).astype(F32), (2 * r.standard_normal(U)).astype(F32)
    ref = z.copy()
    K._lstm_act(ref[:2 * U], SIGMOID)
    K._lstm_act(ref[2 * U:3 * U], TANH)
    K._lstm_act(ref[3 * U:], SIGMOID)
    c_ref = ref[U:2 * U] * c0 + ref[:U] * ref[2 * U:3 * U]
    a_ref = c_ref.copy()
    K._lstm_act(a_ref, TANH)
    # row 1 of step 2 of a batch of 3 (caches at step 1): the other rows stay NaN
    zs = np.full((3, 4, 4 * U), np.nan, F32)
    zs[1, 2] = z
    hc, cc = np.full((3, U), np.nan, F32), np.full((3, U), np.nan, F32)
    hc[1], cc[1] = h0, c0
    cp, tc = (np.full((3, 2, U), np.nan, F32) for _ in range(2))
    xh = np.full((3, 2, U + 7), np.nan, F32)  # h_{t-1} at columns 5:5 + U, NaN around it
    hp = xh[:, :, 5:5 + U]
    y = np.full((3, 4, U), np.nan, F32)
    K._lstm_cells_forward(1, 2, 2, 1, y, zs, xh, 5, cp, tc, hc, cc, TANH, SIGMOID, True)
    for got, want in ((zs[1, 2], ref), (cc[1], c_ref), (tc[1, 1], a_ref), (hc[1], ref[3 * U:] * a_ref),
                      (hp[1, 1], h0), (cp[1, 1], c0), (y[1, 2], ref[3 * U:] * a_ref)):
        np.testing.assert_array_equal(got, want)
    for arr in (np.delete(zs, 1, 0), np.delete(zs[1], 2, 0), np.delete(hc, 1, 0), np.delete(tc, 1, 0),
                tc[1, 0], hp[1, 0], cp[1, 0], xh[:, :, :5], xh[:, :, 5 + U:]):
        assert np.isnan(arr).all()


@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize("U", [3, 37])
def test_lstm_cell_backward_default_activations_bit_equal(U, dtype):
    """The one-pass backward cell for (tanh, sigmoid) gives the bits of the
    general passes: the derivative kernels, then the chain rule as written."""
    r = rng(13)
    z = np.concatenate([r.uniform(0, 1, 2 * U), r.uniform(-1, 1, U), r.uniform(0, 1, U)]).astype(dtype)
    a, cp = r.uniform(-1, 1, U).astype(dtype), r.standard_normal(U).astype(dtype)
    gh0, gc0 = r.standard_normal(U).astype(dtype), r.standard_normal(U).astype(dtype)
    d, da = np.empty(4 * U, dtype), np.empty(U, dtype)
    for j0, j1, code in ((0, 2 * U, SIGMOID), (2 * U, 3 * U, TANH), (3 * U, 4 * U, SIGMOID)):
        K._lstm_deriv_segment(d[j0:j1], z[j0:j1], code)
    K._lstm_deriv_segment(da, a, TANH)
    g = gc0 + gh0 * z[3 * U:] * da
    want = np.concatenate([d[:U] * (g * z[2 * U:3 * U]), d[U:2 * U] * (g * cp),
                           d[2 * U:3 * U] * (g * z[:U]), d[3 * U:] * (gh0 * a)])
    # row 1 of step 2 of a batch of 3: the other rows stay NaN
    dzs, zs = np.full((3, 4, 4 * U), np.nan, dtype), np.full((3, 4, 4 * U), np.nan, dtype)
    zs[1, 2] = z
    cps, tcs = np.full((3, 4, U), np.nan, dtype), np.full((3, 4, U), np.nan, dtype)
    cps[1, 2], tcs[1, 2] = cp, a
    dh, dc = np.full((3, U), np.nan, dtype), np.full((3, U), np.nan, dtype)
    dh[1], dc[1] = gh0, gc0
    K._lstm_cells_backward(1, 2, 2, dzs, dh, dc, np.empty((3, U), dtype), np.zeros((3, 4, U), dtype), zs, cps,
                           tcs, TANH, SIGMOID, True)
    np.testing.assert_array_equal(dzs[1, 2], want)
    np.testing.assert_array_equal(dc[1], g * z[U:2 * U])
    np.testing.assert_array_equal(dh[1], gh0)
    assert np.isnan(np.delete(dzs, 1, 0)).all() and np.isnan(np.delete(dzs[1], 2, 0)).all()
    assert np.isnan(np.delete(dc, 1, 0)).all()


@pytest.mark.parametrize("per_step,transposed", [(False, False), (True, False), (True, True)],
                         ids=["rows", "steps", "steps-transposed"])
@pytest.mark.parametrize("rs", [True, False])
def test_lstm_forward_without_caches(rs, per_step, transposed, monkeypatch):
    """Without a backward pass, xh, cp and tc may be (B, 1, .) scratch: the
    output is bit-for-bit that of the run with whole caches."""
    monkeypatch.setattr(K, "_LSTM_ROWS_FORWARD_MIN", 0)  # per_step False: rows forward
    monkeypatch.setattr(K, "_LSTM_FORWARD_TRANSPOSED_MIN_UNITS", 0 if transposed else 1 << 30)
    r = rng(11)
    B, T, I, U = 4, 6, 5, 3
    x = r.standard_normal((B, T, I)).astype(F32)
    W, Rk = (0.5 * r.standard_normal((I, 4 * U))).astype(F32), (0.5 * r.standard_normal((U, 4 * U))).astype(F32)
    b = (0.5 * r.standard_normal(4 * U)).astype(F32)
    y_full, _ = lstm_run(x, W, Rk, b, TANH, SIGMOID, rs, per_step)
    nan = lambda *shape: np.full(shape, np.nan, F32)
    y = nan(B, T if rs else 1, U)
    rec = nan(B, 4 * U)
    rkt = nan(4 * U, U)
    K.lstm_forward(y, nan(B, T, 4 * U), nan(B, 1, I + U + 1), nan(B, 1, U), nan(B, 1, U), nan(B, U), nan(B, U),
                   rec, rkt, x, W, Rk, b, TANH, SIGMOID, rs, per_step)
    np.testing.assert_array_equal(y, y_full)


@pytest.mark.parametrize("per_step,transposed", [(False, False), (True, False), (True, True)],
                         ids=["rows", "steps", "steps-transposed"])
@pytest.mark.parametrize("act,ract", ACT_PAIRS)
@pytest.mark.parametrize("rs", [True, False])
@pytest.mark.parametrize("mode", [0, 1, 2])
@pytest.mark.parametrize("wmode", [1, 2])
def test_lstm_backward_fd(act, ract, rs, mode, per_step, transposed, wmode, monkeypatch):
    # steps-transposed: dh_{t-1}.T = rkernel @ dz_t.T and the forward's
    # products as (rkt @ h.T).T, otherwise only for wide layers
    monkeypatch.setattr(K, "_LSTM_STEPS_TRANSPOSED_MIN_UNITS", 0 if transposed else 1 << 30)
    monkeypatch.setattr(K, "_LSTM_FORWARD_TRANSPOSED_MIN_UNITS", 0 if transposed else 1 << 30)
    r = rng(9)
    B, T, I, U = 3, 4, 5, 3
    G = 4 * U
    x = r.standard_normal((B, T, I))
    W = 0.6 * r.standard_normal((I, G))
    Rk = 0.6 * r.standard_normal((U, G))
    b = 0.6 * r.standard_normal(G)
    R = r.standard_normal((B, T if rs else 1, U))

    def loss():
        y, _ = lstm_run(x, W, Rk, b, act, ract, rs, per_step)
        return float(np.sum(R * y))

    _, caches = lstm_run(x, W, Rk, b, act, ract, rs, per_step)
    # wmode 1 overwrites the weight gradients, whatever they held (NaN here)
    dW0, dR0, db0 = (r.standard_normal(a.shape) if wmode == 2 else np.full(a.shape, np.nan) for a in (W, Rk, b))
    dW, dR, db = dW0.copy(), dR0.copy(), db0.copy()
    dx0 = r.standard_normal(x.shape)
    dx = dx0.copy() if mode else None
    lstm_grads(x, W, Rk, b, R, caches, act, ract, rs, per_step, mode, dx, dW, dR, db, wmode)
    base = (lambda a, a0: a - a0) if wmode == 2 else (lambda a, a0: a)
    assert_grad(base(dW, dW0), numgrad(loss, W))
    assert_grad(base(dR, dR0), numgrad(loss, Rk))
    assert_grad(base(db, db0), numgrad(loss, b))
    gx = numgrad(loss, x)
    if mode == 1:
        assert_grad(dx, gx)
    elif mode == 2:
        assert_grad(dx - dx0, gx)


@pytest.mark.parametrize("per_step", [False, True], ids=["rows", "steps"])
def test_lstm_backward_fd_no_bias(per_step):
    r = rng(10)
    B, T, I, U = 2, 3, 4, 2
    G = 4 * U
    x = r.standard_normal((B, T, I))
    W = 0.6 * r.standard_normal((I, G))
    Rk = 0.6 * r.standard_normal((U, G))
    b = np.zeros(0)
    R = r.standard_normal((B, T, U))

    def loss():
        y, _ = lstm_run(x, W, Rk, b, TANH, SIGMOID, True, per_step)
        return float(np.sum(R * y))

    _, caches = lstm_run(x, W, Rk, b, TANH, SIGMOID, True, per_step)
    dW, dR, db = np.zeros_like(W), np.zeros_like(Rk), np.zeros(0)
    dx = np.full_like(x, np.nan)
    lstm_grads(x, W, Rk, b, R, caches, TANH, SIGMOID, True, per_step, 1, dx, dW, dR, db)
    assert_grad(dW, numgrad(loss, W))
    assert_grad(dR, numgrad(loss, Rk))
    assert_grad(dx, numgrad(loss, x))


@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize("acts", [(TANH, SIGMOID), (RELU, SIGMOID)])
def test_lstm_backward_cells_flush_gradients_below_their_floor(acts, dtype):
    """Gradients through a long sequence shrink toward the subnormal
    numbers, and an operation on one, or one whose result is one, costs a
    microcode assist on Intel cores: the backward cells store gradients
    below the square root of the smallest normal number as zero (dh as they
    read it, dz and dc as they write them), so their products with weights
    stay normal; values at or above it are untouched."""
    r = rng(63)
    B, T, U = 3, 3, 16
    tiny = np.finfo(dtype).tiny
    floor = dtype(2.0 ** (-63 if dtype == F32 else -511))
    assert floor * floor == tiny and K._lstm_grad_floor(np.zeros(1, dtype)) == floor
    zs = r.uniform(0.05, 0.95, (B, T, 4 * U)).astype(dtype)
    cp, tc = r.uniform(-1, 1, (B, T, U)).astype(dtype), r.uniform(-0.9, 0.9, (B, T, U)).astype(dtype)
    dh = r.standard_normal((B, U)).astype(dtype)
    dc = r.standard_normal((B, U)).astype(dtype)
    dh[0], dc[0] = tiny * 0.5, tiny * 0.25  # row 0: subnormal gradients carried in
    dh[1], dc[1] = floor * 0.5, -floor * 0.25  # row 1: normal, but below the floor
    dh[2, :4], dc[2, :4] = floor * 2**30, -floor * 2**31  # row 2: small, above the floor
    dh0 = dh.copy()
    dzs, da = np.full((B, T, 4 * U), np.nan, dtype), np.empty((B, U), dtype)
    K._lstm_cells_backward(0, B, 1, dzs, dh, dc, da, np.zeros((B, 1, U), dtype), zs, cp, tc, acts[0], acts[1], False)
    below = lambda a: (a != 0) & (np.abs(a) < floor)  # noqa: E731
    assert not below(dzs[:, 1]).any() and not below(dc).any() and not below(dh).any()
    assert (dzs[:2, 1] == 0).all() and (dc[:2] == 0).all() and (dh[:2] == 0).all()  # nothing above came in
    assert (dh[2] == dh0[2]).all()
    assert (dzs[2, 1] != 0).all() and np.isfinite(dzs[2, 1]).all()  # the rest kept
    assert np.isnan(dzs[:, [0, 2]]).all()  # other steps untouched


@pytest.mark.parametrize("dtype", [F32, F64])
def test_lstm_gate_activations_accuracy(dtype):
    """The gate activations: float32 takes the rational tanh (and sigmoid
    through it), within 4e-7 absolute of the exact values over the whole
    range; float64 keeps libm accuracy."""
    v = np.concatenate([np.linspace(-30, 30, 600001), [-1e-30, 0.0, 1e-30, 1e-6, -1e-6]]).astype(dtype)
    v64 = v.astype(F64)
    for code, ref in ((TANH, np.tanh(v64)), (SIGMOID, 1 / (1 + np.exp(-v64)))):
        a = v.copy()
        K._lstm_act(a, code)
        if dtype == F32:
            np.testing.assert_allclose(a, ref, rtol=0, atol=4e-7)
            assert np.all(np.abs(a) <= 1)
        else:
            np.testing.assert_allclose(a, ref, rtol=1e-15, atol=1e-300)
