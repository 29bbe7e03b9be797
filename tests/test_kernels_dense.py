"""Dense kernels and the panel products (panels.py) that the Dense layers and
the LSTM weight gradient run on: forward checks against numpy, float64
finite differences of the backward pass, and the parallel, owned-rows and
one-thread paths against the serial kernels."""

import numpy as np
import pytest

from fd import (F32, F64, LINEAR, RELU, SIGMOID, SOFTMAX, TANH, K, assert_grad, np_act, numgrad,
                rng)


# ------------------------------------------------------------------ dense

@pytest.mark.parametrize("act", [LINEAR, RELU, SIGMOID, TANH, SOFTMAX])
@pytest.mark.parametrize("use_bias", [True, False])
@pytest.mark.parametrize("dtype", [F32, F64])
def test_dense_forward(use_bias, dtype, act):
    r = rng(1)
    x = r.standard_normal((7, 5)).astype(dtype)
    w = r.standard_normal((5, 4)).astype(dtype)
    b = r.standard_normal(4).astype(dtype) if use_bias else np.zeros(0, dtype)
    z = np.full((7, 4), np.nan, dtype)
    K.dense_forward(z, x, w, b, act)
    ref = np_act(x.astype(F64) @ w.astype(F64) + (b.astype(F64) if use_bias else 0), act)
    np.testing.assert_allclose(z, ref, rtol=1e-5 if dtype == F32 else 1e-12, atol=1e-6)


@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize("o", [16, 64, 80, 10])
def test_dense_forward_one_row(o, dtype):
    """One row (predict at batch 1) of a kernel of whole panels runs on the
    panel kernel (_panels_row: four panels at a time, then one): the
    product to rounding, the same bits as the panel product of more rows;
    a kernel of part of a panel, or a row read at a stride, takes np.dot."""
    r = rng(46)
    x = r.standard_normal((9, 37)).astype(dtype)
    w = r.standard_normal((37, o)).astype(dtype)
    b = r.standard_normal(o).astype(dtype)
    tol = dict(rtol=1e-5 if dtype == F32 else 1e-12, atol=1e-6)
    z = np.full((1, o), np.nan, dtype)
    assert K._dense_one_row_panels(z, x[:1], w) == (o % 16 == 0)
    K.dense_forward(z, x[:1], w, b, LINEAR)
    np.testing.assert_allclose(z, x[:1].astype(F64) @ w.astype(F64) + b, **tol)
    if o % 16 == 0:
        rows = np.empty((9, o), dtype)
        K._panels_product(rows, x, w)
        np.testing.assert_array_equal(z[0], rows[0] + b)
    strided = r.standard_normal((1, 74)).astype(dtype)[:, ::2]
    assert not K._dense_one_row_panels(z, strided, w)
    K.dense_forward(z, strided, w, b, LINEAR)
    np.testing.assert_allclose(z, strided.astype(F64) @ w.astype(F64) + b, **tol)


