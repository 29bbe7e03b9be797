"""Kernel checks: float64 central finite differences of every backward kernel
against its forward, float32 forward checks against numpy references, loss /
metric / optimizer formulas, and (when Keras with the torch backend imports in
a subprocess) cross-checks of LSTM, losses and optimizers against Keras.

Finite differences use L = sum(R * output) with a random R, so every output
element carries a distinct weight.
"""

import json
import os
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

try:
    from kernelmod import load_kernels
except ImportError:  # tests/ imported as a package
    from tests.kernelmod import load_kernels

K = load_kernels()

F32 = np.float32
F64 = np.float64
EPS_FD = 1e-6
LINEAR, RELU, SIGMOID, TANH, SOFTMAX = 0, 1, 2, 3, 4


# ---------------------------------------------------------------- helpers

def rng(seed=0):
    return np.random.default_rng(seed)


def numgrad_at(f, a, idx, eps=EPS_FD):
    """Central differences at the flat indices idx only (spot checks of big arrays)."""
    flat = a.reshape(-1)
    out = np.empty(len(idx))
    for n, k in enumerate(idx):
        old = flat[k]
        flat[k] = old + eps
        fp = f()
        flat[k] = old - eps
        fm = f()
        flat[k] = old
        out[n] = (fp - fm) / (2 * eps)
    return out


def numgrad(f, a, eps=EPS_FD):
    """Central-difference gradient of the scalar f() w.r.t. array a (edited in place)."""
    g = np.zeros_like(a, dtype=F64)
    flat = a.reshape(-1)
    gf = g.reshape(-1)
    for k in range(flat.size):
        old = flat[k]
        flat[k] = old + eps
        fp = f()
        flat[k] = old - eps
        fm = f()
        flat[k] = old
        gf[k] = (fp - fm) / (2 * eps)
    return g


def assert_grad(analytic, numeric, rtol=1e-5, atol=1e-7):
    assert analytic.shape == numeric.shape
    np.testing.assert_allclose(analytic, numeric, rtol=rtol, atol=atol)


def np_act(z, act):
    if act == LINEAR:
        return z.copy()
    if act == RELU:
        return np.maximum(z, 0)
    if act == SIGMOID:
        return 1 / (1 + np.exp(-z))
    if act == TANH:
        return np.tanh(z)
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def away_from_zero(a, margin=0.1):
    """Push values away from 0 so relu kinks are never straddled by a FD step."""
    return np.where(np.abs(a) < margin, np.sign(a + 1e-12) * margin, a)


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
@pytest.mark.parametrize("M", [1, 9, 255, 256, 257, 700])
@pytest.mark.parametrize("K_,N", [(1, 16), (13, 48), (65, 128)])
def test_lstm_weight_gradient_by_panels_and_chunks(M, K_, N, mode):
    """lstm_passes.py's weight gradient on panels.py's kernel, c = (1) or +=
    (2) a.T @ w with w's panels split over threads and a's rows in chunks of
    _LSTM_GRAD_CHUNK (here 256): within float32 rounding of float64 numpy,
    the same bits however the panels are split (one range, two, or
    _lstm_grad_panels on the module's threads), rows of c around the result
    untouched."""
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
        return K._lstm_grad_on_panels(np.empty((K_, N), dtype), np.empty((M, K_), dtype), np.empty((M, N), dtype))
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


# ------------------------------------------------------------- activation

@pytest.mark.parametrize("act", [LINEAR, RELU, SIGMOID, TANH, SOFTMAX])
@pytest.mark.parametrize("dtype", [F32, F64])
def test_activation_forward(act, dtype):
    r = rng(3)
    z = (3 * r.standard_normal((9, 6))).astype(dtype)
    z[0, :] = [-200, -50, 0, 50, 200, 1]  # extremes: no overflow / nan
    y = np.full_like(z, np.nan)
    K.activation_forward(y, z, act)
    ref = np_act(z.astype(F64), act)
    np.testing.assert_allclose(y, ref, rtol=2e-6 if dtype == F32 else 1e-12, atol=1e-7)
    assert np.all(np.isfinite(y))
    # in place (y aliases z)
    z2 = z.copy()
    K.activation_forward(z2, z2, act)
    np.testing.assert_array_equal(z2, y)


@pytest.mark.parametrize("act", [LINEAR, RELU, SIGMOID, TANH, SOFTMAX])
@pytest.mark.parametrize("mode", [0, 1, 2])
def test_activation_backward_fd(act, mode):
    r = rng(4)
    z = away_from_zero(r.standard_normal((5, 4)))
    R = r.standard_normal((5, 4))

    def loss():
        y = np.empty_like(z)
        K.activation_forward(y, z, act)
        return float(np.sum(R * y))

    y = np.empty_like(z)
    K.activation_forward(y, z, act)
    dz0 = r.standard_normal(z.shape)
    dz = dz0.copy()
    K.activation_backward(dz, R.copy(), y, act, mode)
    g = numgrad(loss, z)
    if mode == 0:
        np.testing.assert_array_equal(dz, dz0)
    elif mode == 1:
        assert_grad(dz, g)
        # dz may alias dy in mode 1
        d = R.copy()
        K.activation_backward(d, d, y, act, 1)
        assert_grad(d, g)
    else:
        assert_grad(dz - dz0, g)


