# ----------------------------------------------------------------- lstm
# Keras LSTM, zero initial state, gate order [i f c o] along the 4U axis:
#   z_t = x_t @ kernel + h_{t-1} @ rkernel + bias
#   i = ract(z_i)  f = ract(z_f)  g = act(z_c)  o = ract(z_o)
#   c_t = f * c_{t-1} + i * g      h_t = o * act(c_t)
# Shapes: B batch, T steps, I input features, U units, G = 4U.
# Layout: every cache is batch-major (B, T, .) like x, so the input
# projection and the weight gradients are single (B*T, .) matrix products
# with no transposed copy. The cache xh holds the row [x_t | h_{t-1} | 1]
# for (b, t): z_t is that row times [kernel; rkernel; bias], so all three
# weight gradients are one product, xh.T @ dz, into the layer's gradients
# [dkernel; drkernel; dbias], adjacent in Keras's weight order. It reads
# the (B*T, 4U) gate gradients once where two products and a column sum
# read them three times (B 256, T 25, U 32: 580 -> 390 us; B 32, T 100,
# U 128: 1.9 -> 1.5 ms).
# The recurrence is independent per batch row. Three schedules:
#   blocks: each thread's block of rows runs all T steps on its own, with
#         packed products (float32, U a multiple of 16, from 2 rows: see
#         _lstm_blocks); taken first where it applies.
#   steps: each step is one (B, U) @ (U, 4U) BLAS product over the whole
#         batch, then the cells of every row, serially.
#   rows:  each row runs all T steps on its own, h @ rkernel inline (rkernel
#         stays in cache), two rows in step so they share each weight they
#         read; one parallel region over the pairs for the whole sequence,
#         so there is no thread hand-off per step. Where blocks do not
#         apply (float64, U not a multiple of 16, one row).
# lower.py allows rows up to LSTM_ROWS_MAX_UNITS units (per_step False):
# above, the inline products cost more than BLAS's. The backward pass then
# always takes rows; the forward pass takes rows only for big batches
# (B T 4U >= _LSTM_ROWS_FORWARD_MIN), where walking the batch-major caches
# one step at a time falls out of cache (B 256, T 100, U 32: 5.1 ms rows,
# 8.4 ms steps; B 32: 1.1 ms rows, 0.8 ms steps).
# act / ract codes: 0 linear, 1 relu, 2 sigmoid, 3 tanh.  Derivatives are
# taken from the cached outputs (gate values and tc = act(c)).
# float32 gates use Eigen's rational tanh (_activation_tanh32, |error| <
# 4e-7, what XLA runs for Keras on JAX) and sigmoid(v) = (1 + tanh(v / 2))
# / 2: plain arithmetic that vectorizes, where libm's exp is a scalar call
# per value (measured 0.19 against 2.3 ns per value).  float64 keeps libm
# accuracy (_activation_tanh).

_LSTM_PARALLEL_MIN = 1 << 17  # B * T * G gate values below which rows run serially
_LSTM_ROWS_FORWARD_MIN = 1 << 19  # B * T * G from which the forward pass takes rows
# Below this many flops the input projection of a narrow layer's big batch
# (_lstm_rows_forward_taken) runs on one BLAS thread (_blas_one_thread): a
# rows region started right after a two-thread product loses the ~0.4 ms
# OpenBLAS's second thread then spins. B 256, T 25, I 32, U 32 (52 Mflop):
# projection 140 -> 265 us, rows region 1.19-1.21 -> 0.88-0.92 ms. Above ~120
# Mflop the projection would lose more. Such a batch now mostly takes two
# blocks, where one or two projection threads measured the same (T 25 and
# 100, U 32, B 256: within 2%).
_LSTM_SERIAL_PROJECTION_MAX = 1 << 26
# from these units, up to this batch, the backward steps take dh_{t-1}.T =
# rkernel @ dz_t.T: OpenBLAS runs (U, 4U) x (4U, B) faster than
# (B, 4U) x (4U, U) for wide layers and small batches (a step with both
# transposes, U 512: B 8 244 -> 140 us, B 32 423 -> 282 us, B 64 564 -> 520
# us, but B 128 972 -> 1585 us; U 256, B 32: 117 -> 91 us; U 128 gains
# since the product reads dz_t through a transposed view, with no copy).
_LSTM_STEPS_TRANSPOSED_MIN_UNITS = 128
_LSTM_STEPS_TRANSPOSED_MAX_BATCH = 48
# The forward steps take h_{t-1} @ rkernel as (rkt @ h_{t-1}.T).T from 128
# units, for batches of 2 to 48: rkt = rkernel.T is copied once a call, each
# step's product transposed back (_lstm_transpose: 15 us at U 512, B 32).
# A training step of the sweep model at B 32, old and new alternating in one
# process: U 512 T 25 24.8 -> 22.7 ms, T 100 89.0 -> 78.5 ms; U 128 T 25
# and T 100 -5% and -4%; U 256 and U 512 at B 8 -7%. It was slower at B 1
# (a vector product, +20%), at U 32 (+14%) and from B 64 (B 256 +2-6%); at
# U 64 it measured -7% and +2%. The same bits (weights after the steps).
_LSTM_FORWARD_TRANSPOSED_MIN_UNITS = 128


