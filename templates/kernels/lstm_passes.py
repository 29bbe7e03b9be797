# ---------------------------------------------------------- lstm passes
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


def _lstm_recurrence_forward(y, zs, xh, ho, cp, tc, hc, cc, rec, rkt, rkernel, bias,
                             act, ract, return_sequences, per_step):
    """The recurrence of lstm_forward, once zs holds x @ kernel."""
    B, T, G = zs.shape
    U = rkernel.shape[0]
    Q = _lstm_blocks(B, T, U, zs.dtype, per_step) if rkt.shape[0] == G else 0
    if Q:
        panels = rkt.reshape((G // 16, U, 16))  # rkt's memory, free in this schedule
        _lstm_pack_panels(panels, rkernel)
        _in_ranges(_lstm_block_forward, Q, B, y, zs, xh, ho, cp, tc, hc, cc, rec, panels, bias, act, ract,
                   return_sequences)
        return
    if not _lstm_rows_forward_taken(B, T, G, per_step):
        if (U >= _LSTM_FORWARD_TRANSPOSED_MIN_UNITS and 2 <= B <= _LSTM_STEPS_TRANSPOSED_MAX_BATCH
                and rkt.shape[0] == G):
            _lstm_transpose_weights(rkt, rkernel)
            rect = np.empty((G, B), zs.dtype)
        else:
            rect = np.empty((0, 0), zs.dtype)
        _lstm_steps_forward(y, zs, xh, ho, cp, tc, hc, cc, rec, rect, rkernel, rkt, bias, act, ract, return_sequences)
        return
    _lstm_transpose_weights(rkt, rkernel)
    _lstm_rows_forward_parallel(y, zs, xh, ho, cp, tc, hc, cc, rkt, bias, act, ract, return_sequences)


def _lstm_recurrence_backward(dzs, dh, dc, dzt, dy, zs, cp, tc, rkernel, rkt,
                              act, ract, return_sequences, per_step, dw, xh, wmode, dzs_read=True):
    """The recurrence of lstm_backward: fills dzs, and dw = (wmode 1) or +=
    (wmode 2) xh.T @ dzs (_lstm_weight_grads), inside the blocks up to
    _LSTM_BLOCK_GRADS_MAX_OUTPUT values of dw. rkt (G, U) scratch (the
    forward pass's), or (0, 0). dzs_read False: nothing reads dzs after
    this (no input gradient), so where the blocks stop early (the gradient
    vanished) and sum dw themselves, dzs's earlier steps are not written."""
    B, T, G = zs.shape
    U = dh.shape[1]
    da = np.empty_like(dh)  # scratch: act'(c_t) of a row
    Q = _lstm_blocks(B, T, U, zs.dtype, per_step) if rkt.shape[0] == G else 0
    if Q:
        panels = rkt.reshape((U // 16, G, 16))
        _lstm_pack_panels_t(panels, rkernel)
        in_blocks = dw.size <= _LSTM_BLOCK_GRADS_MAX_OUTPUT
        dwb = np.empty((2 * Q if in_blocks else 0,) + dw.shape, dw.dtype)
        _in_ranges(_lstm_block_backward, Q, B, dzs, dh, dc, da, dy, zs, cp, tc, panels, act, ract,
                   return_sequences, dwb, xh, dzs_read or not in_blocks)
        if in_blocks:  # the blocks' sums added in block order
            if wmode == 1:
                dw[:] = dwb[0]
            else:
                dw += dwb[0]
            for q in range(1, Q):
                dw += dwb[2 * q]
            return
    elif per_step:
        transposed = U >= _LSTM_STEPS_TRANSPOSED_MIN_UNITS and B <= _LSTM_STEPS_TRANSPOSED_MAX_BATCH
        dht = np.empty((U, B) if transposed else (0, 0), dh.dtype)
        _lstm_steps_backward(dzs, dh, dc, da, dzt, dht, dy, zs, cp, tc, rkernel, act, ract, return_sequences)
    elif B > 1 and B * T * G >= _LSTM_PARALLEL_MIN:
        _lstm_rows_backward_parallel(dzs, dh, dc, da, dy, zs, cp, tc, rkernel, act, ract, return_sequences)
    else:
        _lstm_rows_backward(np.int64(0), B, dzs, dh, dc, da, dy, zs, cp, tc, rkernel, act, ract, return_sequences)
    _lstm_weight_grads(dw, xh, dzs, wmode)


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


def _lstm_h_column(xh, rkernel, bias):
    """Where xh's h_{t-1} columns start (xh (B, T, W), or its (B, 1, W)
    scratch). The kernels take xh and this offset, not a view of those
    columns: numpy calls a (1, 1, U) view contiguous and a (B, 1, U) one
    not, so a view typed the cells kernel twice (a batch-1 predict after
    training compiled it again: 0.7 s on a cold cache)."""
    nb = 1 if bias.shape[0] > 0 else 0
    return xh.shape[2] - nb - rkernel.shape[0]


def _lstm_weight_grads(dw, xh, dzs, wmode):
    """dw = (wmode 1) or += (wmode 2) xh.T @ dzs over all B*T rows: the
    gradients of the weights xh's columns multiply ([dkernel; drkernel;
    dbias] stacked, (W, G))."""
    B, T, G = dzs.shape
    _lstm_grad_product(dw, xh.reshape(B * T, xh.shape[2]), dzs.reshape(B * T, G), wmode, B * T)


def _lstm_grad_product(c, a, w, mode, rows):
    """c = (mode 1) or += (mode 2) a.T @ w, a weight gradient: on the
    panel kernel over the threads where _lstm_grad_on_panels(rows), else
    BLAS. rows, not a's row count, decides: an embedded LSTM passes its
    batch's B*T for its distinct ids, so the kernels a step calls do not
    depend on how often ids repeat (the helper that compiles ahead sees no
    ids: it records the kernels the step will call)."""
    if _lstm_grad_on_panels(c, a, w, rows):
        _lstm_grad_panels(c, a, w, mode)
    else:
        _lstm_product_t(c, a, w, mode)


@njit
def _lstm_product_t(c, a, w, mode):
    """c = (mode 1) or += (mode 2) a.T @ w, one BLAS product."""
    if mode == 1:
        np.dot(a.T, w, c)
    else:
        tmp = np.empty_like(c)
        np.dot(a.T, w, tmp)
        c += tmp


# A weight gradient a.T @ w over many rows (an LSTM's B T rows, or an
# embedded LSTM's distinct ids): OpenBLAS splits its small (K, N) output
# poorly over two threads. Here panels.py's kernel runs it, each thread on a
# range of w's panels (so the bits do not depend on the thread count) and
# a's rows in chunks that stay in its L2: each chunk's product summed in row
# order, the chunks' products added in order (a blocked sum, as accurate as
# BLAS's). Two threads against OpenBLAS, two runs of medians of 7 x 10
# calls, (M x K)' (M x N): M 25600 K 65 N 128 (an LSTM(32) at batch 256, T
# 100) 3.2-3.5 against 4.4-4.8 ms; M 25600 K 161 N 512 27.8-32.7 against
# 33.5-35.6; M 2737 K 512 N 128 (twitter.py's embedded kernel) 1.85-1.96
# against 2.14-2.33; M 3200 K 161 N 512 3.3-3.8 against 3.5-4.2 (about
# even). A training step, old and new alternating in one process: twitter
# batch 32 13.1 -> 12.2 ms, 256 48.4 -> 46.1; the sweep model T 100, U 32, B
# 256 22.2 -> 20.2, T 25 5.6 -> 5.1. Wider w loses (N 2048: 105-121 against
# 174-178 GFLOP/s; its rows are 8 KB apart, a TLB miss a row); below
# _LSTM_GRAD_MIN_MACS a hand-off costs more than it saves.
_LSTM_GRAD_MAX_COLUMNS = 512
_LSTM_GRAD_MIN_MACS = 1 << 24  # M K N
# On an Intel core (the Emerald Rapids machine) OpenBLAS, which packs a and
# w, wins once the output is wide; the panels keep the narrow outputs of
# long sums. Two threads, medians: (2737 x 512)' (2737 x 128) (twitter.py's
# embedded kernel) 2.2-3.4 ms against BLAS's 1.5-2.6, and its training step
# at batch 32, alternating in one process, 13.25 -> 11.91 ms on BLAS; (3200 x
# 161)' (3200 x 512) 3.9-4.1 against 3.1-3.2; but (25600 x 65)' (25600 x
# 128) 3.6-3.9 against 4.3. On AMD's Zen 4 the panels won at every output
# size measured (above), so there the cap is off.
_LSTM_GRAD_MAX_OUTPUT = 1 << 62 if (numba.config.CPU_NAME or llvm_binding.get_host_cpu_name()).startswith("znver") \
    else 1 << 14  # K N values
_LSTM_GRAD_CHUNK = 256  # rows a chunk


@njit(nogil=True)
def _lstm_grad_range(p0, p1, c, a, w, mode):
    """c[:, 16 p0:16 p1] = (mode 1) or += (mode 2) a.T @ w[:, 16 p0:16 p1],
    a (M, K) and w (M, N) rows contiguous: a product per chunk of rows into
    scratch, then added to c."""
    M, K = a.shape
    j0, j1 = 16 * p0, 16 * p1
    if M == 0 and mode == 1:  # a sum of no rows
        c[:, j0:j1] = 0
    tmp = np.empty((K, c.shape[1]), c.dtype)
    for m0 in range(0, M, _LSTM_GRAD_CHUNK):
        m1 = min(M, m0 + _LSTM_GRAD_CHUNK)
        ac, wc = a[m0:m1], w[m0:m1]
        r = np.int64(0)
        while r + 8 <= K:
            _panels_rows_t8(tmp, ac, wc, r, p0, p1)
            r += 8
        if r + 4 <= K:
            for p in range(p0, p1):
                _panel_rows_t4(tmp, ac, wc, p, r)
            r += 4
        if r + 2 <= K:
            for p in range(p0, p1):
                _panel_rows_t2(tmp, ac, wc, p, r)
            r += 2
        if r < K:
            for p in range(p0, p1):
                _panel_rows_t1(tmp, ac, wc, p, r)
        first = mode == 1 and m0 == 0
        for k in range(K):
            src, dst = tmp[k, j0:j1], c[k, j0:j1]  # slices: loops from 0 vectorize
            if first:
                for j in range(j1 - j0):
                    dst[j] = src[j]
            else:
                for j in range(j1 - j0):
                    dst[j] += src[j]


def _lstm_grad_on_panels(c, a, w, rows):
    """Whether _lstm_grad_panels computes c = a.T @ w: float32, w's columns a
    multiple of 16 up to _LSTM_GRAD_MAX_COLUMNS, from _LSTM_GRAD_MIN_MACS
    (rows K N), c up to _LSTM_GRAD_MAX_OUTPUT values."""
    K = a.shape[1]
    N = w.shape[1]
    return (c.dtype == np.float32 and N % 16 == 0 and N <= _LSTM_GRAD_MAX_COLUMNS and rows > 0
            and rows * K * N >= _LSTM_GRAD_MIN_MACS and K * N <= _LSTM_GRAD_MAX_OUTPUT)


def _lstm_grad_panels(c, a, w, mode):
    """c = (mode 1) or += (mode 2) a.T @ w, w's panels split over the
    threads (see _lstm_grad_range)."""
    P = w.shape[1] // 16
    _in_ranges(_lstm_grad_range, min(numba.get_num_threads(), P), P, c, a, w, np.int64(mode))


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
    _lstm_recurrence_forward(y, zs, xh, _lstm_h_column(xh, rkernel, bias), cp, tc, hc, cc, rec, rkt,
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
                              act, ract, return_sequences, per_step, dw, xh, wmode, mode != 0)
    _lstm_input_grads(dx, dzs, kernel, mode)
