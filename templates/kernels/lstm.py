# ----------------------------------------------------------------- lstm
# Keras LSTM, zero initial state, gate order [i f c o] along the 4U axis:
#   z_t = x_t @ kernel + h_{t-1} @ rkernel + bias
#   i = ract(z_i)  f = ract(z_f)  g = act(z_c)  o = ract(z_o)
#   c_t = f * c_{t-1} + i * g      h_t = o * act(c_t)
# Shapes: B batch, T steps, I input features, U units, G = 4U.
# Layout: every cache is time-major, so one step's rows are a contiguous
# (B, .) block and whole-sequence work is a single (T*B, .) matrix product:
#   forward : x @ kernel for all steps at once; only h @ rkernel is per step
#   backward: dkernel, drkernel, dbias and dx are products over all of dzs;
#             only dh = dz_t @ rkernel.T is per step.
# act / ract codes: 0 linear, 1 relu, 2 sigmoid, 3 tanh.  Derivatives are
# taken from the cached outputs (gate values and tc = act(c)).
# Per step, batch rows are independent; they run as a prange only when a
# step has enough elements to pay for a parallel launch (two launches per
# step, each next to a BLAS call, which on a busy machine can stall).

_LSTM_PARALLEL_MIN = 1 << 14  # B * U below which a step runs serially


@njit
def _lstm_tanh(v, one):
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
def _lstm_deriv(y, code, one):
    """act'(z) from the output y = act(z), codes 0-3."""
    if code == 2:
        return y * (one - y)
    if code == 3:
        return one - y * y
    if code == 1:
        return one if y > 0 else one - one
    return one


@njit
def _lstm_act_segment(a, b, j0, j1, code):
    """a[b, j0:j1] = act(a[b, j0:j1]) in place; the code branch sits outside
    the loop so each loop is a plain element-wise pass."""
    one = a.dtype.type(1.0)
    if code == 2:
        for j in range(j0, j1):
            a[b, j] = one / (one + math.exp(-a[b, j]))
    elif code == 3:
        for j in range(j0, j1):
            a[b, j] = _lstm_tanh(a[b, j], one)
    elif code == 1:
        for j in range(j0, j1):
            if not a[b, j] > 0:
                a[b, j] = one - one


@njit
def _lstm_cell_forward(b, z_t, rec, bias, c_prev, c_t, h_t, tc_t, act, ract):
    """One batch row of one step.

    z_t (B, G) in: x_t @ kernel; out: activated gates [i f g o]
    rec (B, G) h_{t-1} @ rkernel      bias (G,) or (0,)
    c_prev, c_t, h_t, tc_t (B, U)
    """
    U = c_t.shape[1]
    G = 4 * U
    # gate pre-activations, then each gate's activation over its segment
    if bias.shape[0] > 0:
        for j in range(G):
            z_t[b, j] += rec[b, j] + bias[j]
    else:
        for j in range(G):
            z_t[b, j] += rec[b, j]
    _lstm_act_segment(z_t, b, 0, 2 * U, ract)      # i, f
    _lstm_act_segment(z_t, b, 2 * U, 3 * U, act)   # g
    _lstm_act_segment(z_t, b, 3 * U, G, ract)      # o
    for u in range(U):
        c = z_t[b, U + u] * c_prev[b, u] + z_t[b, u] * z_t[b, 2 * U + u]
        c_t[b, u] = c
        tc_t[b, u] = c
    _lstm_act_segment(tc_t, b, 0, U, act)
    for u in range(U):
        h_t[b, u] = z_t[b, 3 * U + u] * tc_t[b, u]


@njit
def _lstm_cell_backward(b, dz_t, dh, dc, dy, ty, take_dy, z_t, c_prev, tc_t,
                        act, ract):
    """One batch row of one step of backpropagation through time.

    dz_t (B, G) out: gradient w.r.t. the gate pre-activations
    dh   (B, U) in: dL/dh_t from step t+1 (dy is added here if take_dy)
    dc   (B, U) in: dL/dc_t from step t+1; out: dL/dc_{t-1}
    dy   (B, T or 1, U), ty: its time index
    z_t  (B, G) activated gates   c_prev (B, U) c_{t-1}   tc_t (B, U) act(c_t)
    """
    U = dh.shape[1]
    one = z_t.dtype.type(1.0)
    for u in range(U):
        gh = dh[b, u]
        if take_dy:
            gh += dy[b, ty, u]
        ig = z_t[b, u]
        fg = z_t[b, U + u]
        gg = z_t[b, 2 * U + u]
        og = z_t[b, 3 * U + u]
        a = tc_t[b, u]
        # h = o * act(c): dc is the path through act(c) plus the carry
        # from step t+1
        gc = dc[b, u] + gh * og * _lstm_deriv(a, act, one)
        dz_t[b, u] = gc * gg * _lstm_deriv(ig, ract, one)
        dz_t[b, U + u] = gc * c_prev[b, u] * _lstm_deriv(fg, ract, one)
        dz_t[b, 2 * U + u] = gc * ig * _lstm_deriv(gg, act, one)
        dz_t[b, 3 * U + u] = gh * a * _lstm_deriv(og, ract, one)
        dc[b, u] = gc * fg


@njit(parallel=True)
def _lstm_cells_forward_parallel(z_t, rec, bias, c_prev, c_t, h_t, tc_t,
                                 act, ract):
    """_lstm_cell_forward for every batch row, rows in parallel."""
    for b in prange(z_t.shape[0]):
        _lstm_cell_forward(b, z_t, rec, bias, c_prev, c_t, h_t, tc_t, act, ract)