@njit
def _lstm_act(a, code):
    """a = act(a) in place (a 1-D slice of a row); the code and dtype
    branches sit outside the loops so each loop is a plain element-wise pass.
    Callers pass slices, so loops run from 0: numba vectorizes range(n)
    loops, not range(j0, j1) ones (measured 13x on a sqrt-and-divide loop),
    and no literal bound (0) makes numba compile a second copy (see
    activation.py)."""
    one = a.dtype.type(1.0)
    half = a.dtype.type(0.5)
    fast = a.itemsize == 4  # float32: the vectorizing rational forms
    if code == 2:
        if fast:
            for j in range(a.shape[0]):
                a[j] = half + half * _activation_tanh32(half * a[j])
        else:
            for j in range(a.shape[0]):
                a[j] = one / (one + math.exp(-a[j]))
    elif code == 3:
        if fast:
            for j in range(a.shape[0]):
                a[j] = _activation_tanh32(a[j])
        else:
            for j in range(a.shape[0]):
                a[j] = _activation_tanh(a[j], one)
    elif code == 1:
        for j in range(a.shape[0]):
            a[j] = a[j] if a[j] > 0 else one - one


# Reassociation lets LLVM vectorize the dot products (4x faster than the
# axpy form at 32 units); the sums round differently from a sequential loop,
# as BLAS's do. Two rows of the batch share each weight they read (a
# row-step at 32 units: 262 -> 175 ns forward, 141 -> 113 ns backward); a
# row without a partner goes with itself (both sums computed and stored,
# its own last), so every row rounds the same whatever its place in the
# batch.
# The cells of a step run for a range of rows in one call, and take whole
# arrays and row indices, never a row's view (zs[b, t], hc[b]): a numba
# kernel increments the reference count of every array it receives, and of
# the array behind every view it makes, and decrements it on return: an
# atomic operation on a counter that both threads of a pass share. With a
# call and six views per row and step, they were 13% of a one-thread
# blocks pass (perf), and the two threads slowed each other: U 32, T 25,
# 128 rows a thread, forward 265-286 -> 205-210 ns a row-step on one
# thread, and a two-thread pass over 256 rows 1.34-1.63 -> 0.78 ms (backward
# 0.88-1.01 -> 0.59 ms). The same operations in the same order: same bits.
@njit(fastmath={"reassoc", "contract"})
def _lstm_pair_gates(zs, t, hc, b, b2, rkt):
    """zs[r, t] += hc[r] @ rkt.T for the rows r = b and b2: the recurrent
    product of a pair of rows (rkt = rkernel.T, (G, U), the summed axis
    last). b2 == b for a row without a partner: row b's sum is stored last."""
    for i in range(rkt.shape[0]):
        sa = zs.dtype.type(0.0)
        sb = sa
        for k in range(rkt.shape[1]):
            w = rkt[i, k]
            sa += hc[b, k] * w
            sb += hc[b2, k] * w
        za, zb = zs[b, t, i], zs[b2, t, i]
        zs[b2, t, i] = zb + sb
        zs[b, t, i] = za + sa


@njit(fastmath={"reassoc", "contract"})
def _lstm_pair_dh(dh, b, b2, dzs, t, rkernel):
    """dh[r] = dzs[r, t] @ rkernel.T for the rows r = b and b2: dh_{t-1} of a
    pair of rows (rkernel (U, G), the summed axis last). b2 == b for a row
    without a partner: row b's sum is stored last."""
    for i in range(rkernel.shape[0]):
        sa = dh.dtype.type(0.0)
        sb = sa
        for k in range(rkernel.shape[1]):
            w = rkernel[i, k]
            sa += dzs[b, t, k] * w
            sb += dzs[b2, t, k] * w
        dh[b2, i] = sb
        dh[b, i] = sa


