"""Embedding -> LSTM fused (lstm_embedded_forward / lstm_embedded_backward):
the function of Embedding + LSTM, float64 finite differences of its
gradients, and its parallel branches against the unfused kernels."""

import numpy as np
import pytest

from fd import (SIGMOID, TANH, K, assert_grad, lstm_grads, lstm_ref, lstm_run, numgrad, rng,
                stacked, unstack)


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
