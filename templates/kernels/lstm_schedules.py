# ------------------------------------------------------- lstm schedules
# The recurrence's three schedules (see lstm): rows and steps here, blocks
# in lstm_blocks; and the weight transposes they read.


@njit
def _lstm_add_recurrent(b0, b1, t, zs, rec, bias):
    """zs[b, t] += rec[b] + bias for rows b0:b1, once rec (B, G) holds their
    h_{t-1} @ rkernel (the steps and blocks schedules); bias (G,) or (0,)."""
    G = zs.shape[2]
    for b in range(b0, b1):
        if bias.shape[0] > 0:
            for j in range(G):
                zs[b, t, j] += rec[b, j] + bias[j]
        else:
            for j in range(G):
                zs[b, t, j] += rec[b, j]


@njit
def _lstm_rows_forward(b0, b1, y, zs, xh, ho, cp, tc, hc, cc, rkt, bias,
                       act, ract, return_sequences):
    """All T steps of rows b0..b1-1, two rows at a time, h @ rkernel inline
    through rkt = rkernel.T (G, U) (the rows schedule)."""
    T = zs.shape[1]
    U = rkt.shape[1]
    G = 4 * U
    zero = zs.dtype.type(0.0)
    keep = xh.shape[1] == T  # caches for the backward pass, else (B, 1, .) scratch
    for b in range(b0, b1, 2):
        rows = 2 if b + 1 < b1 else 1
        for r in range(b, b + rows):
            for u in range(U):
                hc[r, u] = zero
                cc[r, u] = zero
        for t in range(T):
            if bias.shape[0] > 0:
                for r in range(b, b + rows):
                    for j in range(G):
                        zs[r, t, j] += bias[j]
            _lstm_pair_gates(zs, t, hc, b, b + rows - 1, rkt)
            _lstm_cells_forward(b, b + rows, t, t if keep else 0, y, zs, xh, ho, cp, tc, hc, cc, act, ract,
                                return_sequences)
        if not return_sequences:
            for r in range(b, b + rows):
                for u in range(U):
                    y[r, 0, u] = hc[r, u]