@njit
def _lstm_cells_forward(b0, b1, t, k, y, zs, hp, cp, tc, hc, cc, act, ract, return_sequences):
    """Step t of rows b0:b1, once zs[b, t] holds their pre-activations: the
    cells, and h_t into y with return_sequences.

    zs (B, T, G)     [b, t] in: pre-activations; out: gate values [i f g o]
    hc, cc (B, U)    [b] in: h_{t-1}, c_{t-1}; out: h_t, c_t
    hp, cp (B, ., U) cache, [b, k]: h_{t-1}, c_{t-1} (k is t, or 0 for scratch)
    tc (B, ., U)     cache, [b, k]: act(c_t)
    """
    U = hc.shape[1]
    for b in range(b0, b1):
        if _LSTM_TANH_SIGMOID_ONLY or (act == 3 and ract == 2):
            # Keras's default (tanh, sigmoid): three passes over the units
            # instead of six (float32: 1.4-1.6x faster); each writes few
            # arrays, so LLVM's run-time overlap checks stay few enough to
            # vectorize. The same operations in the same order as
            # _lstm_cell_forward_general: same bits. A module whose LSTMs all
            # take this pair (_LSTM_TANH_SIGMOID_ONLY) never compiles that.
            if zs.itemsize == 4:
                half = zs.dtype.type(0.5)
                for u in range(U):
                    zs[b, t, u] = half + half * _activation_tanh32(half * zs[b, t, u])
                    zs[b, t, U + u] = half + half * _activation_tanh32(half * zs[b, t, U + u])
                    zs[b, t, 2 * U + u] = _activation_tanh32(zs[b, t, 2 * U + u])
                    zs[b, t, 3 * U + u] = half + half * _activation_tanh32(half * zs[b, t, 3 * U + u])
            else:
                one = zs.dtype.type(1.0)
                for u in range(U):
                    zs[b, t, u] = one / (one + math.exp(-zs[b, t, u]))
                    zs[b, t, U + u] = one / (one + math.exp(-zs[b, t, U + u]))
                    zs[b, t, 2 * U + u] = _activation_tanh(zs[b, t, 2 * U + u], one)
                    zs[b, t, 3 * U + u] = one / (one + math.exp(-zs[b, t, 3 * U + u]))
            for u in range(U):
                hp[b, k, u] = hc[b, u]
                cp[b, k, u] = cc[b, u]
            if zs.itemsize == 4:
                for u in range(U):
                    cn = zs[b, t, U + u] * cc[b, u] + zs[b, t, u] * zs[b, t, 2 * U + u]
                    cc[b, u] = cn
                    th = _activation_tanh32(cn)
                    tc[b, k, u] = th
                    hc[b, u] = zs[b, t, 3 * U + u] * th
            else:
                one = zs.dtype.type(1.0)
                for u in range(U):
                    cn = zs[b, t, U + u] * cc[b, u] + zs[b, t, u] * zs[b, t, 2 * U + u]
                    cc[b, u] = cn
                    th = _activation_tanh(cn, one)
                    tc[b, k, u] = th
                    hc[b, u] = zs[b, t, 3 * U + u] * th
        else:
            _lstm_cell_forward_general(zs[b, t], hc[b], cc[b], hp[b, k], cp[b, k], tc[b, k], act, ract)
        if return_sequences:
            for u in range(U):
                y[b, t, u] = hc[b, u]


@njit
def _lstm_cell_forward_general(z, h, c, hp, cp, a, act, ract):
    """One row of one step for any activations, over the row's views: z (G,)
    in: pre-activations, out: gate values; h, c (U,) in: h_{t-1}, c_{t-1},
    out: h_t, c_t; hp, cp (U,) cache: h_{t-1}, c_{t-1}; a (U,): act(c_t)."""
    U = h.shape[0]
    _lstm_act(z[:2 * U], ract)          # i, f
    _lstm_act(z[2 * U:3 * U], act)      # g
    _lstm_act(z[3 * U:], ract)          # o
    for u in range(U):
        hp[u] = h[u]
        cp[u] = c[u]
        cn = z[U + u] * c[u] + z[u] * z[2 * U + u]
        c[u] = cn
        a[u] = cn
    _lstm_act(a, act)
    for u in range(U):
        h[u] = z[3 * U + u] * a[u]


