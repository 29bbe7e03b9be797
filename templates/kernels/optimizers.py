# ----------------------------------------------------------- optimizers
# Keras 3 update rules, written in the operation order of Keras's torch
# backend (torch._foreach_* in backend/torch/optimizers/) so float32 results
# round the same way.  w, g and the state arrays are flat 1-D views of the
# whole parameter buffer; a state array a configuration does not use may be
# passed with shape (0,).  Scalars are cast to w's dtype first so float32
# models compute in float32.  Every element is independent, but a parallel
# region costs more than it saves below about a million parameters (mlp's
# 55k: 41 us serial, 210 us on two threads), so each rule is a serial span
# and the entry point (plain Python, so that a small model never compiles the
# parallel kernel) splits the buffer into chunks only when it is big.

_OPTIMIZER_PARALLEL_MIN = 1 << 20  # parameters
_OPTIMIZER_CHUNK = 1 << 16

# Optimizer state below the smallest normal number is stored as zero, as XLA
# (Keras on JAX) flushes it (prelude: _normal_floor). A weight whose gradient
# stays zero (a dead ReLU) decays its state by rho every step until it
# sticks at a subnormal value (4 * 2**-149 * 0.9 rounds back to itself), and
# on Intel cores an arithmetic operation on a subnormal takes a microcode
# assist of ~100 cycles: mlp's update then cost ~3x as much, for good. The weights do not
# see it: a subnormal v, or sqrt(v), added to epsilon rounds to epsilon, and
# a subnormal momentum changes no weight larger than ~1e-30 (SGD, RMSprop) or
# ~1e-23 (Adam, epsilon 1e-7). Keras on torch keeps the subnormal state.
# With epsilon 0 nothing is flushed: 0 / sqrt(0) would be NaN.


@njit(inline="always")
def _state_floor(w, epsilon):
    """The smallest normal number of w's dtype, or 0 (flush nothing) when epsilon is 0."""
    if epsilon == 0.0:
        return w.dtype.type(0.0)
    return _normal_floor(w)


# A span works on slices with range(n) loops: numba vectorizes those and not
# range(lo, hi) loops (RMSprop over 55k parameters: 8 us against 109 us).


@njit
def _sgd_span(lo, hi, w, g, m, lr_, mu, momentum, nesterov, tiny):
    w, g, m = w[lo:hi], g[lo:hi], m[lo:hi]
    zero = w.dtype.type(0.0)
    if momentum == 0.0:
        for k in range(w.shape[0]):
            w[k] = w[k] - lr_ * g[k]
    elif nesterov:
        for k in range(w.shape[0]):
            mk = m[k] * mu - lr_ * g[k]
            mk = zero if abs(mk) < tiny else mk
            m[k] = mk
            w[k] = (w[k] - lr_ * g[k]) + mu * mk
    else:
        for k in range(w.shape[0]):
            mk = m[k] * mu - lr_ * g[k]
            mk = zero if abs(mk) < tiny else mk
            m[k] = mk
            w[k] = w[k] + mk


@njit
def _sgd_args(w, lr, momentum):
    dt = w.dtype.type
    return dt(lr), dt(momentum), _normal_floor(w)  # no epsilon: always flushed


@njit
def _sgd_serial(w, g, m, lr, momentum, nesterov):
    lr_, mu, tiny = _sgd_args(w, lr, momentum)
    _sgd_span(np.int64(0), w.shape[0], w, g, m, lr_, mu, momentum, nesterov, tiny)


