# ---------------------------------------------------------- lstm blocks
# The blocks schedule (float32, U a multiple of 16; _lstm_blocks): each
# thread takes a block of rows that runs all T steps on its own (the
# recurrence is independent per row), so no thread waits for another within
# the sequence (_in_ranges, prelude). A step's product of the block's h_{t-1}
# with rkernel (dz_t with rkernel.T backward) reads the weights as 16-column
# panels packed once a pass, (N / 16, K, 16), where OpenBLAS packs them
# again at every step, and keeps 8 rows x 2 panels of accumulators in
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
# Up to this many values of dw (W x G, W = I + U + 1) each block sums its
# share of the weight gradient step by step (_lstm_block_backward), with
# xh_t and dz_t in L1 and its sums in L2, where the product over all B T
# rows afterwards (_lstm_weight_grads) reads the caches from memory again.
# A training step of the sweep model (I 32), a prototype (every size) and
# the module alternating in one process, same losses, to place this cap:
# U 32 B 256 T 25 3.69 -> 3.08 ms, T 100 19.7 -> 16.2,
# T 400 70.0 -> 65.0; U 32 B 32 T 25 0.67 -> 0.55; U 64 (24.8k values) B 256
# T 25 10.0 -> 9.0, B 32 T 100 5.88 -> 5.45, B 32 T 25 2.16 against 2.19.
# U 128 (82k values: 330 KB of sums a block) B 32 T 25 lost (3.37 -> 3.82),
# and U 512 (1.1M) lost 18%.
_LSTM_BLOCK_GRADS_MAX_OUTPUT = 1 << 15