@njit
def _lstm_deriv_segment(d, y, code):
    """d[j] = act'(z_j) from the outputs y[j] = act(z_j) (slices, as for
    _lstm_act); code branch outside the loops, so each one vectorizes."""
    one = y.dtype.type(1.0)
    zero = y.dtype.type(0.0)
    if code == 2:
        for j in range(d.shape[0]):
            d[j] = y[j] * (one - y[j])
    elif code == 3:
        for j in range(d.shape[0]):
            d[j] = one - y[j] * y[j]
    elif code == 1:
        for j in range(d.shape[0]):
            d[j] = one if y[j] > 0 else zero
    else:
        for j in range(d.shape[0]):
            d[j] = one


@njit
def _lstm_cells_backward(b0, b1, t, dzs, dh, dc, da, dy, zs, cp, tc, act, ract, return_sequences):
    """Step t of rows b0:b1 of backpropagation through time: dy into dh_t
    (every step with return_sequences, else only the last), then the cells.

    dzs (B, T, G)  [b, t] out: gradient w.r.t. the gate pre-activations
    dh (B, U)      [b] in: dL/dh_t carried from t+1
    dc (B, U)      [b] in: dL/dc_t carried from t+1; out: dL/dc_{t-1}
    da (B, U)      scratch
    zs (B, T, G) gate values   cp (B, T, U) c_{t-1}   tc (B, T, U) act(c_t)
    """
    U = dh.shape[1]
    for b in range(b0, b1):
        if return_sequences:
            for u in range(U):
                dh[b, u] += dy[b, t, u]
        elif t == zs.shape[1] - 1:
            for u in range(U):
                dh[b, u] += dy[b, 0, u]
        if _LSTM_TANH_SIGMOID_ONLY or (act == 3 and ract == 2):
            # Keras's default (tanh, sigmoid): one pass over the units, each
            # derivative inline (2.2x faster than the general passes; the
            # same operations in the same order: same bits)
            one = zs.dtype.type(1.0)
            for u in range(U):
                i = zs[b, t, u]
                f = zs[b, t, U + u]
                g = zs[b, t, 2 * U + u]
                o = zs[b, t, 3 * U + u]
                au = tc[b, t, u]
                ghu = dh[b, u]
                gg = dc[b, u] + ghu * o * (one - au * au)
                dzs[b, t, u] = i * (one - i) * (gg * g)
                dzs[b, t, U + u] = f * (one - f) * (gg * cp[b, t, u])
                dzs[b, t, 2 * U + u] = (one - g * g) * (gg * i)
                dzs[b, t, 3 * U + u] = o * (one - o) * (ghu * au)
                dc[b, u] = gg * f
        else:
            _lstm_cell_backward_general(dzs[b, t], dh[b], dc[b], da[b], zs[b, t], cp[b, t], tc[b, t], act, ract)


@njit
def _lstm_cell_backward_general(dz, gh, gc, da, z, cp, a, act, ract):
    """One row of one step backward for any activations, over the row's
    views: dz (G,) out; gh (U,) dL/dh_t; gc (U,) in: dL/dc_t, out:
    dL/dc_{t-1}; da (U,) scratch; z (G,) gate values, cp (U,) c_{t-1}, a
    (U,) act(c_t)."""
    U = gh.shape[0]
    # the activations' derivatives first, each segment a plain loop
    _lstm_deriv_segment(dz[:2 * U], z[:2 * U], ract)
    _lstm_deriv_segment(dz[2 * U:3 * U], z[2 * U:3 * U], act)
    _lstm_deriv_segment(dz[3 * U:], z[3 * U:], ract)
    _lstm_deriv_segment(da, a, act)
    for u in range(U):
        # h = o * act(c): dc is the path through act(c) plus the carry
        g = gc[u] + gh[u] * z[3 * U + u] * da[u]
        dz[u] *= g * z[2 * U + u]
        dz[U + u] *= g * cp[u]
        dz[2 * U + u] *= g * z[u]
        dz[3 * U + u] *= gh[u] * a[u]
        gc[u] = g * z[U + u]


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
def _lstm_rows_forward(b0, b1, y, zs, hp, cp, tc, hc, cc, rkt, bias,
                       act, ract, return_sequences):
    """All T steps of rows b0..b1-1, two rows at a time, h @ rkernel inline
    through rkt = rkernel.T (G, U) (the rows schedule)."""
    T = zs.shape[1]
    U = rkt.shape[1]
    G = 4 * U
    zero = zs.dtype.type(0.0)
    keep = hp.shape[1] == T  # caches for the backward pass, else (B, 1, U) scratch
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
            _lstm_cells_forward(b, b + rows, t, t if keep else 0, y, zs, hp, cp, tc, hc, cc, act, ract,
                                return_sequences)
        if not return_sequences:
            for r in range(b, b + rows):
                for u in range(U):
                    y[r, 0, u] = hc[r, u]