@njit(parallel=True)
def _lstm_rows_forward_parallel(y, zs, xh, ho, cp, tc, hc, cc, rkt, bias,
                                act, ract, return_sequences):
    """_lstm_rows_forward with pairs of rows in parallel (numba gives each
    thread one contiguous block of pairs)."""
    B = zs.shape[0]
    for p in prange((B + 1) // 2):
        _lstm_rows_forward(2 * p, min(B, 2 * p + 2), y, zs, xh, ho, cp, tc, hc, cc, rkt, bias,
                           act, ract, return_sequences)


@njit
def _lstm_rows_backward(b0, b1, dzs, dh, dc, da, dy, zs, cp, tc, rkernel, act, ract,
                        return_sequences):
    """Backpropagation through time for rows b0..b1-1, two rows at a time
    (the rows schedule); dh_{t-1} = dz_t @ rkernel.T inline."""
    T = zs.shape[1]
    U = dh.shape[1]
    zero = zs.dtype.type(0.0)
    for b in range(b0, b1, 2):
        rows = 2 if b + 1 < b1 else 1
        for r in range(b, b + rows):
            for u in range(U):
                dh[r, u] = zero
                dc[r, u] = zero
        for t in range(T - 1, -1, -1):
            _lstm_cells_backward(b, b + rows, t, dzs, dh, dc, da, dy, zs, cp, tc, act, ract, return_sequences)
            if t > 0:
                _lstm_pair_dh(dh, b, b + rows - 1, dzs, t, rkernel)


@njit(parallel=True)
def _lstm_rows_backward_parallel(dzs, dh, dc, da, dy, zs, cp, tc, rkernel, act,
                                 ract, return_sequences):
    """_lstm_rows_backward with pairs of rows in parallel."""
    B = zs.shape[0]
    for p in prange((B + 1) // 2):
        _lstm_rows_backward(2 * p, min(B, 2 * p + 2), dzs, dh, dc, da, dy, zs, cp, tc, rkernel,
                            act, ract, return_sequences)


@njit
def _lstm_transpose(dst, src):
    """dst (N, M) = src (M, N).T, 16 rows of src at a time: dst's rows take
    runs of 16 (contiguous stores). For a step's (G, B) product; weights
    take _lstm_transpose_weights."""
    M, N = src.shape
    m16 = M - M % 16
    for i0 in range(0, m16, 16):
        for j in range(N):
            for k in range(16):
                dst[j, i0 + k] = src[i0 + k, j]
    for i in range(m16, M):
        for j in range(N):
            dst[j, i] = src[i, j]


@njit
def _lstm_transpose_weights(dst, src):
    """dst (N, M) = src (M, N).T for a (U, 4U) weight, 8 rows of src at a
    time. Its rows lie 16 U bytes apart, a multiple of 4 KB from 256 units,
    so all the rows read at once fall in one set of the 8-way L1: 16 of them
    evict each other, 8 fit. rkernel.T at U 512 858 -> 359 us, U 256 219 ->
    82 us, U 128 21 -> 19 us; a step's (G, B) product, 32 bytes a row, is
    faster 16 rows at a time (U 512, B 32: 27 against 35 us). Two functions,
    not one taking the strip's height: a height known only at run time
    keeps the inner loop rolled (3x slower)."""
    M, N = src.shape
    m8 = M - M % 8
    for i0 in range(0, m8, 8):
        for j in range(N):
            for k in range(8):
                dst[j, i0 + k] = src[i0 + k, j]
    for i in range(m8, M):
        for j in range(N):
            dst[j, i] = src[i, j]


@njit
def _lstm_steps_forward(y, zs, xh, ho, cp, tc, hc, cc, rec, rect, rkernel, rkt, bias,
                        act, ract, return_sequences):
    """The recurrence, steps schedule: one BLAS product per step. With rect
    (G, B) scratch (not (0, 0)) each product is taken transposed, rkt @ hc.T
    with rkt = rkernel.T, and transposed back into rec."""
    B, T = zs.shape[0], zs.shape[1]
    keep = xh.shape[1] == T  # caches for the backward pass, else (B, 1, .) scratch
    transposed = rect.shape[0] > 0
    hc[:] = 0
    cc[:] = 0
    for t in range(T):
        if transposed:
            np.dot(rkt, hc.T, rect)
            _lstm_transpose(rec, rect)
        else:
            np.dot(hc, rkernel, rec)
        _lstm_add_recurrent(np.int64(0), B, t, zs, rec, bias)
        _lstm_cells_forward(np.int64(0), B, t, t if keep else 0, y, zs, xh, ho, cp, tc, hc, cc, act, ract, return_sequences)
    if not return_sequences:
        for b in range(B):
            for u in range(hc.shape[1]):
                y[b, 0, u] = hc[b, u]


@njit
def _lstm_steps_backward(dzs, dh, dc, da, dzt, dht, dy, zs, cp, tc, rkernel,
                         act, ract, return_sequences):
    """The backward recurrence, steps schedule: fills dzs. dht (U, B):
    dh_{t-1} transposed, as rkernel @ dz_t.T (see
    _LSTM_STEPS_TRANSPOSED_MIN_UNITS); (0, 0): dz_t @ rkernel.T."""
    B, T, G = zs.shape
    U = rkernel.shape[0]
    transposed = dht.shape[0] > 0
    dh[:] = 0
    dc[:] = 0
    for t in range(T - 1, -1, -1):
        _lstm_cells_backward(np.int64(0), B, t, dzs, dh, dc, da, dy, zs, cp, tc, act, ract, return_sequences)
        if t == 0:
            break
        for b in range(B):
            for j in range(G):
                dzt[b, j] = dzs[b, t, j]
        if transposed:
            # dzt.T is a no-copy F view: OpenBLAS reads it transposed as
            # fast as a (G, B) copy (U 128, B 32: 16.7 against 16.6 us),
            # and the copy, 16 rows at a time, cost 4.7 us a step. Without
            # it the backward recurrence measured U 128: T 100 4.72 -> 4.38
            # ms, B 8 T 25 0.208 -> 0.178; U 512, T 25 6.90 -> 6.65 (same
            # bits)
            np.dot(rkernel, dzt.T, dht)
            for b in range(B):
                for u in range(U):
                    dh[b, u] = dht[u, b]
        else:
            # dh_{t-1} = dz_t @ rkernel.T (rkernel.T is a no-copy F view)
            np.dot(dzt, rkernel.T, dh)
