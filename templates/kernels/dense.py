# ---------------------------------------------------------------- dense
# z = x @ kernel + bias.  Both products go through np.dot (numba -> scipy
# BLAS gemm).  x.T / kernel.T are F-ordered views of C arrays: numba passes
# them to gemm as "transposed" without copying.  np.dot(a, b, out) writes
# in place but only overwrites (no beta=1), so accumulating gradients
# (+=) costs one temporary the size of the result.


@njit
def dense_forward(z, x, kernel, bias):
    """z = x @ kernel + bias.

    z      (n, o)  output
    x      (n, i)  input
    kernel (i, o)
    bias   (o,) or (0,) when use_bias=False
    """
    np.dot(x, kernel, z)
    if bias.shape[0] > 0:
        n, o = z.shape
        for r in range(n):
            for j in range(o):
                z[r, j] += bias[j]


@njit
def dense_backward(dx, dkernel, dbias, dz, x, kernel, mode):
    """Gradients of z = x @ kernel + bias.

    dx      (n, i)  input gradient: mode 0 skip, 1 overwrite, 2 accumulate;
                    may be (0, 0) when mode == 0
    dkernel (i, o)  += x.T @ dz
    dbias   (o,)    += sum over rows of dz; (0,) when use_bias=False
    dz      (n, o)  gradient of the output
    x       (n, i)  forward input
    kernel  (i, o)
    """
    dkernel += np.dot(x.T, dz)
    if dbias.shape[0] > 0:
        n, o = dz.shape
        for r in range(n):  # row-major walk: contiguous reads of dz
            for j in range(o):
                dbias[j] += dz[r, j]
    if mode == 1:
        np.dot(dz, kernel.T, dx)
    elif mode == 2:
        dx += np.dot(dz, kernel.T)
