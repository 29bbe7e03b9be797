# ---------------------------------------------------------------- dense
# y = act(x @ kernel + bias), the activation fused in (Keras's Dense has it
# too): one kernel call and one pass over y per layer instead of two.
# Both products go through np.dot (numba -> scipy BLAS gemm).  x.T /
# kernel.T are F-ordered views of C arrays: numba passes them to gemm as
# "transposed" without copying.  np.dot(a, b, out) writes in place but only
# overwrites (no beta=1), so an accumulated gradient (+=) costs a temporary
# the size of the result; lower.py lets the first contribution to a
# gradient overwrite it instead, so nothing zeroes it first either.
# The epilogue (bias, activation) runs over rows in parallel only for big
# outputs (_ACTIVATION_PARALLEL_MIN elements).


@njit
def _dense_epilogue_row(z, bias, r, act):
    """Row r of z: += bias, then the activation, in place."""
    if bias.shape[0] > 0:
        row = z[r]
        for j in range(row.shape[0]):
            row[j] += bias[j]
    if act != 0:
        _activation_forward_row(z, z, r, act)


@njit
def _dense_forward_serial(z, x, kernel, bias, act):
    np.dot(x, kernel, z)
    for r in range(z.shape[0]):
        _dense_epilogue_row(z, bias, r, act)


@njit(parallel=True)
def _dense_forward_parallel(z, x, kernel, bias, act):
    np.dot(x, kernel, z)
    for r in prange(z.shape[0]):
        _dense_epilogue_row(z, bias, r, act)


@njit
def _dense_param_grads(dkernel, dbias, dz, x, wmode):
    """dkernel (wmode) x.T @ dz, dbias (wmode) the column sums of dz:
    wmode 1 overwrite, 2 accumulate."""
    if wmode == 1:
        np.dot(x.T, dz, dkernel)
        dbias[:] = 0
    else:
        dkernel += np.dot(x.T, dz)
    if dbias.shape[0] > 0:
        for r in range(dz.shape[0]):  # row-major walk: contiguous reads of dz
            row = dz[r]
            for j in range(row.shape[0]):
                dbias[j] += row[j]


@njit
def _dense_input_grad(dx, dz, kernel, mode):
    if mode == 1:
        np.dot(dz, kernel.T, dx)
    elif mode == 2:
        dx += np.dot(dz, kernel.T)


@njit
def _dense_backward_serial(dx, dkernel, dbias, dz, y, x, kernel, act, mode, wmode):
    if act != 0:
        for r in range(dz.shape[0]):
            _activation_backward_row(dz, dz, y, r, act, 1)
    _dense_param_grads(dkernel, dbias, dz, x, wmode)
    _dense_input_grad(dx, dz, kernel, mode)


@njit(parallel=True)
def _dense_backward_parallel(dx, dkernel, dbias, dz, y, x, kernel, act, mode, wmode):
    if act != 0:
        for r in prange(dz.shape[0]):
            _activation_backward_row(dz, dz, y, r, act, 1)
    _dense_param_grads(dkernel, dbias, dz, x, wmode)
    _dense_input_grad(dx, dz, kernel, mode)


def dense_forward(z, x, kernel, bias, act):
    """z = act(x @ kernel + bias).

    z      (n, o)  output
    x      (n, i)  input
    kernel (i, o)
    bias   (o,) or (0,) when use_bias=False
    act    activation code (0 linear)
    """
    if act == 0 or z.size < _ACTIVATION_PARALLEL_MIN:
        _dense_forward_serial(z, x, kernel, bias, act)
    else:
        _dense_forward_parallel(z, x, kernel, bias, act)


def dense_backward(dx, dkernel, dbias, dz, y, x, kernel, act, mode, wmode):
    """Gradients of y = act(x @ kernel + bias).

    dx      (n, i)  input gradient: mode 0 skip, 1 overwrite, 2 accumulate;
                    may be (0, 0) when mode == 0
    dkernel (i, o)  x.T @ dz: wmode 1 overwrite, 2 accumulate
    dbias   (o,)    sum over rows of dz (wmode); (0,) when use_bias=False
    dz      (n, o)  in: d loss / d y; out: d loss / d (x @ kernel + bias)
    y       (n, o)  forward output
    x       (n, i)  forward input
    kernel  (i, o)
    """
    if act == 0 or y.size < _ACTIVATION_PARALLEL_MIN:
        _dense_backward_serial(dx, dkernel, dbias, dz, y, x, kernel, act, mode, wmode)
    else:
        _dense_backward_parallel(dx, dkernel, dbias, dz, y, x, kernel, act, mode, wmode)