def test_exp32_accuracy_and_edges():
    """float32 sigmoid and softmax take exp from _activation_exp32: within
    0.6 ulp of exp on [-85.9, 0] (every 2^-10 step there, and its ends), 0
    below, NaN through; and a NaN or Inf logit still reaches the outputs."""
    @K.njit(cache=False)  # it inlines the kernel: a cached copy would outlive a change to it
    def exp32_all(out, x):
        for i in range(x.shape[0]):
            out[i] = K._activation_exp32(x[i])

    x = np.concatenate([np.arange(-85.9, 0, 2.0 ** -10), [-85.9, -1e-30, -0.0, 0.0]]).astype(F32)
    got = np.empty_like(x)
    exp32_all(got, x)
    ref = np.exp(x.astype(F64))
    assert np.max(np.abs(got - ref) / np.spacing(ref.astype(F32))) < 0.6
    edge = np.array([-86.0, -103.0, -np.inf, np.nan], F32)
    got = np.empty_like(edge)
    exp32_all(got, edge)
    np.testing.assert_array_equal(got, [0, 0, 0, np.nan])
    z = np.array([[1.0, np.nan, 2.0], [np.inf, 1.0, 0.0], [-np.inf, 0.0, 1.0]], F32)
    y = np.empty_like(z)
    K.activation_forward(y, z, SOFTMAX)
    assert np.isnan(y[:2]).all() and np.allclose(y[2], np_act(z[2:3].astype(F64), SOFTMAX)[0])
    z = np.array([[np.nan, np.inf, -np.inf, 90.0, -90.0, 0.0]], F32)
    K.activation_forward(y := np.empty_like(z), z, SIGMOID)
    np.testing.assert_array_equal(y, [[np.nan, 1, 0, 1, 0, 0.5]])


@pytest.mark.parametrize("dtype", [F32, F64])
def test_tanh_relative_accuracy(dtype):
    """The exp-based tanh (float64 activations and gates) keeps full relative
    precision near 0 (expm1 branch). float32 activations and gates take
    Eigen's rational tanh (XLA's): relative precision near 0 too, and within
    4e-7 everywhere (a dense sweep of [-10, 10])."""
    v = np.array([1e-30, 1e-8, 1e-5, 1e-3, 0.1, 0.3, 0.6249, 0.6251, 1.0, 3.0, 9.0, 20.0, 100.0])
    v = np.concatenate([v, -v, [0.0]]).astype(dtype)
    ref = np.tanh(v.astype(F64))
    rtol = 3e-7 if dtype == F32 else 1e-15
    one = dtype(1.0)
    got = np.array([K._activation_tanh(x, one) for x in v])
    np.testing.assert_allclose(got, ref, rtol=rtol, atol=0)
    y = np.empty((1, v.size), dtype)
    K.activation_forward(y, v[None, :].copy(), TANH)
    np.testing.assert_allclose(y[0], ref, rtol=rtol, atol=0)
    if dtype == F32:
        w = np.linspace(-10, 10, 200001).astype(F32)[None, :]
        K.activation_forward(y := np.empty_like(w), w, TANH)
        assert np.max(np.abs(y[0] - np.tanh(w[0].astype(F64)))) < 4e-7
        assert np.array_equal(y[0], -y[0, ::-1])  # odd


@pytest.mark.parametrize("act", [LINEAR, RELU, SIGMOID, TANH, SOFTMAX])
def test_activation_parallel_path(act, monkeypatch):
    # the parallel kernels (blocks of rows, the last one partial) against the formulas
    r = rng(40)
    z = away_from_zero(r.standard_normal((301, 128)))
    y = np.empty_like(z)
    K._activation_forward_parallel(y, z, act)
    np.testing.assert_allclose(y, np_act(z, act), rtol=1e-12, atol=1e-14)
    dy = r.standard_normal(z.shape)
    if act == SOFTMAX:
        ref = y * (dy - np.sum(dy * y, axis=-1, keepdims=True))
    else:
        ref = dy * {LINEAR: np.ones_like(y), RELU: (y > 0) * 1.0,
                    SIGMOID: y * (1 - y), TANH: 1 - y * y}[act]
    dz0 = r.standard_normal(z.shape)
    dz = dz0.copy()
    K._activation_backward_parallel(dz, dy, y, act, 2)
    np.testing.assert_allclose(dz - dz0, ref, rtol=1e-9, atol=1e-12)
    K._activation_backward_parallel(dz, dy, y, act, 1)
    np.testing.assert_allclose(dz, ref, rtol=1e-12, atol=1e-14)
    # the entry points take these kernels only for exp-based codes of big arrays
    z2 = away_from_zero(r.standard_normal((512, 128)))
    assert z2.size >= K._ACTIVATION_PARALLEL_MIN
    calls = []
    for name in ("_activation_forward_parallel", "_activation_backward_parallel"):
        kern = getattr(K, name)
        monkeypatch.setattr(K, name, lambda *a, kern=kern: calls.append(a) or kern(*a))
    y2 = np.empty_like(z2)
    K.activation_forward(y2, z2, act)
    K.activation_backward(np.empty_like(z2), z2, y2, act, 1)
    K.activation_forward(y2[:8], z2[:8], act)  # small: serial
    assert len(calls) == (2 if act in (SIGMOID, TANH, SOFTMAX) else 0)