@pytest.mark.parametrize("act", [LINEAR, RELU, SIGMOID, TANH, SOFTMAX])
@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize("n", [7, 301])
def test_dense_forward_reports_non_finite_pre_activations(n, dtype, act):
    """dense_forward returns 0 when every value of x @ kernel + bias is finite
    and nonzero otherwise, whatever the activation makes of it (relu maps
    NaN and -inf to 0): predict checks big inputs through it. n 301 with
    256 units runs the parallel kernel for sigmoid, tanh and softmax."""
    r = rng(45)
    o = 256 if n > 8 else 4
    x, w, b = r.standard_normal((n, 5)).astype(dtype), r.standard_normal((5, o)).astype(dtype), r.standard_normal(o).astype(dtype)
    z = np.empty((n, o), dtype)
    assert K.dense_forward(z, x, w, b, act) == 0
    for at, v in (((0, 0), np.nan), ((n - 1, 4), -np.inf), ((n // 2, 2), np.inf)):
        xb = x.copy()
        xb[at] = v
        assert K.dense_forward(z, xb, w, b, act) != 0, (at, v)
        assert K.dense_forward(z, xb, w, np.zeros(0, dtype), act) != 0, (at, v)
    bb = b.copy()
    bb[o - 1] = np.inf
    assert K.dense_forward(z, x, w, bb, act) != 0
    big = np.full_like(x, np.finfo(dtype).max)  # finite input, overflowing product
    assert K.dense_forward(z, big, np.abs(w), b, act) != 0


@pytest.mark.parametrize("act", [LINEAR, RELU, SIGMOID, TANH, SOFTMAX])
@pytest.mark.parametrize("use_bias", [True, False])
@pytest.mark.parametrize("mode", [0, 1, 2])
@pytest.mark.parametrize("wmode", [1, 2])
def test_dense_backward_fd(use_bias, mode, wmode, act):
    """Every mode of the input gradient and of the weight gradients (wmode 1
    overwrites whatever the buffers hold, NaN included; 2 adds to them)."""
    r = rng(2)
    n, i, o = 6, 5, 4
    x = r.standard_normal((n, i))
    w = r.standard_normal((i, o))
    b = r.standard_normal(o) if use_bias else np.zeros(0)
    R = r.standard_normal((n, o))

    def loss():
        z = np.empty((n, o))
        K.dense_forward(z, x, w, b, act)
        return float(np.sum(R * z))

    y = np.empty((n, o))
    K.dense_forward(y, x, w, b, act)
    dw0 = r.standard_normal((i, o)) if wmode == 2 else np.full((i, o), np.nan)
    db0 = (r.standard_normal(o) if wmode == 2 else np.full(o, np.nan)) if use_bias else np.zeros(0)
    dx0 = r.standard_normal((n, i))
    dw, db = dw0.copy(), db0.copy()
    dx = dx0.copy() if mode else np.zeros((0, 0))
    K.dense_backward(dx, dw, db, R.copy(), y, x, w, act, mode, wmode)

    base = (lambda a, a0: a - a0) if wmode == 2 else (lambda a, a0: a)
    assert_grad(base(dw, dw0), numgrad(loss, w))
    if use_bias:
        assert_grad(base(db, db0), numgrad(loss, b))
    gx = numgrad(loss, x)
    if mode == 1:
        assert_grad(dx, gx)
    elif mode == 2:
        assert_grad(dx - dx0, gx)
    else:
        assert dx.shape == (0, 0)


@pytest.mark.parametrize("act", [LINEAR, RELU, SIGMOID, TANH, SOFTMAX])
def test_dense_parallel_path(act, monkeypatch):
    """The parallel kernels (blocks of rows, the last one partial) give the
    same numbers as the serial ones; the entry points take them only for
    the exp-based activations of big outputs."""
    r = rng(44)
    n, i, o = 301, 20, 256
    assert n * o >= K._ACTIVATION_PARALLEL_MIN
    x, w, b = r.standard_normal((n, i)), 0.3 * r.standard_normal((i, o)), r.standard_normal(o)
    y, y_ref = np.empty((n, o)), np.empty((n, o))
    par = K._dense_forward_parallel
    par(y, x, w, b, act)
    K._dense_forward_serial(y_ref, x, w, b, act)
    np.testing.assert_allclose(y, y_ref, rtol=1e-13, atol=1e-15)
    y2 = np.empty((n, o))
    calls = []
    monkeypatch.setattr(K, "_dense_forward_parallel", lambda *a: calls.append(a) or par(*a))
    K.dense_forward(y2, x, w, b, act)
    assert len(calls) == (act in (SIGMOID, TANH, SOFTMAX))
    np.testing.assert_allclose(y2, y_ref, rtol=1e-13, atol=1e-15)
    K.dense_forward(y2[:8], x[:8], w, b, act)  # small: serial
    assert len(calls) == (act in (SIGMOID, TANH, SOFTMAX))
    D = r.standard_normal((n, o))
    got = [np.empty((n, i)), np.empty((i, o)), np.empty(o)]
    want = [np.empty((n, i)), np.empty((i, o)), np.empty(o)]
    K._dense_backward_parallel(*got, D.copy(), y, x, w, act, 1, 1)
    K._dense_backward_serial(*want, D.copy(), y, x, w, act, 1, 1)
    for a, e in zip(got, want):
        np.testing.assert_allclose(a, e, rtol=1e-12, atol=1e-13)



@pytest.mark.parametrize("parts", [1, 2, 3])
@pytest.mark.parametrize("act", [RELU, SOFTMAX, TANH])
@pytest.mark.parametrize("mode,wmode,use_bias", [(0, 1, True), (1, 1, True), (2, 2, False), (1, 2, True)])
def test_dense_owned_kernels_equal_serial(parts, act, mode, wmode, use_bias):
    """The owned-rows kernels (the kernel's rows split into parts, in a
    training step at a small batch) give the serial kernels' numbers: the
    forward pass up to the order of the parts' sums, the gradients exactly
    as they are formed (each row of dkernel is the same dot product), the
    input gradient column block by column block; each part counts the
    NaN/Inf in its rows of dkernel, and nothing else."""
    r = rng(46)
    n, i, o = 9, 37, 6  # 37 rows: parts of 12-13 and 18-19 rows
    x, w = r.standard_normal((n, i)), 0.3 * r.standard_normal((i, o))
    b = r.standard_normal(o) if use_bias else np.zeros(0)
    y, y_ref = np.full((n, o), np.nan), np.empty((n, o))
    zp, xp = np.full((parts, n, o), np.nan), np.full(n * i, np.nan)
    assert K._dense_forward_owned(y, zp, xp, x, w, b, act) == 0
    K._dense_forward_serial(y_ref, x, w, b, act)
    np.testing.assert_allclose(y, y_ref, rtol=1e-13, atol=1e-15)
    for p in range(parts):  # the column blocks the backward pass reads
        lo, hi = K._dense_part(i, parts, p)
        np.testing.assert_array_equal(xp[n * lo:n * hi].reshape(n, hi - lo), x[:, lo:hi])
    D = r.standard_normal((n, o))
    start = [r.standard_normal((n, i)) if mode == 2 else np.full((n, i), np.nan),
             r.standard_normal((i, o)) if wmode == 2 else np.full((i, o), np.nan),
             (r.standard_normal(o) if wmode == 2 else np.full(o, np.nan)) if use_bias else np.zeros(0)]
    if mode == 0:
        start[0] = np.zeros((0, 0))
    got, want = [a.copy() for a in start], [a.copy() for a in start]
    bad = np.full(parts, -1, np.int64)
    K._dense_backward_owned(*got, D.copy(), y, xp, w, act, mode, wmode, bad)
    K._dense_backward_serial(*want, D.copy(), y, x, w, act, mode, wmode)
    for a, b_ in zip(got, want):
        np.testing.assert_allclose(a, b_, rtol=1e-13, atol=1e-14)
    assert bad.tolist() == [0] * parts
    xb = x.copy()
    xb[0, i - 1] = np.inf  # the last part's rows of dkernel
    xp2 = np.empty_like(xp)
    K._dense_forward_owned(np.empty((n, o)), np.empty_like(zp), xp2, xb, w, b, act)
    K._dense_backward_owned(np.empty((n, i)), np.empty((i, o)), np.empty(o), D.copy(), y, xp2, w, LINEAR, 1, 1, bad)
    assert bad.tolist() == [0] * (parts - 1) + [o]


@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize("M", [1, 5, 8, 13, 35])
@pytest.mark.parametrize("K_,N", [(1, 16), (7, 32), (37, 48), (784, 64)])
def test_panels_products_in_place_and_transposed(M, K_, N, dtype):
    """panels.py: c = a @ w reading w (K, N) in place gives the bits of its
    packed panels; c = a.T @ w (a Dense kernel's gradient, the sum over a's
    rows) against float64 numpy, from w in place and packed, with rows of
    c around the result and columns of a outside it untouched."""
    r = rng(61)
    a = r.standard_normal((M, K_ + 2)).astype(dtype)[:, 1:K_ + 1]  # rows contiguous, strided
    w = r.standard_normal((K_, N)).astype(dtype)
    packed = np.empty((N // 16, K_, 16), dtype)
    K._lstm_pack_panels(packed, w)
    c, c_packed = np.full((M, N), np.nan, dtype), np.full((M, N), np.nan, dtype)
    K._panels_product(c, a, w)
    K._panels_product(c_packed, a, packed)
    np.testing.assert_array_equal(c, c_packed)
    tol = 2e-5 if dtype == F32 else 1e-12
    np.testing.assert_allclose(c, a.astype(F64) @ w.astype(F64), rtol=tol, atol=tol * np.sqrt(K_))
    dz = r.standard_normal((M, N)).astype(dtype)
    dz_packed = np.empty((N // 16, M, 16), dtype)
    K._lstm_pack_panels(dz_packed, dz)
    want = a.T.astype(F64) @ dz.astype(F64)
    for src in (dz, dz_packed):
        g = np.full((K_ + 2, N), np.nan, dtype)
        K._panels_product_t(g[1:K_ + 1], a, src)
        np.testing.assert_allclose(g[1:K_ + 1], want, rtol=tol, atol=tol * np.sqrt(M))
        assert np.isnan(g[0]).all() and np.isnan(g[K_ + 1]).all()


@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize("M,K_,N", [(8, 5, 32), (19, 33, 48), (64, 784, 64), (13, 24, 80)])
def test_panel_pairs_give_the_bits_of_single_panels(M, K_, N, dtype):
    """The 8-row x 2-panel kernels (panels in pairs) run the same FMAs per
    lane in k order as the one-panel kernels: the same bits, forward and
    transposed, for an odd number of panels and rows past the last 8 too."""
    r = rng(62)
    a = r.standard_normal((M, K_)).astype(dtype)
    w = r.standard_normal((K_, N)).astype(dtype)
    pairs, single = np.full((M, N), np.nan, dtype), np.full((M, N), np.nan, dtype)
    K._panels_product(pairs, a, w)
    for p in range(N // 16):
        K._panel_rows_from(single, a, w, p, 0)
    np.testing.assert_array_equal(pairs, single)
    dz = r.standard_normal((M, N)).astype(dtype)
    pairs_t, single_t = np.full((K_, N), np.nan, dtype), np.full((K_, N), np.nan, dtype)
    K._panels_product_t(pairs_t, a, dz)
    K8 = K_ - K_ % 8  # the rows of a.T taken 8 at a time (the rest: unchanged kernels)
    for r0 in range(0, K8, 8):
        for p in range(N // 16):
            K._panels_rows_t8(single_t, a, dz, r0, p, p + 1)  # one panel: the 8 x 1 kernel
    np.testing.assert_array_equal(pairs_t[:K8], single_t[:K8])
    assert not np.isnan(pairs_t).any()


@pytest.mark.parametrize("mode", [1, 2])
@pytest.mark.parametrize("M", [0, 1, 9, 255, 256, 257, 700])
@pytest.mark.parametrize("K_,N", [(1, 16), (13, 48), (65, 128)])
def test_lstm_weight_gradient_by_panels_and_chunks(M, K_, N, mode):
    """lstm_passes.py's weight gradient on panels.py's kernel, c = (1) or +=
    (2) a.T @ w with w's panels split over threads and a's rows in chunks of
    _LSTM_GRAD_CHUNK (here 256): within float32 rounding of float64 numpy,
    the same bits however the panels are split (one range, two, or
    _lstm_grad_panels on the module's threads), rows of c around the result
    untouched; no rows give zeros (1) or c unchanged (2)."""
    r = rng(67)
    a = r.standard_normal((M, K_ + 2)).astype(F32)[:, 1:K_ + 1]  # rows contiguous, strided
    w = r.standard_normal((M, N)).astype(F32)
    c0 = r.standard_normal((K_, N)).astype(F32)
    want = a.T.astype(F64) @ w.astype(F64) + (c0.astype(F64) if mode == 2 else 0.0)
    P = N // 16
    results = []
    for cuts in ([0, P], [0, 1, P], [0, P - 1, P], None):
        g = np.full((K_ + 2, N), np.nan, F32)
        if mode == 2:
            g[1:K_ + 1] = c0
        if cuts is None:
            K._lstm_grad_panels(g[1:K_ + 1], a, w, mode)
        else:
            for lo, hi in zip(cuts, cuts[1:]):
                if lo < hi:
                    K._lstm_grad_range(lo, hi, g[1:K_ + 1], a, w, np.int64(mode))
        assert np.isnan(g[0]).all() and np.isnan(g[K_ + 1]).all()
        results.append(g[1:K_ + 1])
    for g in results[1:]:
        np.testing.assert_array_equal(g, results[0])
    np.testing.assert_allclose(results[0], want, rtol=2e-5, atol=2e-5 * np.sqrt(M))


def test_lstm_weight_gradient_on_panels_where_it_pays(monkeypatch):
    """float32, columns a multiple of 16 up to _LSTM_GRAD_MAX_COLUMNS, from
    _LSTM_GRAD_MIN_MACS, and an output up to _LSTM_GRAD_MAX_OUTPUT values
    (no cap on AMD Zen, 2^14 elsewhere); everything else stays on BLAS."""
    def taken(M, K_, N, dtype=F32):
        return K._lstm_grad_on_panels(np.empty((K_, N), dtype), np.empty((M, K_), dtype), np.empty((M, N), dtype), M)
    assert taken(25600, 65, 128)
    assert taken(3200, 161, 512) == (K._LSTM_GRAD_MAX_OUTPUT >= 161 * 512)
    assert K._LSTM_GRAD_MAX_OUTPUT in (1 << 14, 1 << 62)
    monkeypatch.setattr(K, "_LSTM_GRAD_MAX_OUTPUT", 1 << 14)
    assert not taken(3200, 161, 512) and not taken(2737, 512, 128) and taken(25600, 65, 128)
    monkeypatch.setattr(K, "_LSTM_GRAD_MAX_OUTPUT", 1 << 62)
    assert taken(3200, 161, 512) and taken(2737, 512, 128)
    assert not taken(3200, 161, 512, F64)
    assert not taken(800, 545, 2048)  # wide: BLAS is faster
    assert not taken(800, 65, 128)  # small: a hand-off costs more
    # the rows passed decide, not a's (an embedded LSTM's distinct ids: its B*T rows)
    few = (np.empty((65, 128), F32), np.empty((3, 65), F32), np.empty((3, 128), F32))
    assert K._lstm_grad_on_panels(*few, 25600) and not K._lstm_grad_on_panels(*few, 3)
    assert not taken(25600, 65, 40)  # not whole panels
    assert not taken(0, 65, 128)


@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize("o", [10, 16, 48])
@pytest.mark.parametrize("act", [LINEAR, RELU, SIGMOID, SOFTMAX])
@pytest.mark.parametrize("mode,wmode,use_bias", [(0, 1, True), (1, 1, True), (2, 2, False), (1, 2, True)])
def test_dense_one_thread_kernels_equal_serial(mode, wmode, use_bias, act, o, dtype):
    """_dense_forward_one / _dense_backward_one (one part of a data-parallel
    step) compute what the serial kernels do: through panels.py for float32
    with a multiple of 16 columns (up to float32 rounding: another summation
    order than OpenBLAS's), bit for bit through the same np.dot otherwise;
    the forward pass reports a NaN/Inf pre-activation as the serial one."""
    r = rng(47)
    n, i = 21, 37
    x = r.standard_normal((n, i)).astype(dtype)
    w = (0.3 * r.standard_normal((i, o))).astype(dtype)
    b = r.standard_normal(o).astype(dtype) if use_bias else np.zeros(0, dtype)
    y, y_ref = np.full((n, o), np.nan, dtype), np.full((n, o), np.nan, dtype)
    assert K._dense_forward_one(y, x, w, b, act) == 0
    K._dense_forward_serial(y_ref, x, w, b, act)
    panels = dtype == F32 and o % 16 == 0
    check = (lambda a, b_: np.testing.assert_allclose(a, b_, rtol=2e-5, atol=2e-6)) if panels else np.testing.assert_array_equal
    check(y, y_ref)
    D = r.standard_normal((n, o)).astype(dtype)
    start = [r.standard_normal((n, i)).astype(dtype) if mode == 2 else np.full((n, i), np.nan, dtype),
             r.standard_normal((i, o)).astype(dtype) if wmode == 2 else np.full((i, o), np.nan, dtype),
             (r.standard_normal(o).astype(dtype) if wmode == 2 else np.full(o, np.nan, dtype)) if use_bias
             else np.zeros(0, dtype)]
    if mode == 0:
        start[0] = np.zeros((0, 0), dtype)
    got, want = [a.copy() for a in start], [a.copy() for a in start]
    K._dense_backward_one(*got, D.copy(), y_ref, x, w, act, mode, wmode)
    K._dense_backward_serial(*want, D.copy(), y_ref, x, w, act, mode, wmode)
    for a, b_ in zip(got, want):
        check(a, b_)
    xb = x.copy()
    xb[3, 5] = np.inf
    assert K._dense_forward_one(np.empty((n, o), dtype), xb, w, b, act) == 1
