# ----------------------------------------------------------- activation
# Codes: 0 linear, 1 relu, 2 sigmoid, 3 tanh, 4 softmax (over the last axis).
# The backward pass only needs the forward *output* y:
#   relu' = (y > 0), sigmoid' = y (1 - y), tanh' = 1 - y^2,
#   softmax: dz = y * (dy - sum(dy * y)).
# Constants are made with z.dtype.type(...) so float32 arrays are computed
# in float32 (a bare 1.0 literal would promote the arithmetic to float64).
# Rows are independent, so every loop is a prange over rows.


@njit
def _activation_apply(v, act, one):
    """act(v) for the element-wise codes 0-3, in v's dtype."""
    if act == 1:
        return v if v > 0 else one - one  # one - one: a zero of v's dtype
    if act == 2:
        return one / (one + math.exp(-v))
    if act == 3:
        return math.tanh(v)
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


@njit(parallel=True)
def activation_forward(y, z, act):
    """y = act(z).

    y (n, c)  output (may alias z)
    z (n, c)  pre-activation
    """
    n, c = z.shape
    one = z.dtype.type(1.0)
    zero = z.dtype.type(0.0)
    if act == 4:
        for r in prange(n):
            # subtract the row max so exp never overflows
            m = z[r, 0]
            for j in range(1, c):
                if z[r, j] > m:
                    m = z[r, j]
            s = zero
            for j in range(c):
                e = math.exp(z[r, j] - m)
                y[r, j] = e
                s += e
            inv = one / s
            for j in range(c):
                y[r, j] *= inv
    else:
        for r in prange(n):
            for j in range(c):
                y[r, j] = _activation_apply(z[r, j], act, one)


@njit(parallel=True)
def activation_backward(dz, dy, y, act, mode):
    """dz (mode) = dy * act'(z), computed from the output y.

    dz (n, c)  pre-activation gradient: mode 0 skip, 1 overwrite,
               2 accumulate; may alias dy when mode == 1
    dy (n, c)  output gradient
    y  (n, c)  forward output
    """
    if mode == 0:
        return
    n, c = y.shape
    one = y.dtype.type(1.0)
    zero = y.dtype.type(0.0)
    if act == 4:
        for r in prange(n):
            # softmax Jacobian-vector product: y * (dy - <dy, y>)
            s = zero
            for j in range(c):
                s += dy[r, j] * y[r, j]
            for j in range(c):
                g = y[r, j] * (dy[r, j] - s)
                if mode == 1:
                    dz[r, j] = g
                else:
                    dz[r, j] += g
    else:
        for r in prange(n):
            for j in range(c):
                g = dy[r, j] * _activation_deriv(y[r, j], act, one)
                if mode == 1:
                    dz[r, j] = g
                else:
                    dz[r, j] += g
