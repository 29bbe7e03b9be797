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


@njit
def _lstm_act(v, code, one):
    """act(v) for codes 0-3, in v's dtype (one = dtype(1))."""
    if code == 2:
        return one / (one + math.exp(-v))
    if code == 3:
        return math.tanh(v)
    if code == 1:
        return v if v > 0 else one - one  # one - one: a zero of v's dtype
    return v


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


@njit(parallel=True)
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
    one = x.dtype.type(1.0)
    has_bias = bias.shape[0] > 0

    # time-major copy, then the input projection of every step in one GEMM:
    # zs (T*B, G) = xt (T*B, I) @ kernel (I, G)
    for b in prange(B):
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
        z_t = zs[t]
        c_prev = cs[t]
        c_t = cs[t + 1]
        h_t = hs[t + 1]
        tc_t = tc[t]
        for b in prange(B):
            for u in range(U):
                zi = z_t[b, u] + rec[b, u]
                zf = z_t[b, U + u] + rec[b, U + u]
                zg = z_t[b, 2 * U + u] + rec[b, 2 * U + u]
                zo = z_t[b, 3 * U + u] + rec[b, 3 * U + u]
                if has_bias:
                    zi += bias[u]
                    zf += bias[U + u]
                    zg += bias[2 * U + u]
                    zo += bias[3 * U + u]
                ig = _lstm_act(zi, ract, one)
                fg = _lstm_act(zf, ract, one)
                gg = _lstm_act(zg, act, one)
                og = _lstm_act(zo, ract, one)
                c = fg * c_prev[b, u] + ig * gg
                a = _lstm_act(c, act, one)
                # keep the activated gates: the backward needs only these
                z_t[b, u] = ig
                z_t[b, U + u] = fg
                z_t[b, 2 * U + u] = gg
                z_t[b, 3 * U + u] = og
                c_t[b, u] = c
                tc_t[b, u] = a
                h_t[b, u] = og * a

    if return_sequences:
        for b in prange(B):
            for t in range(T):
                for u in range(U):
                    y[b, t, u] = hs[t + 1, b, u]
    else:
        for b in prange(B):
            for u in range(U):
                y[b, 0, u] = hs[T, b, u]


@njit(parallel=True)
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
    dxt      (T, B, I)    scratch: time-major dx (unused when mode == 0)
    dy       (B, T, U) if return_sequences else (B, 1, U)
    xt, zs, hs, cs, tc    caches written by lstm_forward
    kernel   (I, G)
    rkernel  (U, G)
    """
    T, B, I = xt.shape
    U = rkernel.shape[0]
    G = 4 * U
    one = xt.dtype.type(1.0)

    dh[:] = 0
    dc[:] = 0
    for t in range(T - 1, -1, -1):
        z_t = zs[t]
        dz_t = dzs[t]
        c_prev = cs[t]
        tc_t = tc[t]
        # dy feeds h_t: every step with return_sequences, else only the last
        take_dy = return_sequences or t == T - 1
        ty = t if return_sequences else 0
        for b in prange(B):
            for u in range(U):
                gh = dh[b, u]
                if take_dy:
                    gh += dy[b, ty, u]
                ig = z_t[b, u]
                fg = z_t[b, U + u]
                gg = z_t[b, 2 * U + u]
                og = z_t[b, 3 * U + u]
                a = tc_t[b, u]
                # h = o * act(c): dc gets the path through act(c) plus the
                # carry from step t+1
                gc = dc[b, u] + gh * og * _lstm_deriv(a, act, one)
                dz_t[b, u] = gc * gg * _lstm_deriv(ig, ract, one)
                dz_t[b, U + u] = gc * c_prev[b, u] * _lstm_deriv(fg, ract, one)
                dz_t[b, 2 * U + u] = gc * ig * _lstm_deriv(gg, act, one)
                dz_t[b, 3 * U + u] = gh * a * _lstm_deriv(og, ract, one)
                dc[b, u] = gc * fg
        if t > 0:
            # dh_{t-1} = dz_t @ rkernel.T (rkernel.T is a no-copy F view)
            np.dot(dz_t, rkernel.T, dh)

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
        if mode == 1:
            for b in prange(B):
                for t in range(T):
                    for k in range(I):
                        dx[b, t, k] = dxt[t, b, k]
        else:
            for b in prange(B):
                for t in range(T):
                    for k in range(I):
                        dx[b, t, k] += dxt[t, b, k]
