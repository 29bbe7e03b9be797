# --------------------------------------------------------------- losses
# Per-sample losses exactly as Keras 3 (torch backend), probabilities in,
# no from_logits.  y (n, c) prediction, t (n, c) target (or (n,) int ids
# for the sparse loss), out (n,) per-sample loss.
# Probabilities are clipped to [eps, 1 - eps] with eps = 1e-7, both bounds
# converted to the array dtype (float32: hi = 1 - 1.19e-7).  The clip's
# gradient is 1 where eps <= p <= 1 - eps (inclusive, like torch.clamp)
# and 0 outside.
# <loss>_backward(dy, y, t, scale) overwrites dy with
# scale * d(sum over samples of the per-sample loss)/dy; the caller passes
# scale = loss_weight / n for the gradient of the weighted batch mean.
# Serial: O(n c) work next to the O(n c i) product that made y.

_LOSSES_EPSILON = 1e-7


@njit
def binary_crossentropy_forward(out, y, t):
    """out[k] = mean_j -(t log p + (1 - t) log(1 - p)), p = clip(y).

    out (n,)  y (n, c)  t (n, c)
    """
    n, c = y.shape
    one = y.dtype.type(1.0)
    zero = y.dtype.type(0.0)
    lo = y.dtype.type(_LOSSES_EPSILON)
    hi = y.dtype.type(1.0 - _LOSSES_EPSILON)
    fc = y.dtype.type(c)
    for k in range(n):
        s = zero
        for j in range(c):
            p = min(max(y[k, j], lo), hi)
            # torch's element formula: log1p(-p), not log(1 - p)
            s += (t[k, j] - one) * math.log1p(-p) - t[k, j] * math.log(p)
        out[k] = s / fc


@njit
def binary_crossentropy_backward(dy, y, t, scale):
    """dy = scale * (p - t) / (p (1 - p)) / c inside the clip range, else 0.

    dy (n, c)  y (n, c)  t (n, c)
    """
    n, c = y.shape
    one = y.dtype.type(1.0)
    zero = y.dtype.type(0.0)
    lo = y.dtype.type(_LOSSES_EPSILON)
    hi = y.dtype.type(1.0 - _LOSSES_EPSILON)
    sc = y.dtype.type(scale) / y.dtype.type(c)
    for k in range(n):
        for j in range(c):
            p = y[k, j]
            if p >= lo and p <= hi:
                dy[k, j] = sc * (p - t[k, j]) / (p * (one - p))
            else:
                dy[k, j] = zero


@njit
def categorical_crossentropy_forward(out, y, t):
    """out[k] = -sum_j t log clip(p), p = y / sum_j y.

    out (n,)  y (n, c)  t (n, c)
    """
    n, c = y.shape
    zero = y.dtype.type(0.0)
    lo = y.dtype.type(_LOSSES_EPSILON)
    hi = y.dtype.type(1.0 - _LOSSES_EPSILON)
    for k in range(n):
        s = zero
        for j in range(c):
            s += y[k, j]
        acc = zero
        for j in range(c):
            p = min(max(y[k, j] / s, lo), hi)
            # a zero target adds exactly 0 unless p is NaN: skip its log
            # (one-hot targets: one log per row instead of c)
            if t[k, j] != zero or p != p:
                acc -= t[k, j] * math.log(p)
        out[k] = acc


@njit
def categorical_crossentropy_backward(dy, y, t, scale):
    """Gradient through clip(y / sum(y)).

    With g_j = dL/dp_j = -t_j / p_j (0 where p_j is clipped) and
    p = y / s:  dL/dy_j = (g_j - sum_k g_k p_k) / s.
    dy (n, c)  y (n, c)  t (n, c)
    """
    n, c = y.shape
    one = y.dtype.type(1.0)
    zero = y.dtype.type(0.0)
    lo = y.dtype.type(_LOSSES_EPSILON)
    hi = y.dtype.type(1.0 - _LOSSES_EPSILON)
    sc = y.dtype.type(scale)
    for k in range(n):
        s = zero
        for j in range(c):
            s += y[k, j]
        # first pass: g_j into dy, and sum_k g_k p_k
        gp = zero
        for j in range(c):
            p = y[k, j] / s
            if p >= lo and p <= hi:
                g = -t[k, j] / p
                gp += g * p
            else:
                g = zero
            dy[k, j] = g
        f = sc / s
        for j in range(c):
            dy[k, j] = f * (dy[k, j] - gp)


@njit
def sparse_categorical_crossentropy_forward(out, y, t):
    """out[k] = -log clip(y[k, t[k]] / sum_j y[k, j]).

    out (n,)  y (n, c)  t (n,) int class ids in [0, c)
    """
    n, c = y.shape
    zero = y.dtype.type(0.0)
    lo = y.dtype.type(_LOSSES_EPSILON)
    hi = y.dtype.type(1.0 - _LOSSES_EPSILON)
    for k in range(n):
        s = zero
        for j in range(c):
            s += y[k, j]
        p = min(max(y[k, t[k]] / s, lo), hi)
        out[k] = -math.log(p)


@njit
def sparse_categorical_crossentropy_backward(dy, y, t, scale):
    """categorical_crossentropy_backward with a one-hot t.

    Only g_t = -1 / p_t is non-zero, so dL/dy_j = (g_t [j == t] + 1) / s
    when p_t is inside the clip range, else 0.
    dy (n, c)  y (n, c)  t (n,) int class ids
    """
    n, c = y.shape
    one = y.dtype.type(1.0)
    zero = y.dtype.type(0.0)
    lo = y.dtype.type(_LOSSES_EPSILON)
    hi = y.dtype.type(1.0 - _LOSSES_EPSILON)
    sc = y.dtype.type(scale)
    for k in range(n):
        s = zero
        for j in range(c):
            s += y[k, j]
        tk = t[k]
        p = y[k, tk] / s
        if p >= lo and p <= hi:
            f = sc / s
            for j in range(c):
                dy[k, j] = f
            dy[k, tk] = f * (one - one / p)
        else:
            for j in range(c):
                dy[k, j] = zero


@njit
def mean_squared_error_forward(out, y, t):
    """out[k] = mean_j (t - y)^2.

    out (n,)  y (n, c)  t (n, c)
    """
    n, c = y.shape
    zero = y.dtype.type(0.0)
    fc = y.dtype.type(c)
    for k in range(n):
        s = zero
        for j in range(c):
            d = t[k, j] - y[k, j]
            s += d * d
        out[k] = s / fc


@njit
def mean_squared_error_backward(dy, y, t, scale):
    """dy = scale * 2 (y - t) / c.

    dy (n, c)  y (n, c)  t (n, c)
    """
    n, c = y.shape
    f = y.dtype.type(2.0 * scale) / y.dtype.type(c)
    for k in range(n):
        for j in range(c):
            dy[k, j] = f * (y[k, j] - t[k, j])
