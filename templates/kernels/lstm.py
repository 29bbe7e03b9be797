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
# U 128: 1.9 -> 1.5 ms). For float32 and up to 512 gate columns that
# product runs on panels.py's kernel, by panels over the threads
# (lstm_passes.py, _lstm_grad_range), else on BLAS. In the blocks
# schedule, up to _LSTM_BLOCK_GRADS_MAX_OUTPUT values of dw, each block
# instead sums its rows' share step by step as its dz_t appear.
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
def _lstm_cells_forward(b0, b1, t, k, y, zs, xh, ho, cp, tc, hc, cc, act, ract, return_sequences):
    """Step t of rows b0:b1, once zs[b, t] holds their pre-activations: the
    cells, and h_t into y with return_sequences.

    zs (B, T, G)     [b, t] in: pre-activations; out: gate values [i f g o]
    hc, cc (B, U)    [b] in: h_{t-1}, c_{t-1}; out: h_t, c_t
    xh (B, ., W)     cache, [b, k, ho:ho + U]: h_{t-1} (k is t, or 0 for scratch)
    cp (B, ., U)     cache, [b, k]: c_{t-1}
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
                xh[b, k, ho + u] = hc[b, u]
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
            _lstm_cell_forward_general(zs[b, t], hc[b], cc[b], xh[b, k, ho:ho + U], cp[b, k], tc[b, k],
                                       act, ract)
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


# The backward cells store dh (as they read it), dz and dc (as they write
# them) as zero below _lstm_grad_floor: 2**-63 in float32, the square root
# of the smallest normal number, so the product of two values at or above
# it is normal. Through a long sequence the gradients shrink step after
# step, and on Intel cores each operation on a subnormal number, or one
# whose result is subnormal, takes a microcode assist. Flushing only the
# subnormal values (the floor at the smallest normal number) still left
# ~25% of the sweep model's dzs (T 400, U 32, B 256) between it and
# 2**-100, and their products with weights and inputs below 1, in dh = dz @
# rkernel.T and in the weight gradients, fell below it: a training step
# took 144 ms against 68 ms with this floor (same data, alternating, the
# same weights after 20 steps), where T 100 took ~15. XLA (Keras on JAX)
# flushes subnormal numbers everywhere; Keras on torch keeps them. A
# gradient below 2**-63 (1e-19) changes no float32 weight a step can
# move. float64: 2**-511 by the same rule.
_LSTM_GRAD_FLOOR32 = np.float32(2.0 ** -63)
_LSTM_GRAD_FLOOR64 = np.float64(2.0 ** -511)
# Indexed through the whole arrays: a row view a step would count references
# on counters the threads share.


@njit(inline="always")
def _lstm_grad_floor(a):
    """The gradients' floor for a's dtype (above): the square root of the
    smallest normal number."""
    return a.dtype.type(_LSTM_GRAD_FLOOR32) if a.itemsize == 4 else a.dtype.type(_LSTM_GRAD_FLOOR64)


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
    G = dzs.shape[2]
    floor = _lstm_grad_floor(dzs)  # see above
    zero = dzs.dtype.type(0.0)
    for b in range(b0, b1):
        for u in range(U):  # dz_{t+1} @ rkernel.T, the product's
            dh[b, u] = zero if abs(dh[b, u]) < floor else dh[b, u]
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
        for j in range(G):
            dzs[b, t, j] = zero if abs(dzs[b, t, j]) < floor else dzs[b, t, j]
        for u in range(U):
            dc[b, u] = zero if abs(dc[b, u]) < floor else dc[b, u]


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