@njit(parallel=True)
def _sgd_parallel(w, g, m, lr, momentum, nesterov):
    lr_, mu, tiny = _sgd_args(w, lr, momentum)
    P = w.shape[0]
    for c in prange((P + _OPTIMIZER_CHUNK - 1) // _OPTIMIZER_CHUNK):
        _sgd_span(c * _OPTIMIZER_CHUNK, min(P, (c + 1) * _OPTIMIZER_CHUNK), w, g, m, lr_, mu,
                  momentum, nesterov, tiny)


def sgd_update(w, g, m, lr, momentum, nesterov):
    """SGD.

      momentum == 0:  w -= lr g
      else:           m = momentum m - lr g;  w += m
      nesterov:       w += momentum m - lr g   (with the updated m)

    w (P,)  g (P,)  m (P,) momentum buffer, (0,) when momentum == 0
    """
    big = w.shape[0] >= _OPTIMIZER_PARALLEL_MIN
    (_sgd_parallel if big else _sgd_serial)(w, g, m, lr, momentum, nesterov)


@njit
def _rmsprop_span(lo, hi, w, g, v, m, mg, lr_, rho_, one_m_rho, eps, mu, use_m, centered, tiny):
    w, g, v, m, mg = w[lo:hi], g[lo:hi], v[lo:hi], m[lo:hi], mg[lo:hi]
    zero = w.dtype.type(0.0)
    for k in range(w.shape[0]):
        gk = g[k]
        vk = v[k] * rho_ + (gk * gk) * one_m_rho
        vk = zero if vk < tiny else vk
        v[k] = vk
        den = vk + eps
        if centered:
            mgk = mg[k] * rho_ + gk * one_m_rho
            mgk = zero if abs(mgk) < tiny else mgk
            mg[k] = mgk
            den = den - mgk * mgk
        inc = (gk * lr_) / math.sqrt(den)
        if use_m:
            mk = m[k] * mu + inc
            mk = zero if abs(mk) < tiny else mk
            m[k] = mk
            w[k] = w[k] - mk
        else:
            w[k] = w[k] - inc


@njit
def _rmsprop_args(w, lr, rho, momentum, epsilon, centered):
    dt = w.dtype.type
    return (dt(lr), dt(rho), dt(1.0 - rho), dt(epsilon), dt(momentum), momentum > 0.0, centered,
            _state_floor(w, epsilon))


@njit
def _rmsprop_serial(w, g, v, m, mg, lr, rho, momentum, epsilon, centered):
    _rmsprop_span(np.int64(0), w.shape[0], w, g, v, m, mg, *_rmsprop_args(w, lr, rho, momentum, epsilon, centered))


@njit(parallel=True)
def _rmsprop_parallel(w, g, v, m, mg, lr, rho, momentum, epsilon, centered):
    args = _rmsprop_args(w, lr, rho, momentum, epsilon, centered)
    P = w.shape[0]
    for c in prange((P + _OPTIMIZER_CHUNK - 1) // _OPTIMIZER_CHUNK):
        _rmsprop_span(c * _OPTIMIZER_CHUNK, min(P, (c + 1) * _OPTIMIZER_CHUNK), w, g, v, m, mg, *args)


def rmsprop_update(w, g, v, m, mg, lr, rho, momentum, epsilon, centered):
    """RMSprop (epsilon inside the square root).

      v  = rho v + (1 - rho) g^2
      mg = rho mg + (1 - rho) g                   (centered)
      inc = lr g / sqrt(v + eps [- mg^2])
      w -= inc,  or with momentum: m = momentum m + inc; w -= m

    w (P,)  g (P,)  v (P,)  m (P,) or (0,)  mg (P,) or (0,)
    """
    big = w.shape[0] >= _OPTIMIZER_PARALLEL_MIN
    (_rmsprop_parallel if big else _rmsprop_serial)(w, g, v, m, mg, lr, rho, momentum, epsilon, centered)


@njit
def _adam_span(lo, hi, w, g, m, v, vhat, b1, b2, one_m_b1, one_m_b2, eps, alpha, tiny, amsgrad):
    w, g, m, v, vhat = w[lo:hi], g[lo:hi], m[lo:hi], v[lo:hi], vhat[lo:hi]
    zero = w.dtype.type(0.0)
    for k in range(w.shape[0]):
        gk = g[k]
        mk = m[k] * b1 + gk * one_m_b1
        mk = zero if abs(mk) < tiny else mk
        m[k] = mk
        vk = v[k] * b2 + (gk * gk) * one_m_b2
        vk = zero if vk < tiny else vk
        v[k] = vk
        if amsgrad:
            if vk > vhat[k]:
                vhat[k] = vk
            vk = vhat[k]
        w[k] = w[k] - (mk * alpha) / (math.sqrt(vk) + eps)


@njit
def _adam_args(w, lr, beta_1, beta_2, epsilon, t):
    dt = w.dtype.type
    one = dt(1.0)
    b1 = dt(beta_1)
    b2 = dt(beta_2)
    step = dt(t)
    # bias correction in the array dtype, as Keras computes it
    alpha = dt(lr) * math.sqrt(one - b2 ** step) / (one - b1 ** step)
    return b1, b2, dt(1.0 - beta_1), dt(1.0 - beta_2), dt(epsilon), alpha, _state_floor(w, epsilon)


@njit
def _adam_serial(w, g, m, v, vhat, lr, beta_1, beta_2, epsilon, amsgrad, t):
    _adam_span(np.int64(0), w.shape[0], w, g, m, v, vhat, *_adam_args(w, lr, beta_1, beta_2, epsilon, t), amsgrad)


@njit(parallel=True)
def _adam_parallel(w, g, m, v, vhat, lr, beta_1, beta_2, epsilon, amsgrad, t):
    args = _adam_args(w, lr, beta_1, beta_2, epsilon, t)
    P = w.shape[0]
    for c in prange((P + _OPTIMIZER_CHUNK - 1) // _OPTIMIZER_CHUNK):
        _adam_span(c * _OPTIMIZER_CHUNK, min(P, (c + 1) * _OPTIMIZER_CHUNK), w, g, m, v, vhat, *args, amsgrad)


def adam_update(w, g, m, v, vhat, lr, beta_1, beta_2, epsilon, amsgrad, t):
    """Adam (epsilon outside the uncorrected square root).

      m = beta_1 m + (1 - beta_1) g
      v = beta_2 v + (1 - beta_2) g^2
      vhat = max(vhat, v)                           (amsgrad; used for v)
      alpha = lr sqrt(1 - beta_2^t) / (1 - beta_1^t)
      w -= alpha m / (sqrt(v) + eps)

    w (P,)  g (P,)  m (P,)  v (P,)  vhat (P,) or (0,);  t = iteration + 1
    """
    big = w.shape[0] >= _OPTIMIZER_PARALLEL_MIN
    (_adam_parallel if big else _adam_serial)(w, g, m, v, vhat, lr, beta_1, beta_2, epsilon, amsgrad, t)



# Owned-rows steps (dense.py): the update split by the same parts. spans
# (S, 3) int64 rows (lo, hi, part) cover the flat buffer; part p's thread
# updates its spans, part 0 also every value no part owns. The same
# operations per value: the same bits as the serial update.


@njit(parallel=True)
def _sgd_owned(w, g, m, lr, momentum, nesterov, spans, parts):
    lr_, mu, tiny = _sgd_args(w, lr, momentum)
    for p in prange(parts):
        for s in range(spans.shape[0]):
            if spans[s, 2] == p:
                _sgd_span(spans[s, 0], spans[s, 1], w, g, m, lr_, mu, momentum, nesterov, tiny)


@njit(parallel=True)
def _rmsprop_owned(w, g, v, m, mg, lr, rho, momentum, epsilon, centered, spans, parts):
    args = _rmsprop_args(w, lr, rho, momentum, epsilon, centered)
    for p in prange(parts):
        for s in range(spans.shape[0]):
            if spans[s, 2] == p:
                _rmsprop_span(spans[s, 0], spans[s, 1], w, g, v, m, mg, *args)


@njit(parallel=True)
def _adam_owned(w, g, m, v, vhat, lr, beta_1, beta_2, epsilon, amsgrad, t, spans, parts):
    args = _adam_args(w, lr, beta_1, beta_2, epsilon, t)
    for p in prange(parts):
        for s in range(spans.shape[0]):
            if spans[s, 2] == p:
                _adam_span(spans[s, 0], spans[s, 1], w, g, m, v, vhat, *args, amsgrad)

# Row-sparse updates of an embedding table: only the rows a batch used. Exact
# where Keras's update of a zero-gradient row leaves the weight unchanged:
# SGD without momentum, and RMSprop without momentum or centering, whose
# accumulator v still decays by rho every step; `last[r]` counts the steps
# whose decay row r's v already has, and the missing ones are applied as
# rho**k when the row is next used (or flushed).


# Distinct rows write disjoint memory, so from _OPTIMIZER_PARALLEL_MIN values
# the rows split into a range a thread (_in_ranges; twitter.py's
# RMSprop over the ~2,700 rows of 512 a batch of 32 uses: 1.35 -> 0.93 ms a
# step inside fit; ~9,000 rows at batch 256: 4.7 -> 3.0 ms). Below, a
# hand-off costs more than it saves. The same operations per row: the same
# bits.


@njit(nogil=True)
def _sgd_rows(k0, k1, w, g, rows, gathered, lr):
    """w (V, D) -= lr * gradient on rows[k0:k1] (distinct) only.
    gathered False: row r's gradient is g[r] (g (V, D)), and it is zeroed
    while in cache, so the next backward pass adds into a zero gradient
    without a separate pass to clear it. gathered True: the gradient of
    rows[k] is g[k] (g (n, D), a kernel's scratch, left as it is)."""
    lr_ = w.dtype.type(lr)
    zero = w.dtype.type(0.0)
    for k in range(k0, k1):
        r = rows[k]
        wr = w[r]
        if gathered:
            gr = g[k]
            for j in range(wr.shape[0]):
                wr[j] = wr[j] - lr_ * gr[j]
        else:
            gr = g[r]
            for j in range(wr.shape[0]):
                wr[j] = wr[j] - lr_ * gr[j]
                gr[j] = zero


def sgd_update_rows(w, g, rows, gathered, lr):
    """w (V, D) -= lr * gradient on the given (distinct) rows only; see
    _sgd_rows. rows (n,) int64."""
    n = rows.shape[0]
    _in_ranges(_sgd_rows, _range_threads(n * w.shape[1], _OPTIMIZER_PARALLEL_MIN), n, w, g, rows, gathered, lr)


@njit(nogil=True)
def _rmsprop_rows(k0, k1, w, g, v, last, rows, gathered, step, lr, rho, epsilon):
    """RMSprop (momentum 0, not centered) on rows[k0:k1] (distinct) of w
    and v (V, D); g and gathered as in _sgd_rows; last (V,) int64;
    step = iterations before this update."""
    dt = w.dtype.type
    lr_, rho_, one_m_rho, eps = dt(lr), dt(rho), dt(1.0 - rho), dt(epsilon)
    zero = dt(0.0)
    tiny = _state_floor(w, epsilon)
    for k in range(k0, k1):
        r = rows[k]
        decay = rho_ ** dt(step - last[r])
        last[r] = step + 1
        wr, vr = w[r], v[r]
        gr = g[k] if gathered else g[r]
        for j in range(wr.shape[0]):
            gk = gr[j]
            vk = (vr[j] * decay) * rho_ + (gk * gk) * one_m_rho
            vk = zero if vk < tiny else vk
            vr[j] = vk
            wr[j] = wr[j] - (gk * lr_) / math.sqrt(vk + eps)
        if not gathered:
            for j in range(gr.shape[0]):
                gr[j] = zero


def rmsprop_update_rows(w, g, v, last, rows, gathered, step, lr, rho, epsilon):
    """RMSprop on the given (distinct) rows; see _rmsprop_rows."""
    n = rows.shape[0]
    _in_ranges(_rmsprop_rows, _range_threads(n * w.shape[1], _OPTIMIZER_PARALLEL_MIN), n, w, g, v, last, rows,
               gathered, step, lr, rho, epsilon)


@njit
def rmsprop_flush_rows(v, last, step, rho, epsilon):
    """Bring every row's v up to `step` (before state is saved or read)."""
    rho_ = v.dtype.type(rho)
    zero = v.dtype.type(0.0)
    tiny = _state_floor(v, epsilon)
    for r in range(v.shape[0]):
        if last[r] != step:
            decay = rho_ ** v.dtype.type(step - last[r])
            for j in range(v.shape[1]):
                vk = v[r, j] * decay
                v[r, j] = zero if vk < tiny else vk
            last[r] = step