# -------------------------------------------------------------- embedding

@pytest.mark.parametrize("idtype", [np.int32, np.int64])
@pytest.mark.parametrize("dtype", [F32, F64])
def test_embedding_forward(idtype, dtype):
    r = rng(5)
    table = r.standard_normal((11, 7)).astype(dtype)
    ids = np.array([3, 0, 10, 3, 3, 7], idtype)
    out = np.full((6, 7), np.nan, dtype)
    K.embedding_forward(out, ids, table)
    np.testing.assert_array_equal(out, table[ids])


def test_embedding_backward_fd_repeated_ids():
    r = rng(6)
    table = r.standard_normal((5, 3))
    ids = np.array([1, 4, 1, 1, 0, 4], np.int64)
    R = r.standard_normal((6, 3))

    def loss():
        out = np.empty((6, 3))
        K.embedding_forward(out, ids, table)
        return float(np.sum(R * out))

    d0 = r.standard_normal(table.shape)
    d = d0.copy()
    K.embedding_backward(d, R, ids)
    assert_grad(d - d0, numgrad(loss, table))


@pytest.mark.parametrize("dtype", [F32, F64])
def test_embedding_backward_wide_matches_add_at(dtype):
    # n * d above the parallel threshold, d > the block width, many repeats
    r = rng(7)
    ids = r.integers(0, 6, size=600).astype(np.int32)
    dout = r.standard_normal((600, 150)).astype(dtype)
    d0 = r.standard_normal((6, 150)).astype(dtype)
    d = d0.copy()
    K.embedding_backward(d, dout, ids)
    ref = d0.astype(F64)
    np.add.at(ref, ids, dout.astype(F64))
    np.testing.assert_allclose(d, ref, rtol=1e-5 if dtype == F32 else 1e-12, atol=1e-4)


def test_embedding_check_ids():
    for idtype in (np.int32, np.int64):
        assert K.embedding_check_ids(np.array([0, 4, 2], idtype), 5) == -1
        assert K.embedding_check_ids(np.array([0, 5, -1], idtype), 5) == 1
        assert K.embedding_check_ids(np.array([0, 1, -1], idtype), 5) == 2
        assert K.embedding_check_ids(np.zeros(0, idtype), 5) == -1


# ------------------------------------------------------------------- lstm

def lstm_ref(x, W, Rk, b, act, ract, return_sequences):
    """Plain numpy Keras LSTM (batch-major, float64)."""
    B, T, _ = x.shape
    U = Rk.shape[0]
    h = np.zeros((B, U))
    c = np.zeros((B, U))
    out = []
    for t in range(T):
        z = x[:, t] @ W + h @ Rk + (b if b.size else 0)
        i = np_act(z[:, :U], ract)
        f = np_act(z[:, U:2 * U], ract)
        g = np_act(z[:, 2 * U:3 * U], act)
        o = np_act(z[:, 3 * U:], ract)
        c = f * c + i * g
        h = o * np_act(c, act)
        out.append(h)
    return np.stack(out, 1) if return_sequences else h[:, None, :]


def lstm_run(x, W, Rk, b, act, ract, rs, per_step=False):
    """lstm_forward with freshly allocated caches; returns (y, caches)."""
    B, T, I = x.shape
    U = Rk.shape[0]
    dt = x.dtype
    nan = lambda *shape: np.full(shape, np.nan, dt)
    y = nan(B, T if rs else 1, U)
    zs, xh, cp, tc = nan(B, T, 4 * U), nan(B, T, I + U + (b.shape[0] > 0)), nan(B, T, U), nan(B, T, U)
    rkt = nan(4 * U, U)  # rows schedule and transposed steps (see _LSTM_FORWARD_TRANSPOSED_MIN_UNITS)
    K.lstm_forward(y, zs, xh, cp, tc, nan(B, U), nan(B, U), nan(B, 4 * U), rkt, x, W, Rk, b, act, ract, rs, per_step)
    return y, (zs, xh, cp, tc)


def stacked(*grads):
    """The layer's gradients as lstm_backward takes them: one (rows, 4U)
    matrix, [dkernel; drkernel; dbias] (adjacent in the model's flat buffer)."""
    return np.concatenate([g.reshape(-1, g.shape[-1]) for g in grads if g.size])


