"""Loss and metric kernels: the Keras formulas in each dtype, float64 finite
differences of the loss gradients, and the clip bounds."""

import numpy as np
import pytest

from fd import F32, F64, LOSSES, K, assert_grad, loss_data, loss_fns, numgrad, rng


# ----------------------------------------------------------------- losses

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
