"""Activation kernels: forward against numpy, float64 finite differences of
the backward pass, the float32 exp and the tanh accuracy, and the parallel
path."""

import numpy as np
import pytest

from fd import (F32, F64, LINEAR, RELU, SIGMOID, SOFTMAX, TANH, K, assert_grad, away_from_zero,
                np_act, numgrad, rng)


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
