# --------------------------------------------------------------- panels
# A matrix product on one thread, c = a @ w, that reads w by 16-column
# panels and keeps 8 rows x 2 panels (32 lanes) of c in registers over all
# of K: one FMA a lane, summed in k order, so a row's bits depend neither on
# the other rows nor on how many there are. numba has no vector type, so
# that inner block is LLVM IR through numba's @intrinsic; the rest is plain
# numba. On the 2-core Zen 4 one thread ran 8 rows x 1 panel at ~117
# GFLOP/s, that core's peak, where one OpenBLAS thread ran (128 x 784) x
# (784 x 64) at 92 and its transposed form, x.T @ dz for a Dense kernel's
# gradient, at 85. An Intel core needs the second panel (below). Used by
# the LSTM's blocks schedule (lstm_blocks.py) and weight gradients
# (lstm_passes.py, _lstm_grad_range) and by one part of a data-parallel
# step (dense.py, _dense_forward_one / _dense_backward_one).
# w is either a (K, N) matrix with contiguous rows, N a multiple of 16,
# read in place (as fast as packed for these shapes: (512 x 784) x
# (784 x 64) 451 against 443 us), or its panels packed (N / 16, K, 16).


def _panel_rows_intrinsic(nr, transposed, npan=1, accumulate=False):
    """An intrinsic c[r0:r0 + nr, 16 p:16 (p + npan)] = (accumulate: +=)
    A[r0:r0 + nr] @ panels p .. p + npan - 1 of w, where A is a (transposed
    False: rows contiguous) or a.T (transposed True: a (K, M), the nr values
    of a k contiguous in a's row k); float32 or float64."""
    @intrinsic
    def panel_rows(typingctx, c, a, w, p, r0):
        def codegen(context, builder, sig, args):
            cty, aty, wty = sig.args[:3]
            c_arr, a_arr, w_arr = (context.make_array(t)(context, builder, v) for t, v in zip(sig.args[:3], args[:3]))
            p, r0 = args[3], args[4]
            i64, i32 = llvm_ir.IntType(64), llvm_ir.IntType(32)
            lanes = 16  # a panel's columns (one AVX-512 register of float32)
            vec = llvm_ir.VectorType(context.get_value_type(wty.dtype), lanes)
            fma = cgutils.get_or_insert_function(builder.module, llvm_ir.FunctionType(vec, [vec] * 3),
                                                 f"llvm.fma.v{lanes}f{wty.dtype.bitwidth}")
            row = [builder.add(r0, llvm_ir.Constant(i64, i)) for i in range(nr)]
            zero = llvm_ir.Constant(i64, 0)
            pans = [builder.add(p, llvm_ir.Constant(i64, j)) for j in range(npan)]
            cols = [builder.mul(q, llvm_ir.Constant(i64, lanes)) for q in pans]
            if not transposed:
                a_rows = [cgutils.get_item_pointer(context, builder, aty, a_arr, [r, zero], wraparound=False) for r in row]
            def c_vec(r, col):
                c_ptr = cgutils.get_item_pointer(context, builder, cty, c_arr, [r, col], wraparound=False)
                return builder.bitcast(c_ptr, vec.as_pointer())
            if accumulate:  # the sums start from c's values
                accs = [[cgutils.alloca_once_value(builder, builder.load(c_vec(r, col), align=4)) for col in cols]
                        for r in row]
            else:
                accs = [[cgutils.alloca_once_value(builder, llvm_ir.Constant(vec, [0.0] * lanes)) for _ in pans]
                        for _ in row]
            splat = llvm_ir.Constant(llvm_ir.VectorType(i32, lanes), [0] * lanes)
            K = builder.extract_value(a_arr.shape, 0 if transposed else 1)
            with cgutils.for_range(builder, K) as loop:
                k = loop.index
                w_k = []  # row k of each panel: 16 lanes
                for q, col in zip(pans, cols):
                    at = [q, k, zero] if wty.ndim == 3 else [k, col]
                    w_ptr = cgutils.get_item_pointer(context, builder, wty, w_arr, at, wraparound=False)
                    w_k.append(builder.load(builder.bitcast(w_ptr, vec.as_pointer()), align=4))
                if transposed:
                    a_k0 = cgutils.get_item_pointer(context, builder, aty, a_arr, [k, r0], wraparound=False)
                for i in range(nr):
                    a_ptr = builder.gep(a_k0, [llvm_ir.Constant(i64, i)]) if transposed else builder.gep(a_rows[i], [k])
                    one = builder.insert_element(llvm_ir.Constant(vec, llvm_ir.Undefined), builder.load(a_ptr),
                                                 llvm_ir.Constant(i32, 0))
                    a_k = builder.shuffle_vector(one, llvm_ir.Constant(vec, llvm_ir.Undefined), splat)  # A[r, k] in every lane
                    for acc, w_kj in zip(accs[i], w_k):
                        builder.store(builder.call(fma, [a_k, w_kj, builder.load(acc)]), acc)
            for r, row_accs in zip(row, accs):
                for col, acc in zip(cols, row_accs):
                    builder.store(builder.load(acc), c_vec(r, col), align=4)
            return context.get_dummy_value()
        return types.void(c, a, w, p, r0), codegen
    return panel_rows


