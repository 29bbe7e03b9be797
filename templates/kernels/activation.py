# ----------------------------------------------------------- activation
# Codes: 0 linear, 1 relu, 2 sigmoid, 3 tanh, 4 softmax (over the last axis).
# The backward pass only needs the forward *output* y:
#   relu' = (y > 0), sigmoid' = y (1 - y), tanh' = 1 - y^2,
#   softmax: dz = y * (dy - sum(dy * y)).
# Constants are made with z.dtype.type(...) so float32 arrays are computed
# in float32 (a bare 1.0 literal would promote the arithmetic to float64).
# Rows are independent; the row loop is a prange only for big arrays: a
# parallel launch costs microseconds, and next to multithreaded BLAS calls
# on a busy machine it can cost far more.

_ACTIVATION_PARALLEL_MIN = 1 << 15  # elements; below this, run serially


@njit
def _activation_tanh(v, one):
    """tanh(v) in v's dtype, as accurate as libm tanh and 1.3-2.7x faster.

    1 - exp(-2|v|) cancels near 0, so small |v| goes through expm1.
    """
    two = one + one
    a = abs(v)
    if a < 0.625:
        e = math.expm1(-two * a)
        r = -e / (e + two)
    else:
        e = math.exp(-two * a)
        r = (one - e) / (one + e)
    return r if v >= 0 else -r


@njit
def _activation_apply(v, act, one):
    """act(v) for the element-wise codes 0-3, in v's dtype."""
    if act == 1:
        return v if v > 0 else one - one  # one - one: a zero of v's dtype
    if act == 2:
        return one / (one + math.exp(-v))
    if act == 3:
        return _activation_tanh(v, one)
    return v


@njit
def _activation_deriv(y, act, one):
    """act'(z) expressed through the output y = act(z), codes 0-3."""
    if act == 1:
        return one if y > 0 else one - one
    if act == 2:
        return y * (one - y)
    if act == 3:
        return one - y * y
    return one


@njit
def _activation_forward_row(y, z, r, act):
    """Row r of activation_forward."""
    c = z.shape[1]
    one = z.dtype.type(1.0)
    if act == 4:
        # subtract the row max so exp never overflows
        m = z[r, 0]
        for j in range(1, c):
            if z[r, j] > m:
                m = z[r, j]
        s = one - one
        for j in range(c):
            e = math.exp(z[r, j] - m)
            y[r, j] = e
            s += e
        inv = one / s
        for j in range(c):
            y[r, j] *= inv
    else:
        for j in range(c):
            y[r, j] = _activation_apply(z[r, j], act, one)


@njit
def _activation_backward_row(dz, dy, y, r, act, mode):
    """Row r of activation_backward (mode 1 or 2)."""
    c = y.shape[1]
    one = y.dtype.type(1.0)
    if act == 4:
        # softmax Jacobian-vector product: y * (dy - <dy, y>); the dot is
        # taken before the row is written, so dz may alias dy
        s = one - one
        for j in range(c):
            s += dy[r, j] * y[r, j]
        for j in range(c):
            g = y[r, j] * (dy[r, j] - s)
            if mode == 1:
                dz[r, j] = g
            else:
                dz[r, j] += g
    else:
        for j in range(c):
            g = dy[r, j] * _activation_deriv(y[r, j], act, one)
            if mode == 1:
                dz[r, j] = g
            else:
                dz[r, j] += g


@njit
def _activation_forward_serial(y, z, act):
    for r in range(z.shape[0]):
        _activation_forward_row(y, z, r, act)


@njit(parallel=True)
def _activation_forward_parallel(y, z, act):
    for r in prange(z.shape[0]):
        _activation_forward_row(y, z, r, act)


@njit
def _activation_backward_serial(dz, dy, y, act, mode):
    for r in range(y.shape[0]):
        _activation_backward_row(dz, dy, y, r, act, mode)


@njit(parallel=True)
def _activation_backward_parallel(dz, dy, y, act, mode):
    for r in prange(y.shape[0]):
        _activation_backward_row(dz, dy, y, r, act, mode)


# The entry points choose serial or parallel in Python, so a model whose
# arrays are all small never compiles the parallel kernels (each costs
# about a second of numba compilation on the first run).

def activation_forward(y, z, act):
    """y = act(z).

    y (n, c)  output (may alias z)
    z (n, c)  pre-activation
    """
    if z.size < _ACTIVATION_PARALLEL_MIN:
        _activation_forward_serial(y, z, act)
    else:
        _activation_forward_parallel(y, z, act)


def activation_backward(dz, dy, y, act, mode):
    """dz (mode) = dy * act'(z), computed from the output y.

    dz (n, c)  pre-activation gradient: mode 0 skip, 1 overwrite,
               2 accumulate; may alias dy when mode == 1
    dy (n, c)  output gradient
    y  (n, c)  forward output
    """
    if mode == 0:
        return
    if y.size < _ACTIVATION_PARALLEL_MIN:
        _activation_backward_serial(dz, dy, y, act, mode)
    else:
        _activation_backward_parallel(dz, dy, y, act, mode)
