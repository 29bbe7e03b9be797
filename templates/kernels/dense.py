# ---------------------------------------------------------------- dense
# y = act(x @ kernel + bias), the activation fused in (Keras's Dense has it
# too): one kernel call and one pass over y per layer instead of two.
# Both products go through np.dot (numba -> scipy BLAS gemm).  x.T /
# kernel.T are F-ordered views of C arrays: numba passes them to gemm as
# "transposed" without copying.  np.dot(a, b, out) writes in place but only
# overwrites (no beta=1), so an accumulated gradient (+=) costs a temporary
# the size of the result (written by the same 3-argument np.dot: each form
# of np.dot compiles on its own, and the 2-argument one added 0.75 s to
# twitter.py's cold start); lower.py lets the first contribution to a
# gradient overwrite it instead, so nothing zeroes it first either.
# The epilogue (bias, activation) runs over blocks of rows in parallel only
# where the activation would (activation_forward).


@njit
def _dense_epilogue_rows(z, bias, r0, r1, act):
    """Rows r0:r1 of z: += bias, then the activation, in place; returns 1 if
    one of those pre-activations is NaN/Inf, else 0. That lets predict
    check a big input through its first layer instead of reading it twice
    (runtime: _defers_check). An or of `not abs(v) < inf` costs 1024 x 64
    relu 3.1 -> 4.7 us (a count of them, 8.9).
    relu and float32 sigmoid and tanh are one pass here, through one name
    for z: passed as both y and z to _activation_forward_rows, z fails the
    compiler's runtime overlap check and the loop runs scalar (1024 x 64:
    relu 12 -> 3 us, sigmoid 500 -> 50 us)."""
    nb = bias.shape[0]
    inf = z.dtype.type(np.inf)
    bad = False
    if _USES_RELU and act == 1:
        zero = z.dtype.type(0.0)
        for r in range(r0, r1):
            for j in range(z.shape[1]):
                v = z[r, j] + bias[j] if nb > 0 else z[r, j]
                bad |= not abs(v) < inf
                z[r, j] = v if v > zero else zero
        return 1 if bad else 0
    if _USES_SIGMOID and act == 2 and z.itemsize == 4:
        for r in range(r0, r1):
            for j in range(z.shape[1]):
                v = z[r, j] + bias[j] if nb > 0 else z[r, j]
                bad |= not abs(v) < inf
                z[r, j] = _activation_sigmoid32(v)
        return 1 if bad else 0
    if _USES_TANH and act == 3 and z.itemsize == 4:
        for r in range(r0, r1):
            for j in range(z.shape[1]):
                v = z[r, j] + bias[j] if nb > 0 else z[r, j]
                bad |= not abs(v) < inf
                z[r, j] = _activation_tanh32(v)
        return 1 if bad else 0
    if nb > 0:
        for r in range(r0, r1):
            for j in range(z.shape[1]):
                z[r, j] += bias[j]
    zf = z[r0:r1].reshape(-1)  # one flat loop: rows of a few classes are too short to vectorize
    for i in range(zf.shape[0]):
        bad |= not abs(zf[i]) < inf
    if _USES_SOFTMAX and act == 4:
        _activation_softmax_inplace(z, r0, r1)
    elif act != 0:
        _activation_forward_rows(z, z, r0, r1, act)
    return 1 if bad else 0


@njit
def _dense_one_row_panels(z, x, kernel):
    """Whether z = x @ kernel, one row, runs on the panel kernel (_panels_row):
    a kernel of whole panels, each row's values contiguous."""
    return (x.shape[0] == 1 and kernel.shape[1] % 16 == 0 and x.strides[1] == x.itemsize
            and kernel.strides[1] == kernel.itemsize and z.strides[1] == z.itemsize)


@njit
def _dense_forward_serial(z, x, kernel, bias, act):
    if _dense_one_row_panels(z, x, kernel):  # predict at batch 1: 1 us less than OpenBLAS for 784 x 64
        _panels_row(z, x, kernel, np.int64(0))
    else:
        np.dot(x, kernel, z)
    return _dense_epilogue_rows(z, bias, np.int64(0), z.shape[0], act)