def unstack(dw, *grads):
    """Copy the rows of dw back into the separate gradients."""
    o = 0
    for g in grads:
        n = g.size // g.shape[-1] if g.size else 0
        g[...] = dw[o:o + n].reshape(g.shape)
        o += n


def lstm_grads(x, W, Rk, b, R, caches, act, ract, rs, per_step, mode, dx=None, dW=None, dR=None, db=None, wmode=2):
    """lstm_backward with fresh NaN scratch; accumulates into the given
    gradients (wmode 2) or overwrites them (wmode 1)."""
    B, T, I = x.shape
    U = Rk.shape[0]
    G = 4 * U
    dt = x.dtype
    nan = lambda *shape: np.full(shape, np.nan, dt)
    dzt = nan(B, G) if per_step else np.zeros((0, 0), dt)
    if dx is None:
        dx = np.zeros((0, 0, 0), dt)
    dw = stacked(dW, dR, db)
    K.lstm_backward(dx, dw, nan(B, T, G), nan(B, U), nan(B, U), dzt,
                    R, x, *caches, W, Rk, nan(G, U), act, ract, rs, per_step, mode, wmode)
    unstack(dw, dW, dR, db)


ACT_PAIRS = [(TANH, SIGMOID), (RELU, TANH), (SIGMOID, SIGMOID), (LINEAR, TANH)]


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


def embedded_run(ids, table, W, Rk, b, act, ract, rs, per_step):
    """lstm_embedded_forward with fresh buffers; returns (y, state for the backward)."""
    B, T = ids.shape
    V, I = table.shape
    U = Rk.shape[0]
    dt = table.dtype
    nan = lambda *shape: np.full(shape, np.nan, dt)
    y = nan(B, T if rs else 1, U)
    zs, xh, cp, tc = nan(B, T, 4 * U), nan(B, T, U + (b.shape[0] > 0)), nan(B, T, U), nan(B, T, U)
    rec = nan(B, 4 * U)
    R = min(B * T, V)
    uniq, inv, nu = np.full(B * T, -7), np.full(B * T, -7), np.zeros(1, np.int64)
    slot = np.full(V, -1, np.int64)
    xu, pu = nan(R, I), nan(R, 4 * U)
    rkt = np.zeros((0, 0), dt) if per_step else nan(4 * U, U)
    K.lstm_embedded_forward(y, zs, xh, cp, tc, nan(B, U), nan(B, U), rec, rkt, uniq, inv, slot, nu, xu, pu,
                            ids.reshape(-1), table, W, Rk, b, act, ract, rs, per_step)
    assert np.all(slot == -1)
    return y, dict(uniq=uniq, inv=inv, nu=nu, xu=xu, pu=pu, caches=(zs, xh, cp, tc))


@pytest.mark.parametrize("per_step", [False, True], ids=["rows", "steps"])
@pytest.mark.parametrize("rs", [True, False])
@pytest.mark.parametrize("use_bias", [True, False])
@pytest.mark.parametrize("wmode", [1, 2])
def test_lstm_embedded_fd(rs, per_step, use_bias, wmode, monkeypatch):
    """Embedding -> LSTM fused: the same function as lstm_forward(table[ids])
    and the float64 finite-difference gradient of the table, kernel,
    recurrent kernel and bias, with ids repeated inside and across rows."""
    monkeypatch.setattr(K, "_LSTM_ROWS_FORWARD_MIN", 0)  # per_step False: rows forward too
    r = rng(42)
    B, T, V, I, U = 3, 4, 6, 5, 3
    G = 4 * U
    ids = r.integers(0, V - 1, (B, T))  # the last table row is never used
    ids[1, 2] = ids[0, 0]
    table = r.standard_normal((V, I))
    W = 0.6 * r.standard_normal((I, G))
    Rk = 0.6 * r.standard_normal((U, G))
    b = 0.6 * r.standard_normal(G) if use_bias else np.zeros(0)
    y, st = embedded_run(ids, table, W, Rk, b, TANH, SIGMOID, rs, per_step)
    np.testing.assert_allclose(y, lstm_ref(table[ids], W, Rk, b, TANH, SIGMOID, rs), rtol=1e-12, atol=1e-14)
    n = st["nu"][0]
    assert n == len(np.unique(ids))
    np.testing.assert_array_equal(st["uniq"][:n][st["inv"]], ids.reshape(-1))
    D = r.standard_normal(y.shape)

    def loss():
        return float(np.sum(D * embedded_run(ids, table, W, Rk, b, TANH, SIGMOID, rs, per_step)[0]))

    # the table's gradient always accumulates; wmode 1 overwrites the others (NaN here)
    grads = [r.standard_normal(a.shape) if k == 0 or wmode == 2 else np.full(a.shape, np.nan)
             for k, a in enumerate((table, W, Rk, b))]
    dtable, dW, dR, db = (g.copy() for g in grads)
    nan = lambda *shape: np.full(shape, np.nan)
    dw = stacked(dW, dR, db)
    K.lstm_embedded_backward(dtable, dw, nan(B, T, G), nan(B, U), nan(B, U),
                             nan(B, G) if per_step else np.zeros((0, 0)), D, st["uniq"], st["inv"], st["nu"], st["xu"], st["pu"], *st["caches"], W, Rk,
                             nan(G, U), TANH, SIGMOID, rs, per_step, wmode)
    unstack(dw, dW, dR, db)
    for k, (a, d, g0) in enumerate(zip((table, W, Rk, b), (dtable, dW, dR, db), grads)):
        assert_grad(d - g0 if k == 0 or wmode == 2 else d, numgrad(loss, a))
    np.testing.assert_array_equal(dtable[V - 1], grads[0][V - 1])  # an unused row is untouched