@njit(parallel=True)
def _lstm_cells_backward_parallel(dz_t, dh, dc, dy, ty, take_dy, z_t, c_prev,
                                  tc_t, act, ract):
    """_lstm_cell_backward for every batch row, rows in parallel."""
    for b in prange(z_t.shape[0]):
        _lstm_cell_backward(b, dz_t, dh, dc, dy, ty, take_dy, z_t, c_prev,
                            tc_t, act, ract)


# The two entry points are serial functions: with parallel=True numba would
# also turn their slice assignments into (tiny) parallel regions.
@njit
def lstm_forward(y, xt, zs, hs, cs, tc, x, kernel, rkernel, bias,
                 act, ract, return_sequences):
    """Run the LSTM over the sequence, filling y and the backward caches.

    y       (B, T, U) if return_sequences else (B, 1, U) (the last h)
    xt      (T, B, I)    cache: time-major copy of x
    zs      (T, B, G)    cache: gate values after their activations [i f g o]
    hs      (T+1, B, U)  cache: hs[0] = 0, hs[t+1] = h_t
    cs      (T+1, B, U)  cache: cs[0] = 0, cs[t+1] = c_t
    tc      (T, B, U)    cache: act(c_t)
    x       (B, T, I)    input
    kernel  (I, G)
    rkernel (U, G)
    bias    (G,) or (0,) when use_bias=False
    """
    B, T, I = x.shape
    U = rkernel.shape[0]
    G = 4 * U
    parallel = B * U >= _LSTM_PARALLEL_MIN

    # time-major copy, then the input projection of every step in one GEMM:
    # zs (T*B, G) = xt (T*B, I) @ kernel (I, G)
    for b in range(B):  # explicit loops: numba's strided slice copy is slow
        for t in range(T):
            for k in range(I):
                xt[t, b, k] = x[b, t, k]
    np.dot(xt.reshape(T * B, I), kernel, zs.reshape(T * B, G))

    hs[0] = 0
    cs[0] = 0
    # The only per-step product, h_{t-1} @ rkernel, needs a (B, G) target
    # that does not overwrite zs[t]; the signature has no scratch for it, so
    # allocate it once here, outside the loop.
    rec = np.empty((B, G), dtype=x.dtype)
    for t in range(T):
        np.dot(hs[t], rkernel, rec)
        if parallel:
            _lstm_cells_forward_parallel(zs[t], rec, bias, cs[t], cs[t + 1],
                                         hs[t + 1], tc[t], act, ract)
        else:
            for b in range(B):
                _lstm_cell_forward(b, zs[t], rec, bias, cs[t], cs[t + 1],
                                   hs[t + 1], tc[t], act, ract)

    for b in range(B):
        if return_sequences:
            for t in range(T):
                for u in range(U):
                    y[b, t, u] = hs[t + 1, b, u]
        else:
            for u in range(U):
                y[b, 0, u] = hs[T, b, u]


@njit
def lstm_backward(dx, dkernel, drkernel, dbias, dzs, dh, dc, dxt,
                  dy, xt, zs, hs, cs, tc, kernel, rkernel,
                  act, ract, return_sequences, mode):
    """Backpropagation through time for lstm_forward.

    dx       (B, T, I)    input gradient: mode 0 skip, 1 overwrite,
                          2 accumulate; may be empty when mode == 0
    dkernel  (I, G)       += xt.T @ dzs           (whole sequence)
    drkernel (U, G)       += hs[:T].T @ dzs       (whole sequence)
    dbias    (G,)         += sum of dzs; (0,) when use_bias=False
    dzs      (T, B, G)    scratch: gradient w.r.t. the gate pre-activations
    dh       (B, U)       scratch: gradient w.r.t. h_t flowing back in time
    dc       (B, U)       scratch: gradient w.r.t. c_t flowing back in time
    dxt      (T, B, I)    scratch: time-major dx (may be empty when mode == 0)
    dy       (B, T, U) if return_sequences else (B, 1, U)
    xt, zs, hs, cs, tc    caches written by lstm_forward
    kernel   (I, G)
    rkernel  (U, G)
    """
    T, B, I = xt.shape
    U = rkernel.shape[0]
    G = 4 * U
    parallel = B * U >= _LSTM_PARALLEL_MIN

    dh[:] = 0
    dc[:] = 0
    for t in range(T - 1, -1, -1):
        # dy feeds h_t: every step with return_sequences, else only the last
        take_dy = return_sequences or t == T - 1
        ty = t if return_sequences else 0
        if parallel:
            _lstm_cells_backward_parallel(dzs[t], dh, dc, dy, ty, take_dy,
                                          zs[t], cs[t], tc[t], act, ract)
        else:
            for b in range(B):
                _lstm_cell_backward(b, dzs[t], dh, dc, dy, ty, take_dy,
                                    zs[t], cs[t], tc[t], act, ract)
        if t > 0:
            # dh_{t-1} = dz_t @ rkernel.T (rkernel.T is a no-copy F view)
            np.dot(dzs[t], rkernel.T, dh)

    # weight gradients: one GEMM each over all T*B rows
    dzf = dzs.reshape(T * B, G)
    dkernel += np.dot(xt.reshape(T * B, I).T, dzf)
    drkernel += np.dot(hs[:T].reshape(T * B, U).T, dzf)
    if dbias.shape[0] > 0:
        for r in range(T * B):
            for j in range(G):
                dbias[j] += dzf[r, j]

    if mode != 0:
        # dxt (T*B, I) = dzs (T*B, G) @ kernel.T, then back to batch-major
        np.dot(dzf, kernel.T, dxt.reshape(T * B, I))
        for b in range(B):
            for t in range(T):
                if mode == 1:
                    for k in range(I):
                        dx[b, t, k] = dxt[t, b, k]
                else:
                    for k in range(I):
                        dx[b, t, k] += dxt[t, b, k]