@njit(parallel=True)
def _lstm_rows_forward_parallel(y, zs, hp, cp, tc, hc, cc, rkt, bias,
                                act, ract, return_sequences):
    """_lstm_rows_forward with pairs of rows in parallel (numba gives each
    thread one contiguous block of pairs)."""
    B = zs.shape[0]
    for p in prange((B + 1) // 2):
        _lstm_rows_forward(2 * p, min(B, 2 * p + 2), y, zs, hp, cp, tc, hc, cc, rkt, bias,
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


# The blocks schedule (float32, U a multiple of 16; _lstm_blocks): each
# thread takes a block of rows that runs all T steps on its own (the
# recurrence is independent per row), so no thread waits for another within
# the sequence (_in_ranges, prelude). A step's product of the block's h_{t-1}
# with rkernel (dz_t with rkernel.T backward) reads the weights as 16-column
# panels packed once a pass, (N / 16, K, 16), where OpenBLAS packs them
# again at every step, and keeps 8 rows x 16 lanes of accumulators in
# registers over all K (panels.py: an FMA a lane, summed in k order). On
# this 2-core Zen 4 one thread's packed product runs at ~115 GFLOP/s,
# OpenBLAS's at 55-120 for these shapes. A training step of the sweep model
# (benchmarks/sweep.py), the old schedules and the blocks one alternating in
# one process: T 100 U 128 B 32 15.1 -> 10.2 ms, T 25 U 512 B 32 38.4 ->
# 30.5 ms, T 25 U 128 B 256 -23%, T 25 U 64 B 256 -20%. Since the cells
# run a block's rows in one call (above), it also wins in one block on this
# thread from 2 rows, narrow layers included (a step at T 25, the other
# schedule / one block / two blocks: U 32 B 32 0.99 / 0.54 / 0.90 ms; U 64 B 8
# 0.65 / 0.37 / 0.81; U 128 B 4 1.08 / 0.59; U 512 B 2 9.9 / 7.3), but not
# for one row, a vector product (U 512 B 1: 2.65 against 6.44 ms). Two
# blocks pay from about _LSTM_BLOCKS_MIN_WORK (U 16 B 256: 4.78 / 4.23 /
# 3.26 ms; U 32 B 64 at 2^24.1: 1.81 / 1.02 / 1.23; U 32 B 128 at 2^25.1:
# 4.75 / 3.78 / 2.70), counting a cell as _LSTM_CELL_MACS multiply-adds a
# unit (U 32: 73 ns a row-step for the product, ~130 for the cell).
_LSTM_BLOCK_MIN_ROWS = 8  # rows a block from which a wide layer's pass splits
_LSTM_NARROW_BLOCK_MIN_ROWS = 16  # the same for narrow layers (the rows schedule's)
_LSTM_CELL_MACS = 230  # a cell's cost a unit, in multiply-adds of the product
_LSTM_BLOCKS_MIN_WORK = 25 << 20  # B T U (4 U + _LSTM_CELL_MACS) from which a pass splits


@njit(nogil=True)
def _lstm_block_forward(b0, b1, y, zs, hp, cp, tc, hc, cc, rec, panels, bias,
                        act, ract, return_sequences):
    """All T steps of rows b0:b1 (the blocks schedule): each step one packed
    product of the block's h_{t-1} with rkernel, then the block's cells.
    panels (G / 16, U, 16) rkernel's; the other arrays as lstm_forward's."""
    T = zs.shape[1]
    keep = hp.shape[1] == T  # caches for the backward pass, else (B, 1, U) scratch
    # hb typed as a strided view, like the backward pass's dz_t
    # (dzs[b0:b1, t]): _panels_product then compiles once, not twice
    hb, rb = hc[b0:b1, :hc.shape[1]], rec[b0:b1]
    hc[b0:b1] = 0
    cc[b0:b1] = 0
    for t in range(T):
        _panels_product(rb, hb, panels)
        _lstm_add_recurrent(b0, b1, t, zs, rec, bias)
        _lstm_cells_forward(b0, b1, t, t if keep else 0, y, zs, hp, cp, tc, hc, cc, act, ract, return_sequences)
    if not return_sequences:
        for b in range(b0, b1):
            for u in range(hc.shape[1]):
                y[b, 0, u] = hc[b, u]


@njit(nogil=True)
def _lstm_block_backward(b0, b1, dzs, dh, dc, da, dy, zs, cp, tc, panels, act, ract,
                         return_sequences):
    """Backpropagation through time for rows b0:b1 (the blocks schedule):
    the block's cells, then dh_{t-1} = dz_t @ rkernel.T as one packed
    product that reads dz_t where the cells left it. panels (U / 16, G, 16)
    rkernel.T's; da (B, U) scratch; the other arrays as lstm_backward's."""
    dh[b0:b1] = 0
    dc[b0:b1] = 0
    for t in range(zs.shape[1] - 1, -1, -1):
        _lstm_cells_backward(b0, b1, t, dzs, dh, dc, da, dy, zs, cp, tc, act, ract, return_sequences)
        if t > 0:
            _panels_product(dh[b0:b1], dzs[b0:b1, t], panels)


@njit
def _lstm_pack_panels(panels, w):
    """panels (N / 16, K, 16)[p, k, l] = w (K, N)[k, 16 p + l]."""
    for p in range(panels.shape[0]):
        for k in range(panels.shape[1]):
            src, dst = w[k, 16 * p:16 * p + 16], panels[p, k]
            for j in range(16):
                dst[j] = src[j]


@njit
def _lstm_pack_panels_t(panels, w):
    """panels (M / 16, N, 16)[p, k, l] = w (M, N)[16 p + l, k]: the panels of
    w.T, each the transpose of 16 rows of w."""
    for p in range(panels.shape[0]):
        _lstm_transpose_weights(panels[p], w[16 * p:16 * p + 16])


@njit
def _lstm_steps_forward(y, zs, hp, cp, tc, hc, cc, rec, rect, rkernel, rkt, bias,
                        act, ract, return_sequences):
    """The recurrence, steps schedule: one BLAS product per step. With rect
    (G, B) scratch (not (0, 0)) each product is taken transposed, rkt @ hc.T
    with rkt = rkernel.T, and transposed back into rec."""
    B, T = zs.shape[0], zs.shape[1]
    keep = hp.shape[1] == T  # caches for the backward pass, else (B, 1, U) scratch
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
        _lstm_cells_forward(np.int64(0), B, t, t if keep else 0, y, zs, hp, cp, tc, hc, cc, act, ract, return_sequences)
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


# The entry points below are plain Python: each numba kernel they call is
# compiled on its own. A jitted entry point would re-optimize every kernel
# it calls (numba links and optimizes callees into their caller), which
# doubled the first-run compile time of twitter.py.

def _lstm_rows_forward_taken(B, T, G, per_step):
    return not per_step and B * T * G >= _LSTM_ROWS_FORWARD_MIN


def _lstm_blocks(B, T, U, dtype, per_step):
    """Blocks of rows (threads) of the blocks schedule for B rows, or 0 when
    it is not taken: float32, U a multiple of 16 and 2 rows or more only.
    One block (this thread) below _LSTM_BLOCKS_MIN_WORK, where the hand-off
    to another thread costs more than it saves; else a block a thread, of
    at least _LSTM_BLOCK_MIN_ROWS rows (_LSTM_NARROW_BLOCK_MIN_ROWS for the
    narrow layers of the rows schedule, not per_step)."""
    if dtype != np.float32 or U % 16 != 0 or B < 2:
        return 0
    if B * T * U * (4 * U + _LSTM_CELL_MACS) < _LSTM_BLOCKS_MIN_WORK:
        return 1
    rows = _LSTM_BLOCK_MIN_ROWS if per_step else _LSTM_NARROW_BLOCK_MIN_ROWS
    return max(1, min(numba.get_num_threads(), B // rows))


def _lstm_recurrence_forward(y, zs, hp, cp, tc, hc, cc, rec, rkt, rkernel, bias,
                             act, ract, return_sequences, per_step):
    """The recurrence of lstm_forward, once zs holds x @ kernel."""
    B, T, G = zs.shape
    U = rkernel.shape[0]
    Q = _lstm_blocks(B, T, U, zs.dtype, per_step) if rkt.shape[0] == G else 0
    if Q:
        panels = rkt.reshape((G // 16, U, 16))  # rkt's memory, free in this schedule
        _lstm_pack_panels(panels, rkernel)
        _in_ranges(_lstm_block_forward, Q, B, y, zs, hp, cp, tc, hc, cc, rec, panels, bias, act, ract,
                   return_sequences)
        return
    if not _lstm_rows_forward_taken(B, T, G, per_step):
        if (U >= _LSTM_FORWARD_TRANSPOSED_MIN_UNITS and 2 <= B <= _LSTM_STEPS_TRANSPOSED_MAX_BATCH
                and rkt.shape[0] == G):
            _lstm_transpose_weights(rkt, rkernel)
            rect = np.empty((G, B), zs.dtype)
        else:
            rect = np.empty((0, 0), zs.dtype)
        _lstm_steps_forward(y, zs, hp, cp, tc, hc, cc, rec, rect, rkernel, rkt, bias, act, ract, return_sequences)
        return
    _lstm_transpose_weights(rkt, rkernel)
    _lstm_rows_forward_parallel(y, zs, hp, cp, tc, hc, cc, rkt, bias, act, ract, return_sequences)


def _lstm_recurrence_backward(dzs, dh, dc, dzt, dy, zs, cp, tc, rkernel, rkt,
                              act, ract, return_sequences, per_step):
    """The recurrence of lstm_backward: fills dzs. rkt (G, U) scratch (the
    forward pass's), or (0, 0)."""
    B, T, G = zs.shape
    U = dh.shape[1]
    da = np.empty_like(dh)  # scratch: act'(c_t) of a row
    Q = _lstm_blocks(B, T, U, zs.dtype, per_step) if rkt.shape[0] == G else 0
    if Q:
        panels = rkt.reshape((U // 16, G, 16))
        _lstm_pack_panels_t(panels, rkernel)
        _in_ranges(_lstm_block_backward, Q, B, dzs, dh, dc, da, dy, zs, cp, tc, panels, act, ract,
                   return_sequences)
    elif per_step:
        transposed = U >= _LSTM_STEPS_TRANSPOSED_MIN_UNITS and B <= _LSTM_STEPS_TRANSPOSED_MAX_BATCH
        dht = np.empty((U, B) if transposed else (0, 0), dh.dtype)
        _lstm_steps_backward(dzs, dh, dc, da, dzt, dht, dy, zs, cp, tc, rkernel, act, ract, return_sequences)
    elif B > 1 and B * T * G >= _LSTM_PARALLEL_MIN:
        _lstm_rows_backward_parallel(dzs, dh, dc, da, dy, zs, cp, tc, rkernel, act, ract, return_sequences)
    else:
        _lstm_rows_backward(np.int64(0), B, dzs, dh, dc, da, dy, zs, cp, tc, rkernel, act, ract, return_sequences)


@njit
def _lstm_stage_inputs(xh, x, bias):
    """xh[:, :, :I] = x and, with a bias, the last column = 1: the parts of
    the rows [x_t | h_{t-1} | 1] the recurrence does not write."""
    B, T, I = x.shape
    W = xh.shape[2]
    one = xh.dtype.type(1.0)
    for b in range(B):
        for t in range(T):
            row = xh[b, t]
            src = x[b, t]
            for i in range(I):
                row[i] = src[i]
            if bias.shape[0] > 0:
                row[W - 1] = one


def _lstm_hp(xh, rkernel, bias):
    """The h_{t-1} columns of xh, a (B, T, U) view (or of its (B, 1, W) scratch)."""
    W, U = xh.shape[2], rkernel.shape[0]
    nb = 1 if bias.shape[0] > 0 else 0
    return xh[:, :, W - nb - U:W - nb]


@njit
def _lstm_weight_grads(dw, xh, dzs, wmode):
    """dw = (wmode 1) or += (wmode 2) xh.T @ dzs over all B*T rows: the
    gradients of the weights xh's columns multiply ([dkernel; drkernel;
    dbias] stacked, (W, G))."""
    B, T, G = dzs.shape
    W = xh.shape[2]
    xf = xh.reshape(B * T, W)
    dzf = dzs.reshape(B * T, G)
    if wmode == 1:
        np.dot(xf.T, dzf, dw)
    else:
        tmp = np.empty_like(dw)
        np.dot(xf.T, dzf, tmp)
        dw += tmp


@njit
def _lstm_project(zs, x, kernel):
    """zs (B*T, G) = x (B*T, I) @ kernel: the input projection of every step in one GEMM."""
    B, T, I = x.shape
    np.dot(x.reshape(B * T, I), kernel, zs.reshape(B * T, kernel.shape[1]))


@njit
def _lstm_input_grads(dx, dzs, kernel, mode):
    """dx = (mode 1) or += (mode 2) dzs @ kernel.T."""
    B, T, G = dzs.shape
    I = kernel.shape[0]
    dzf = dzs.reshape(B * T, G)
    if mode == 1:
        np.dot(dzf, kernel.T, dx.reshape(B * T, I))
    elif mode == 2:
        dxf = dx.reshape(B * T, I)
        tmp = np.empty_like(dxf)
        np.dot(dzf, kernel.T, tmp)
        dxf += tmp


def lstm_forward(y, zs, xh, cp, tc, hc, cc, rec, rkt, x, kernel, rkernel, bias,
                 act, ract, return_sequences, per_step):
    """Run the LSTM over the sequence, filling y and the backward caches.

    y       (B, T, U) if return_sequences else (B, 1, U) (the last h)
    zs      (B, T, G)  cache: gate values after their activations [i f g o]
    xh      (B, T, W)  cache: rows [x_t | h_{t-1} | 1], W = I + U + 1 (no
                       1 column without a bias); h_{-1} = 0
    cp      (B, T, U)  cache: c_{t-1} (cp[:, 0] = 0)
    tc      (B, T, U)  cache: act(c_t)
                       xh, cp, tc may be (B, 1, .) scratch when no backward
                       pass follows (predict: 3 B T U values less memory)
    hc, cc  (B, U)     scratch: the current h and c
    rec     (B, G)     scratch for the steps schedule: h_{t-1} @ rkernel
    rkt     (G, U)     scratch: rkernel.T, for the rows schedule and the
                       transposed steps (from _LSTM_FORWARD_TRANSPOSED_MIN_UNITS);
                       (0, 0) when per_step: the steps then take h @ rkernel
    x       (B, T, I)  input
    kernel  (I, G)     rkernel (U, G)     bias (G,) or (0,) when use_bias=False
    per_step           True: steps only; False: rows for big batches
    """
    B, T, I = x.shape
    G = kernel.shape[1]
    if _lstm_rows_forward_taken(B, T, G, per_step) and 2 * B * T * I * G < _LSTM_SERIAL_PROJECTION_MAX:
        _blas_one_thread(_lstm_project, zs, x, kernel)
    else:
        _lstm_project(zs, x, kernel)
    if xh.shape[1] == T:  # caches for a backward pass
        _lstm_stage_inputs(xh, x, bias)
    _lstm_recurrence_forward(y, zs, _lstm_hp(xh, rkernel, bias), cp, tc, hc, cc, rec, rkt,
                             rkernel, bias, act, ract, return_sequences, per_step)


def lstm_backward(dx, dw, dzs, dh, dc, dzt, dy, x, zs, xh, cp, tc, kernel, rkernel, rkt,
                  act, ract, return_sequences, per_step, mode, wmode):
    """Backpropagation through time for lstm_forward.

    dx       (B, T, I)    input gradient: mode 0 skip, 1 overwrite,
                          2 accumulate; may be empty when mode == 0
    dw       (W, G)       [dkernel (I, G); drkernel (U, G); dbias (1, G)]
                          = xh.T @ dzs (whole sequence), the layer's
                          gradients as one matrix: wmode 1 overwrite,
                          2 accumulate; no dbias row without a bias
    dzs      (B, T, G)    scratch: gradient w.r.t. the gate pre-activations
    dh, dc   (B, U)       scratch: gradients w.r.t. h_t and c_t carried back
    dzt      (B, G)       scratch for the steps schedule: one step of dzs
    dy       (B, T, U) if return_sequences else (B, 1, U)
    x, zs, xh, cp, tc     input and caches of lstm_forward
    kernel (I, G)   rkernel (U, G)
    rkt      (G, U)       scratch (lstm_forward's): rkernel.T's panels in the blocks schedule
    """
    _lstm_recurrence_backward(dzs, dh, dc, dzt, dy, zs, cp, tc, rkernel, rkt,
                              act, ract, return_sequences, per_step)
    _lstm_weight_grads(dw, xh, dzs, wmode)
    _lstm_input_grads(dx, dzs, kernel, mode)