def test_lstm_embedded_parallel_paths():
    """Big enough for every parallel branch of the fused kernels (projection
    gather, table-row gather and scatter): the results equal Embedding +
    lstm_forward / lstm_backward + a scatter-add, unfused."""
    r = rng(43)
    B, T, V, I, U = 130, 3, 400, 512, 128
    G = 4 * U
    ids = r.permutation(V)[:B * T].reshape(B, T)
    ids[5, 1] = ids[0, 0]  # one repeat
    assert B * T * G >= K._LSTM_PARALLEL_MIN and (B * T - 1) * I >= K._LSTM_PARALLEL_MIN
    table, W = r.standard_normal((V, I)), 0.05 * r.standard_normal((I, G))
    Rk, b = 0.1 * r.standard_normal((U, G)), 0.3 * r.standard_normal(G)
    y, st = embedded_run(ids, table, W, Rk, b, TANH, SIGMOID, True, False)
    x = table[ids]
    y_ref, caches = lstm_run(x, W, Rk, b, TANH, SIGMOID, True)
    np.testing.assert_allclose(y, y_ref, rtol=1e-10, atol=1e-12)
    D = r.standard_normal(y.shape)
    grads = [np.zeros_like(a) for a in (table, W, Rk, b)]
    nan = lambda *shape: np.full(shape, np.nan)
    dw = stacked(*grads[1:])
    K.lstm_embedded_backward(grads[0], dw, nan(B, T, G), nan(B, U), nan(B, U), np.zeros((0, 0)), D, st["uniq"], st["inv"], st["nu"], st["xu"], st["pu"], *st["caches"], W, Rk,
                             nan(G, U), TANH, SIGMOID, True, False, 2)
    unstack(dw, *grads[1:])
    ref = [np.zeros_like(a) for a in (W, Rk, b)]
    dx = np.empty_like(x)
    lstm_grads(x, W, Rk, b, D, caches, TANH, SIGMOID, True, False, 1, dx, *ref)
    dtable = np.zeros_like(table)
    np.add.at(dtable, ids.reshape(-1), dx.reshape(-1, I))
    for got, want in zip(grads, [dtable] + ref):
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-11)


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


# ----------------------------------------------------------------- concat

@pytest.mark.parametrize("dtype", [F32, F64])
def test_concat_forward(dtype):
    r = rng(11)
    xs = [r.standard_normal((5, w)).astype(dtype) for w in (3, 1, 4)]
    out = np.full((5, 8), np.nan, dtype)
    off = 0
    for x in xs:
        K.concat_forward(out, x, off)
        off += x.shape[1]
    np.testing.assert_array_equal(out, np.concatenate(xs, axis=1))


@pytest.mark.parametrize("mode", [0, 1, 2])
def test_concat_backward_fd(mode):
    r = rng(12)
    widths = (3, 1, 4)
    xs = [r.standard_normal((5, w)) for w in widths]
    R = r.standard_normal((5, sum(widths)))

    def loss():
        out = np.empty((5, sum(widths)))
        off = 0
        for x in xs:
            K.concat_forward(out, x, off)
            off += x.shape[1]
        return float(np.sum(R * out))

    off = 0
    for x in xs:
        dx0 = r.standard_normal(x.shape)
        dx = dx0.copy()
        K.concat_backward(dx, R, off, mode)
        off += x.shape[1]
        g = numgrad(loss, x)
        if mode == 0:
            np.testing.assert_array_equal(dx, dx0)
        elif mode == 1:
            assert_grad(dx, g)
        else:
            assert_grad(dx - dx0, g)


# ----------------------------------------------------------------- losses

LOSSES = ["binary_crossentropy", "categorical_crossentropy",
          "sparse_categorical_crossentropy", "mean_squared_error"]


def loss_fns(name):
    return getattr(K, name + "_forward"), getattr(K, name + "_backward")


def np_loss(name, y, t):
    """Reference per-sample loss in y's dtype, Keras formulas, clip bounds in y's dtype."""
    dt = y.dtype.type
    lo, hi = dt(1e-7), dt(1 - 1e-7)
    if name == "binary_crossentropy":
        p = np.clip(y, lo, hi)
        return np.mean((t - 1) * np.log1p(-p) - t * np.log(p), axis=-1)
    if name == "mean_squared_error":
        return np.mean((t - y) ** 2, axis=-1)
    p = np.clip(y / y.sum(axis=-1, keepdims=True), lo, hi)
    if name == "categorical_crossentropy":
        return -np.sum(t * np.log(p), axis=-1)
    return -np.log(p[np.arange(len(t)), t])