# Each step a block reads and writes one row of every cache for each of its
# rows: rows T G values apart, up to 5 arrays x 128 rows of a block, more
# streams than the prefetchers follow. Once the caches outgrow the L3 (U 32,
# B 256, T 400: ~170 MB) each such row waits on memory. So a block asks for
# the next step's rows one step ahead, into L2. Old and new alternating in
# one process, the same bits: the sweep model U 32 / B 256 at T 400 94.9 ->
# 83.7 ms a training step, T 100 23.8 -> 18.3, T 25 4.47 against 4.44; U 128
# / B 256 / T 25 23.7 -> 21.0; U 512 / B 32 / T 25 35.7 against 35.3;
# twitter.py at batch 32 12.0 -> 11.6, at 256 44.5 -> 41.1.
@intrinsic
def _lstm_prefetch_row(typingctx, arr, b, t, lo):
    """Prefetch arr[b, t, lo:] (3-D, its rows contiguous) into L2, a cache
    line at a time (LLVM's llvm.prefetch: a hint, never a fault)."""
    sig = types.void(arr, b, t, lo)

    def codegen(context, builder, signature, args):
        aty = signature.args[0]
        a = context.make_array(aty)(context, builder, args[0])
        i64, i32 = llvm_ir.IntType(64), llvm_ir.IntType(32)
        i8p = llvm_ir.IntType(8).as_pointer()
        fn = cgutils.get_or_insert_function(
            builder.module, llvm_ir.FunctionType(llvm_ir.VoidType(), [i8p, i32, i32, i32]), "llvm.prefetch.p0")
        hint = [llvm_ir.Constant(i32, 0), llvm_ir.Constant(i32, 2), llvm_ir.Constant(i32, 1)]  # read, L2, data
        zero = llvm_ir.Constant(i64, 0)
        lo = context.cast(builder, args[3], signature.args[3], types.intp)
        row = cgutils.get_item_pointer(context, builder, aty, a, [args[1], args[2], lo], wraparound=False)
        row = builder.bitcast(row, i8p)
        n = builder.mul(builder.sub(builder.extract_value(a.shape, 2), lo),
                        llvm_ir.Constant(i64, aty.dtype.bitwidth // 8))
        with cgutils.for_range_slice(builder, zero, n, llvm_ir.Constant(i64, 64)) as (off, _):
            builder.call(fn, [builder.gep(row, [off])] + hint)
        with builder.if_then(builder.icmp_signed(">", n, zero)):  # the row's last line, off a line's start
            builder.call(fn, [builder.gep(row, [builder.sub(n, llvm_ir.Constant(i64, 1))])] + hint)
        return context.get_dummy_value()
    return sig, codegen


@njit(nogil=True)
def _lstm_block_forward(b0, b1, y, zs, xh, ho, cp, tc, hc, cc, rec, panels, bias,
                        act, ract, return_sequences):
    """All T steps of rows b0:b1 (the blocks schedule): each step one packed
    product of the block's h_{t-1} with rkernel, then the block's cells.
    panels (G / 16, U, 16) rkernel's; the other arrays as lstm_forward's."""
    T = zs.shape[1]
    keep = xh.shape[1] == T  # caches for the backward pass, else (B, 1, .) scratch
    # hb typed as a strided view, like the backward pass's dz_t
    # (dzs[b0:b1, t]): _panels_product then compiles once, not twice
    hb, rb = hc[b0:b1, :hc.shape[1]], rec[b0:b1]
    hc[b0:b1] = 0
    cc[b0:b1] = 0
    for t in range(T):
        if t + 1 < T:  # the next step's rows, to L2 (_lstm_prefetch_row)
            for b in range(b0, b1):
                _lstm_prefetch_row(zs, b, t + 1, 0)
                if keep:
                    _lstm_prefetch_row(xh, b, t + 1, ho)
                    _lstm_prefetch_row(cp, b, t + 1, 0)
                    _lstm_prefetch_row(tc, b, t + 1, 0)
        _panels_product(rb, hb, panels)
        _lstm_add_recurrent(b0, b1, t, zs, rec, bias)
        _lstm_cells_forward(b0, b1, t, t if keep else 0, y, zs, xh, ho, cp, tc, hc, cc, act, ract, return_sequences)
    if not return_sequences:
        for b in range(b0, b1):
            for u in range(hc.shape[1]):
                y[b, 0, u] = hc[b, u]


# c += a.T @ w (panels.py): a block's share of the weight gradient, summed
# step by step (_lstm_block_backward). Pairs of panels only (4U columns, U
# a multiple of 16) and c's rows 8 or 1 at a time: each intrinsic is
# compiled into the block's kernel, and all of panels.py's forms cost
# twitter.py's first step 1.6 s more on a cold cache.
_panel_add_pair_t8 = _panel_rows_intrinsic(8, True, 2, accumulate=True)
_panel_add_pair_t1 = _panel_rows_intrinsic(1, True, 2, accumulate=True)


@njit
def _lstm_add_product_t(c, a, w):
    """c (K, N) += a.T @ w, a (M, K), w (M, N) with N a multiple of 32:
    rows of c 8 at a time, then one at a time, panels in pairs."""
    P = w.shape[1] // 16
    K = a.shape[1]
    r = np.int64(0)
    while r + 8 <= K:
        for p in range(0, P, 2):
            _panel_add_pair_t8(c, a, w, p, r)
        r += 8
    while r < K:
        for p in range(0, P, 2):
            _panel_add_pair_t1(c, a, w, p, r)
        r += 1


@njit
def _lstm_add_chunk(total, part, first):
    """total = (first) or += part, (W, G) each."""
    for i in range(total.shape[0]):
        src, dst = part[i], total[i]  # rows: loops from 0 vectorize
        if first:
            for j in range(dst.shape[0]):
                dst[j] = src[j]
        else:
            for j in range(dst.shape[0]):
                dst[j] += src[j]


# A gradient that vanished stays vanished: once dh_{t-1} of every row of a
# block is below the floor (the cells will store it as zero, lstm.py) and
# its dc_{t-1} is zero, and no dy enters before step 0 (not
# return_sequences), every earlier dz of those rows is zero, as the cells
# would compute it. The block then writes those zeros, if anything reads
# them, and stops: adding a zero product changes no sum, so the weight
# gradients keep their bits. A layer without an input gradient whose blocks
# sum the weight gradients reads no dzs afterwards (U 32 / B 256 / T 400:
# ~31 MB of zeros not written).
# Through long sequences gradients vanish this way: at T 400 (the sweep
# model, U 32, B 256) ~60% of dzs was below the floor, and a training step
# took 56.7 against 69.5 ms (U 128: B 256 463.7 -> 418.2, B 32 56.3 ->
# 50.9), the same weights after 20 steps; T 100 unchanged.


@njit
def _lstm_vanished(b0, b1, dh, dc):
    """Whether rows b0:b1 carry no gradient back any more: every dh below
    the cells' floor and every dc zero (above)."""
    floor = _lstm_grad_floor(dh)
    for b in range(b0, b1):
        for u in range(dh.shape[1]):
            if not (abs(dh[b, u]) < floor and dc[b, u] == 0):
                return False
    return True


@njit(nogil=True)
def _lstm_block_backward(b0, b1, dzs, dh, dc, da, dy, zs, cp, tc, panels, act, ract,
                         return_sequences, dwb, xh, fill):
    """Backpropagation through time for rows b0:b1 (the blocks schedule):
    the block's cells, then dh_{t-1} = dz_t @ rkernel.T as one packed
    product that reads dz_t where the cells left it. panels (U / 16, G, 16)
    rkernel.T's; da (B, U) scratch; the other arrays as lstm_backward's.
    dwb (2 Q, W, G), or (0, W, G) for none: the block's share of the weight
    gradient, xh[b0:b1].T @ dzs[b0:b1] over all steps, while xh_t and dz_t
    are in L1 (see _LSTM_BLOCK_GRADS_MAX_OUTPUT): into dwb[2 q], q the
    block's index among Q, summed like _lstm_grad_range's chunks: dwb[2 q +
    1] each chunk of ~_LSTM_GRAD_CHUNK rows (steps x the block's rows),
    then added. Stops early once the rows' gradient vanished (above), and
    then writes the earlier steps of dzs as zeros only if fill (something
    reads them: the product over all rows, an input gradient)."""
    T, n = zs.shape[1], b1 - b0
    grads = dwb.shape[0] > 0
    Q, B = dwb.shape[0] // 2, dzs.shape[0]
    q = (b0 * Q + B - 1) // B  # _in_ranges's block q starts at row q B // Q
    chunk = max(1, _LSTM_GRAD_CHUNK // n)  # steps a chunk
    dh[b0:b1] = 0
    dc[b0:b1] = 0
    for t in range(T - 1, -1, -1):
        if t > 0:  # the next step's rows, to L2 (_lstm_prefetch_row)
            for b in range(b0, b1):
                _lstm_prefetch_row(zs, b, t - 1, 0)
                _lstm_prefetch_row(cp, b, t - 1, 0)
                _lstm_prefetch_row(tc, b, t - 1, 0)
                _lstm_prefetch_row(dzs, b, t - 1, 0)
                if grads:
                    _lstm_prefetch_row(xh, b, t - 1, 0)
        _lstm_cells_backward(b0, b1, t, dzs, dh, dc, da, dy, zs, cp, tc, act, ract, return_sequences)
        if t > 0:
            _panels_product(dh[b0:b1], dzs[b0:b1, t], panels)
        # the last step this block runs: step 0, or the gradient vanished (above)
        last = t == 0 or (not return_sequences and _lstm_vanished(b0, b1, dh, dc))
        if grads:
            k = T - 1 - t  # steps done before this one
            if k % chunk == 0:
                dwb[2 * q + 1] = 0
            _lstm_add_product_t(dwb[2 * q + 1], xh[b0:b1, t], dzs[b0:b1, t])
            if k % chunk == chunk - 1 or last:
                _lstm_add_chunk(dwb[2 * q], dwb[2 * q + 1], k < chunk)
        if last:
            if fill:
                dzs[b0:b1, :t] = 0  # the steps not run: dz zero
            return


# Packing the panels, a pass's first work in the blocks schedule, reads
# the weights 8 rows at a time and writes each panel's 8 rows as one run of
# 512 bytes; panel by panel, as it was, it read 64 bytes a row with rows
# 8 KB apart (U 512), a pattern the prefetchers do not follow. From
# _LSTM_PACK_SPLIT_MIN weights the threads pack ranges of panels. U 512,
# caches evicted between calls, medians of 15: one thread 1.00 -> 0.80 ms,
# two 0.42 ms.
_LSTM_PACK_SPLIT_MIN = 1 << 18  # weights (values) from which the threads share the packing


@njit(nogil=True)
def _lstm_pack_range(p0, p1, panels, w):
    """panels[p, k, l] = w (K, N)[k, 16 p + l] for panels p0:p1, 8 rows of w at a time."""
    K = panels.shape[1]
    for k0 in range(0, K, 8):
        for p in range(p0, p1):
            for k in range(k0, min(K, k0 + 8)):
                src, dst = w[k, 16 * p:16 * p + 16], panels[p, k]
                for j in range(16):
                    dst[j] = src[j]


@njit(nogil=True)
def _lstm_pack_t_range(p0, p1, panels, w):
    """panels[p, k, l] = w (M, N)[16 p + l, k] for panels p0:p1: each the
    transpose of 16 rows of w."""
    for p in range(p0, p1):
        _lstm_transpose_weights(panels[p], w[16 * p:16 * p + 16])


def _lstm_pack_panels(panels, w):
    """panels (N / 16, K, 16)[p, k, l] = w (K, N)[k, 16 p + l]."""
    P = panels.shape[0]
    _in_ranges(_lstm_pack_range, _range_threads(w.size, _LSTM_PACK_SPLIT_MIN), P, panels, w)


def _lstm_pack_panels_t(panels, w):
    """panels (M / 16, N, 16)[p, k, l] = w (M, N)[16 p + l, k]: the panels of
    w.T, each the transpose of 16 rows of w."""
    P = panels.shape[0]
    _in_ranges(_lstm_pack_t_range, _range_threads(w.size, _LSTM_PACK_SPLIT_MIN), P, panels, w)
