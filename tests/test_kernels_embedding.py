"""Embedding and Concatenate kernels: forward, float64 finite differences of
the backward pass (repeated ids), the wide parallel scatter-add and the id
check."""

import numpy as np
import pytest

from fd import F32, F64, K, assert_grad, numgrad, rng


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