def loss_data(name, r, n=6, c=4, dtype=F64):
    """Predictions well inside (lo, hi) and matching targets."""
    if name == "binary_crossentropy":
        y = r.uniform(0.05, 0.95, (n, c))
        t = r.uniform(0, 1, (n, c))
        t[0, :2] = [0, 1]  # hard targets too
    elif name == "mean_squared_error":
        y = r.standard_normal((n, c))
        t = r.standard_normal((n, c))
    else:
        y = r.uniform(0.1, 1.0, (n, c))  # not normalised: the loss divides by the row sum
        ids = r.integers(0, c, n)
        if name == "sparse_categorical_crossentropy":
            t = ids.astype(np.int64)
        else:
            t = np.eye(c)[ids]
            t[1] = r.uniform(0, 1, c)  # soft target row
    return y.astype(dtype), (t if t.dtype.kind == "i" else t.astype(dtype))


@pytest.mark.parametrize("name", LOSSES)
@pytest.mark.parametrize("dtype", [F32, F64])
def test_loss_forward(name, dtype):
    r = rng(13)
    y, t = loss_data(name, r, dtype=dtype)
    fwd, _ = loss_fns(name)
    out = np.full(len(y), np.nan, dtype)
    fwd(out, y, t)
    np.testing.assert_allclose(out, np_loss(name, y, t), rtol=2e-6 if dtype == F32 else 1e-12)


@pytest.mark.parametrize("name", LOSSES)
def test_loss_backward_fd(name):
    r = rng(14)
    y, t = loss_data(name, r)
    fwd, bwd = loss_fns(name)
    scale = 0.37

    def loss():
        out = np.empty(len(y))
        fwd(out, y, t)
        return scale * float(out.sum())

    dy = np.full_like(y, np.nan)
    bwd(dy, y, t, scale)
    assert_grad(dy, numgrad(loss, y))
    # overwrite, not accumulate
    dy2 = r.standard_normal(y.shape)
    bwd(dy2, y, t, scale)
    np.testing.assert_array_equal(dy2, dy)


def test_loss_clip_bounds_float32():
    """A saturated prediction costs -log(1 - float32(1 - 1e-7)) = 15.94, not 16.12."""
    y = np.array([[1.0], [0.0], [1.0]], F32)
    t = np.array([[0.0], [1.0], [1.0]], F32)
    out = np.empty(3, F32)
    K.binary_crossentropy_forward(out, y, t)
    hi = F32(1 - 1e-7)
    assert abs(out[0] - (-np.log(F64(1) - F64(hi)))) < 1e-4
    assert abs(out[0] - 15.942385) < 1e-4
    assert abs(out[1] - 16.118095) < 1e-4
    assert abs(out[2] - (-np.log(F64(hi)))) < 1e-6
    # float64 arrays clip at float64 bounds (Keras clips in the tensor dtype)
    out64 = np.empty(3)
    K.binary_crossentropy_forward(out64, y.astype(F64), t.astype(F64))
    assert abs(out64[0] - 16.118095) < 1e-5


@pytest.mark.parametrize("dtype", [F32, F64])
def test_loss_gradient_zero_where_clipped(dtype):
    dt = np.dtype(dtype).type
    lo, hi = dt(1e-7), dt(1 - 1e-7)
    # binary: outside [lo, hi] -> 0; exactly at the bounds torch.clamp passes it
    y = np.array([[1.0, 0.0, hi, lo, 0.5]], dtype)
    t = np.array([[0.0, 1.0, 0.0, 1.0, 1.0]], dtype)
    dy = np.full_like(y, np.nan)
    K.binary_crossentropy_backward(dy, y, t, 1.0)
    assert dy[0, 0] == 0 and dy[0, 1] == 0
    assert dy[0, 2] > 0 and dy[0, 3] < 0 and dy[0, 4] < 0
    # categorical: a class with all the mass is clipped (p = 1 > hi) ...
    y = np.array([[1.0, 0.0, 0.0], [0.7, 0.2, 0.1]], dtype)
    t = np.array([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]], dtype)
    dy = np.full_like(y, np.nan)
    K.categorical_crossentropy_backward(dy, y, t, 1.0)
    np.testing.assert_array_equal(dy[0], 0)
    assert np.all(np.isfinite(dy[1])) and dy[1, 0] < 0
    ids = np.array([0, 0])
    dys = np.full_like(y, np.nan)
    K.sparse_categorical_crossentropy_backward(dys, y, ids, 1.0)
    np.testing.assert_allclose(dys, dy, rtol=1e-6)
    out = np.empty(2, dtype)
    K.sparse_categorical_crossentropy_forward(out, y, ids)
    assert abs(out[0] + np.log(F64(hi))) < 1e-6


# ---------------------------------------------------------------- metrics