_panel_rows8, _panel_rows4, _panel_rows2, _panel_rows1 = (_panel_rows_intrinsic(nr, False) for nr in (8, 4, 2, 1))
_panel_rows_t8, _panel_rows_t4, _panel_rows_t2, _panel_rows_t1 = (_panel_rows_intrinsic(nr, True) for nr in (8, 4, 2, 1))
# 8 rows x 2 panels: 16 accumulators. An Intel core issues two 512-bit FMAs
# a cycle at a latency of 4, so 8 accumulators (8 x 1) leave it waiting:
# on the Emerald Rapids machine, one thread, (512 x 784) x (784 x 64)
# 586 -> 391 us (88 -> 131 GFLOP/s; one OpenBLAS thread 414 us), x.T @ dz at
# (256 x 784)' (256 x 64) 434 -> 351 us. The same FMAs per lane in k order:
# the same bits.
_panel_pair8 = _panel_rows_intrinsic(8, False, 2)
_panel_pair_t8 = _panel_rows_intrinsic(8, True, 2)
# 1 row x 4 panels, for a product of one row (a Dense layer in predict at
# batch 1): one row has only N / 16 accumulators, and one panel at a time
# waits on each FMA's latency. (1 x 784) x (784 x 64), called from Python
# on the Emerald Rapids machine: 2.1 us against OpenBLAS's 3.1 (its path
# for 1 row is slower than for 2).
_panel_quad1 = _panel_rows_intrinsic(1, False, 4)


@njit
def _panels_row(c, a, w, r):
    """c[r] = a[r] @ w, w (K, N) with contiguous rows (N a multiple of 16)
    or its panels: four panels at a time, then one. The same FMAs per lane
    in k order as every other row count here: the same bits."""
    P = w.shape[0] if w.ndim == 3 else w.shape[1] // 16
    p = np.int64(0)
    while p + 4 <= P:
        _panel_quad1(c, a, w, p, r)
        p += 4
    while p < P:
        _panel_rows1(c, a, w, p, r)
        p += 1


@njit
def _panel_rows_from(c, a, w, p, r):
    """c[r:, 16 p:16 p + 16] = a[r:] @ panel p of w: rows 8 at a time, then 4, 2, 1."""
    M = a.shape[0]
    while r + 8 <= M:
        _panel_rows8(c, a, w, p, r)
        r += 8
    if r + 4 <= M:
        _panel_rows4(c, a, w, p, r)
        r += 4
    if r + 2 <= M:
        _panel_rows2(c, a, w, p, r)
        r += 2
    if r < M:
        _panel_rows1(c, a, w, p, r)


@njit
def _panels_product(c, a, w):
    """c (M, N) = a (M, K) @ w: w (K, N) or its panels (N / 16, K, 16)
    (lstm.py, _lstm_pack_panels); a's and c's rows contiguous, at any stride.
    Panels in pairs, rows 8 at a time; the rest a panel at a time."""
    P = w.shape[0] if w.ndim == 3 else w.shape[1] // 16
    M = a.shape[0]
    p = np.int64(0)  # int64, never a literal 0: one compiled copy of each callee
    while p + 2 <= P:
        r = np.int64(0)
        while r + 8 <= M:
            _panel_pair8(c, a, w, p, r)
            r += 8
        _panel_rows_from(c, a, w, p, r)
        _panel_rows_from(c, a, w, p + 1, r)
        p += 2
    if p < P:
        _panel_rows_from(c, a, w, p, np.int64(0))


@njit
def _panels_rows_t8(c, a, w, r, p0, p1):
    """c[r:r + 8, 16 p0:16 p1] = a[:, r:r + 8].T @ w's panels p0 .. p1 - 1, in pairs."""
    p = p0
    while p + 2 <= p1:
        _panel_pair_t8(c, a, w, p, r)
        p += 2
    if p < p1:
        _panel_rows_t8(c, a, w, p, r)


@njit
def _panels_product_t(c, a, w):
    """c (K, N) = a.T @ w, a (M, K), w (M, N) or its panels (N / 16, M, 16):
    the sum over a's rows in row order; a's and c's rows contiguous."""
    P = w.shape[0] if w.ndim == 3 else w.shape[1] // 16
    K = a.shape[1]
    r = np.int64(0)
    while r + 8 <= K:
        _panels_rows_t8(c, a, w, r, np.int64(0), P)
        r += 8
    if r + 4 <= K:
        for p in range(P):
            _panel_rows_t4(c, a, w, p, r)
        r += 4
    if r + 2 <= K:
        for p in range(P):
            _panel_rows_t2(c, a, w, p, r)
        r += 2
    if r < K:
        for p in range(P):
            _panel_rows_t1(c, a, w, p, r)