@njit(parallel=True)
def _dense_forward_parallel(z, x, kernel, bias, act):
    np.dot(x, kernel, z)
    n, blk = z.shape[0], _ACTIVATION_BLOCK
    bad = 0
    for i in prange((n + blk - 1) // blk):
        bad += _dense_epilogue_rows(z, bias, i * blk, min(n, i * blk + blk), act)
    return bad


@njit
def _dense_bias_grad(dbias, dz, wmode):
    """dbias (wmode 1 overwrite, 2 accumulate) the column sums of dz."""
    if wmode == 1:
        dbias[:] = 0
    if dbias.shape[0] > 0:
        for r in range(dz.shape[0]):  # row-major walk: contiguous reads of dz
            row = dz[r]
            for j in range(row.shape[0]):
                dbias[j] += row[j]


@njit
def _dense_param_grads(dkernel, dbias, dz, x, wmode):
    """dkernel (wmode) x.T @ dz, dbias (wmode) the column sums of dz:
    wmode 1 overwrite, 2 accumulate."""
    if wmode == 1:
        np.dot(x.T, dz, dkernel)
    else:
        tmp = np.empty_like(dkernel)
        np.dot(x.T, dz, tmp)
        dkernel += tmp
    _dense_bias_grad(dbias, dz, wmode)


@njit
def _dense_input_grad(dx, dz, kernel, mode):
    if mode == 1:
        np.dot(dz, kernel.T, dx)
    elif mode == 2:
        tmp = np.empty_like(dx)
        np.dot(dz, kernel.T, tmp)
        dx += tmp


@njit
def _dense_backward_serial(dx, dkernel, dbias, dz, y, x, kernel, act, mode, wmode):
    if act != 0:
        _activation_backward_rows_inplace(dz, y, np.int64(0), dz.shape[0], act)
    _dense_param_grads(dkernel, dbias, dz, x, wmode)
    _dense_input_grad(dx, dz, kernel, mode)


@njit(parallel=True)
def _dense_backward_parallel(dx, dkernel, dbias, dz, y, x, kernel, act, mode, wmode):
    if act != 0:
        n, blk = dz.shape[0], _ACTIVATION_BLOCK
        for i in prange((n + blk - 1) // blk):
            _activation_backward_rows_inplace(dz, y, i * blk, min(n, i * blk + blk), act)
    _dense_param_grads(dkernel, dbias, dz, x, wmode)
    _dense_input_grad(dx, dz, kernel, mode)



# One part of a data-parallel step (runtime: _parts_for; a model's
# _forward_part and _train_part): each thread runs every layer on its own
# rows of the batch, so these kernels compute on the calling thread alone.
# float32 products with a multiple of 16 columns go through panels.py
# (one thread: (128 x 784) x (784 x 64) 110 against OpenBLAS's 140 us, the
# kernel's gradient x.T @ dz 110 against 150), the rest through np.dot on
# the one OpenBLAS thread the caller set.


@njit
def _dense_panels_apply(c, a, w):
    """Whether c = a @ w (or a.T @ w) can take panels.py's product: float32,
    w's columns a multiple of 16, rows of all three contiguous."""
    return (c.itemsize == 4 and w.shape[1] % 16 == 0 and c.strides[1] == c.itemsize
            and a.strides[1] == a.itemsize and w.strides[1] == w.itemsize)


@njit
def _dense_forward_one(z, x, kernel, bias, act):
    """_dense_forward_serial on this thread alone."""
    if _dense_panels_apply(z, x, kernel):
        _panels_product(z, x, kernel)
    else:
        np.dot(x, kernel, z)
    return _dense_epilogue_rows(z, bias, np.int64(0), z.shape[0], act)


@njit
def _dense_kernel_grad_one(out, x, dz):
    """out = x.T @ dz on this thread alone."""
    if _dense_panels_apply(out, x, dz):
        _panels_product_t(out, x, dz)
    else:
        np.dot(x.T, dz, out)


@njit
def _dense_backward_one(dx, dkernel, dbias, dz, y, x, kernel, act, mode, wmode):
    """_dense_backward_serial on this thread alone."""
    if act != 0:
        _activation_backward_rows_inplace(dz, y, np.int64(0), dz.shape[0], act)
    if wmode == 1:
        _dense_kernel_grad_one(dkernel, x, dz)
    else:
        tmp = np.empty_like(dkernel)
        _dense_kernel_grad_one(tmp, x, dz)
        dkernel += tmp
    _dense_bias_grad(dbias, dz, wmode)
    _dense_input_grad(dx, dz, kernel, mode)


# Owned rows: a training step at a small batch (runtime: _owned_step) splits
# each big kernel's rows into parts, one per thread, and part p's thread does
# all the step's work on those rows: its share of the forward product,
# x[:, lo:hi] @ kernel[lo:hi] (the parts are summed after), the gradient of
# those rows and its NaN/Inf count, and their update (optimizers.py,
# _*_owned, with the same parts). Each core then writes only weight lines it
# already holds. Run from one thread, or with OpenBLAS's threads, the update
# at the end of a step writes lines the other core read, and each must first
# be invalidated there (mlp.py at batch 32 on a 2-core Zen 4: a step 150 ->
# ~105 us). OpenBLAS runs one thread inside these kernels (the caller sees
# to it: a region's threads each call it).
# xp holds x by column blocks: part p's columns lo:hi as one contiguous
# (n, hi - lo) block at offset n * lo, so both products read it without a copy.


@njit
def _dense_part(K, P, p):
    """Rows lo:hi of a kernel of K rows that part p of P owns."""
    return K * p // P, K * (p + 1) // P


@njit(parallel=True)
def _dense_forward_owned(z, zp, xp, x, kernel, bias, act):
    """_dense_forward_serial's result, the product split by kernel rows:
    zp (P, n, o) the parts' products, xp (n * i,) x by column blocks. The
    parts are summed in order, as OpenBLAS sums the blocks of a long inner
    dimension (same bits as its product where it splits there)."""
    n, K = x.shape
    P = zp.shape[0]
    for p in prange(P):
        # p as int64: numba types a prange index int64 in the function but
        # uint64 in the parallel region it builds, so a callee given p bare
        # compiles twice (mlp's _train_part: +2.7 s on a cold cache)
        lo, hi = _dense_part(K, P, np.int64(p))
        xb = xp[n * lo:n * hi].reshape((n, hi - lo))
        for r in range(n):
            src, dst = x[r, lo:hi], xb[r]  # indexed from 0, so it vectorizes (DESIGN.md)
            for k in range(hi - lo):
                dst[k] = src[k]
        np.dot(xb, kernel[lo:hi], zp[p])
    for r in range(n):
        for j in range(z.shape[1]):
            v = zp[0, r, j]
            for p in range(1, P):
                v += zp[p, r, j]
            z[r, j] = v
    return _dense_epilogue_rows(z, bias, np.int64(0), n, act)


@njit(parallel=True)
def _dense_backward_owned(dx, dkernel, dbias, dz, y, xp, kernel, act, mode, wmode, bad):
    """_dense_backward_serial with the kernel's rows split as in
    _dense_forward_owned (xp: the input by column blocks that it wrote);
    bad (P,) gets each part's count of NaN/Inf in its rows of dkernel."""
    n = dz.shape[0]
    K = kernel.shape[0]
    P = bad.shape[0]
    if act != 0:
        _activation_backward_rows_inplace(dz, y, np.int64(0), n, act)
    _dense_bias_grad(dbias, dz, wmode)
    for p in prange(P):
        lo, hi = _dense_part(K, P, np.int64(p))
        xb = xp[n * lo:n * hi].reshape((n, hi - lo))
        dk = dkernel[lo:hi]
        if wmode == 1:
            np.dot(xb.T, dz, dk)
        else:
            tmp = np.empty_like(dk)
            np.dot(xb.T, dz, tmp)
            dk += tmp
        dkf = dk.reshape(-1)
        c = 0
        for k in range(dkf.shape[0]):  # branch-free, as the runtime's _rt_count_nonfinite
            d = dkf[k] - dkf[k]
            c += d != d
        bad[p] = c
        if mode != 0:  # dx[:, lo:hi] (over)written with dz @ kernel[lo:hi].T
            t = np.empty((n, hi - lo), dz.dtype)
            np.dot(dz, kernel[lo:hi].T, t)
            for r in range(n):
                dst, src = dx[r, lo:hi], t[r]  # slices, as in _dense_forward_owned's copy
                for k in range(hi - lo):
                    dst[k] = src[k] if mode == 1 else dst[k] + src[k]


def dense_forward(z, x, kernel, bias, act):
    """z = act(x @ kernel + bias); returns nonzero if a value of
    x @ kernel + bias is NaN/Inf, else 0.

    z      (n, o)  output
    x      (n, i)  input
    kernel (i, o)
    bias   (o,) or (0,) when use_bias=False
    act    activation code (0 linear)
    """
    if z.size < _ACTIVATION_PARALLEL_MIN or not 2 <= act <= 4:
        return _dense_forward_serial(z, x, kernel, bias, act)
    return _dense_forward_parallel(z, x, kernel, bias, act)


def dense_backward(dx, dkernel, dbias, dz, y, x, kernel, act, mode, wmode):
    """Gradients of y = act(x @ kernel + bias).

    dx      (n, i)  input gradient: mode 0 skip, 1 overwrite, 2 accumulate;
                    may be (0, 0) when mode == 0
    dkernel (i, o)  x.T @ dz: wmode 1 overwrite, 2 accumulate
    dbias   (o,)    sum over rows of dz (wmode); (0,) when use_bias=False
    dz      (n, o)  in: d loss / d y; out: d loss / d (x @ kernel + bias)
    y       (n, o)  forward output
    x       (n, i)  forward input
    kernel  (i, o)
    """
    if y.size < _ACTIVATION_PARALLEL_MIN or not 2 <= act <= 4:
        _dense_backward_serial(dx, dkernel, dbias, dz, y, x, kernel, act, mode, wmode)
    else:
        _dense_backward_parallel(dx, dkernel, dbias, dz, y, x, kernel, act, mode, wmode)


def dense_backward_owned(dx, dkernel, dbias, dz, y, xp, kernel, act, mode, wmode, bad):
    """dense_backward in an owned-rows step (see _dense_backward_owned), on
    one OpenBLAS thread per part."""
    _blas_one_thread(_dense_backward_owned, dx, dkernel, dbias, dz, y, xp, kernel, act, mode, wmode, bad)