@pytest.mark.parametrize("dtype", [F32, F64])
def test_binary_accuracy(dtype):
    y = np.array([[0.5, 0.51, 0.2], [0.9, 0.1, 0.6], [0.49, 0.7, 1.0]], dtype)
    t = np.array([[0, 1, 0], [1, 1, 1], [0.0, 0.9, 1]], dtype)
    out = np.full(3, np.nan, dtype)
    K.binary_accuracy(out, y, t)
    ref = np.mean(t == (y > 0.5).astype(dtype), axis=-1)
    np.testing.assert_allclose(out, ref)
    np.testing.assert_allclose(out, [1.0, 2 / 3, 2 / 3], rtol=1e-6)


@pytest.mark.parametrize("dtype", [F32, F64])
def test_categorical_accuracy(dtype):
    y = np.array([[0.2, 0.5, 0.5], [0.7, 0.2, 0.1], [0.1, 0.1, 0.8], [0.3, 0.3, 0.3]], dtype)
    t = np.array([[0, 1, 0], [0, 1, 0], [0, 0, 1], [0.5, 0.5, 0]], dtype)
    out = np.full(4, np.nan, dtype)
    K.categorical_accuracy(out, y, t)
    ref = (np.argmax(y, -1) == np.argmax(t, -1)).astype(dtype)
    np.testing.assert_array_equal(out, ref)
    np.testing.assert_array_equal(out, [1, 0, 1, 1])
    ids = np.array([1, 1, 2, 2])
    K.sparse_categorical_accuracy(out, y, ids)
    np.testing.assert_array_equal(out, [1, 0, 1, 0])
    K.sparse_categorical_accuracy(out, y, ids.astype(np.int32))
    np.testing.assert_array_equal(out, [1, 0, 1, 0])


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


OPT_CONFIGS = [
    ("sgd", dict(learning_rate=0.01, momentum=0.0, nesterov=False)),
    ("sgd", dict(learning_rate=0.05, momentum=0.9, nesterov=False)),
    ("sgd", dict(learning_rate=0.05, momentum=0.9, nesterov=True)),
    ("rmsprop", dict(learning_rate=0.001, rho=0.9, momentum=0.0, epsilon=1e-7, centered=False)),
    ("rmsprop", dict(learning_rate=0.01, rho=0.8, momentum=0.5, epsilon=1e-7, centered=False)),
    ("rmsprop", dict(learning_rate=0.01, rho=0.9, momentum=0.0, epsilon=1e-7, centered=True)),
    ("rmsprop", dict(learning_rate=0.01, rho=0.9, momentum=0.3, epsilon=1e-3, centered=True)),
    ("adam", dict(learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7, amsgrad=False)),
    ("adam", dict(learning_rate=0.01, beta_1=0.8, beta_2=0.99, epsilon=1e-7, amsgrad=True)),
]


def run_ours(kind, cfg, w0, grads):
    """Apply our update kernel once per gradient in grads; returns w."""
    dt = w0.dtype
    P = w0.size
    w = w0.copy()
    z = lambda used: np.zeros(P if used else 0, dt)  # noqa: E731
    if kind == "sgd":
        m = z(cfg["momentum"] != 0)
        for g in grads:
            K.sgd_update(w, g, m, cfg["learning_rate"], cfg["momentum"], cfg["nesterov"])
    elif kind == "rmsprop":
        v, m, mg = z(True), z(cfg["momentum"] > 0), z(cfg["centered"])
        for g in grads:
            K.rmsprop_update(w, g, v, m, mg, cfg["learning_rate"], cfg["rho"],
                             cfg["momentum"], cfg["epsilon"], cfg["centered"])
    else:
        m, v, vhat = z(True), z(True), z(cfg["amsgrad"])
        for it, g in enumerate(grads):
            K.adam_update(w, g, m, v, vhat, cfg["learning_rate"], cfg["beta_1"],
                          cfg["beta_2"], cfg["epsilon"], cfg["amsgrad"], it + 1)
    return w


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


# ------------------------------------------------- Keras (torch) cross-check

KERAS_SCRIPT = r"""
import json, sys, os
import numpy as np
import keras, torch
d = np.load(sys.argv[1], allow_pickle=True)
spec = json.loads(sys.argv[2])
res = {}
for key, item in spec.items():
    kind = item["kind"]
    if kind == "opt":
        cls = {"sgd": keras.optimizers.SGD, "rmsprop": keras.optimizers.RMSprop,
               "adam": keras.optimizers.Adam}[item["name"]]
        opt = cls(**item["cfg"])
        w = keras.Variable(d[key + "_w"])
        g = torch.as_tensor(d[key + "_g"])
        for _ in range(item["steps"]):
            opt.apply_gradients([(g, w)])
        res[key] = keras.ops.convert_to_numpy(w)
    elif kind == "loss":
        y = torch.tensor(d[key + "_y"], requires_grad=True)
        t = torch.as_tensor(d[key + "_t"])
        fn = getattr(keras.losses, item["name"])
        out = fn(t, y)
        (out.sum() * item["scale"]).backward()
        res[key] = out.detach().numpy()
        res[key + "_grad"] = y.grad.numpy()
    elif kind == "lstm":
        layer = keras.layers.LSTM(item["units"], activation=item["act"],
                                  recurrent_activation=item["ract"],
                                  return_sequences=item["rs"], use_bias=item["use_bias"])
        x = d[key + "_x"]
        layer.build(x.shape)
        ws = [d[key + "_W"], d[key + "_R"]] + ([d[key + "_b"]] if item["use_bias"] else [])
        layer.set_weights(ws)
        res[key] = keras.ops.convert_to_numpy(layer(x))
np.savez(sys.argv[3], **res)
"""


def run_keras(tmp_path, arrays, spec):
    inp, outp = tmp_path / "in.npz", tmp_path / "out.npz"
    np.savez(inp, **arrays)
    env = dict(os.environ, KERAS_BACKEND="torch", CUDA_VISIBLE_DEVICES="")
    script = tmp_path / "keras_ref.py"
    script.write_text(textwrap.dedent(KERAS_SCRIPT))
    p = subprocess.run([sys.executable, str(script), str(inp), json.dumps(spec), str(outp)],
                       env=env, capture_output=True, text=True, timeout=600)
    if p.returncode != 0:
        if "No module named" in p.stderr and ("keras" in p.stderr or "torch" in p.stderr):
            pytest.skip("keras/torch not importable")
        raise AssertionError(p.stderr[-3000:])
    return dict(np.load(outp))


def test_optimizers_match_keras_torch(tmp_path):
    r = rng(16)
    P = 257
    arrays, spec, ours = {}, {}, {}
    for k, (kind, cfg) in enumerate(OPT_CONFIGS):
        key = "opt%d" % k
        w0 = r.standard_normal(P).astype(F32)
        g = r.standard_normal(P).astype(F32)
        arrays[key + "_w"], arrays[key + "_g"] = w0, g
        spec[key] = dict(kind="opt", name=kind, cfg=cfg, steps=3)
        ours[key] = run_ours(kind, cfg, w0, [g, g, g])
    ref = run_keras(tmp_path, arrays, spec)
    for key in spec:
        np.testing.assert_allclose(ours[key], ref[key], rtol=1e-5, atol=1e-7, err_msg=str(spec[key]))


def test_losses_match_keras_torch(tmp_path):
    r = rng(17)
    arrays, spec, ours = {}, {}, {}
    for name in LOSSES:
        y, t = loss_data(name, r, n=8, c=5, dtype=F32)
        if name == "binary_crossentropy":  # saturated and boundary predictions
            y[1, :4] = [1.0, 0.0, F32(1 - 1e-7), F32(1e-7)]
        if name in ("categorical_crossentropy", "sparse_categorical_crossentropy"):
            y[2] = [1.0, 0, 0, 0, 0]
        key = name
        arrays[key + "_y"], arrays[key + "_t"] = y, t
        spec[key] = dict(kind="loss", name=name, scale=0.25)
        fwd, bwd = loss_fns(name)
        out = np.empty(len(y), F32)
        fwd(out, y, t)
        dy = np.empty_like(y)
        bwd(dy, y, t, 0.25)
        ours[key], ours[key + "_grad"] = out, dy
    ref = run_keras(tmp_path, arrays, spec)
    for key in ours:
        np.testing.assert_allclose(ours[key], ref[key], rtol=2e-5, atol=1e-6, err_msg=key)


def test_lstm_matches_keras_torch(tmp_path):
    r = rng(18)
    B, T, I, U = 3, 5, 4, 6
    names = {LINEAR: "linear", RELU: "relu", SIGMOID: "sigmoid", TANH: "tanh"}
    arrays, spec, ours = {}, {}, {}
    for k, ((act, ract), rs, use_bias) in enumerate(
            [((TANH, SIGMOID), True, True), ((RELU, TANH), False, True),
             ((SIGMOID, SIGMOID), True, False)]):
        key = "lstm%d" % k
        x = r.standard_normal((B, T, I)).astype(F32)
        W = (0.5 * r.standard_normal((I, 4 * U))).astype(F32)
        Rk = (0.5 * r.standard_normal((U, 4 * U))).astype(F32)
        b = (0.5 * r.standard_normal(4 * U)).astype(F32)
        arrays.update({key + "_x": x, key + "_W": W, key + "_R": Rk, key + "_b": b})
        spec[key] = dict(kind="lstm", units=U, act=names[act], ract=names[ract], rs=rs,
                         use_bias=use_bias)
        y, _ = lstm_run(x, W, Rk, b if use_bias else np.zeros(0, F32), act, ract, rs)
        ours[key] = y if rs else y[:, 0]
    ref = run_keras(tmp_path, arrays, spec)
    for key in ours:
        np.testing.assert_allclose(ours[key], ref[key], rtol=1e-5, atol=1e-6, err_msg=key)


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
