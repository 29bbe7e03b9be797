# ------------------------------------------------------- embedding -> lstm
# (pasted after the lstm kernels, which it uses)
# An Embedding whose only use is an LSTM's input never materializes its
# (B, T, I) output: x @ kernel of a row depends only on its id, so the
# projection runs once per distinct id of the batch (at most the table's
# rows), and so do the kernel gradient and the table gradient:
#   dkernel += xu.T @ dzu      dtable[uniq] += dzu @ kernel.T
# with xu the distinct rows of the table and dzu the gate gradients summed
# per id. Same sums as Embedding + LSTM, grouped by id.


@njit(nogil=True)
def _lstm_copy_rows_range(k0, k1, dst, src, rows, add):
    """For k in k0:k1, add False: dst[k] = src[rows[k]] (gather); add True:
    dst[rows[k]] += src[k] (scatter, rows distinct, so rows k touch disjoint
    rows of dst)."""
    if add:
        for k in range(k0, k1):
            r = rows[k]
            for j in range(src.shape[1]):
                dst[r, j] += src[k, j]
    else:
        for k in range(k0, k1):
            r = rows[k]
            for j in range(src.shape[1]):
                dst[k, j] = src[r, j]


# One call a thread over a range of rows, not one a row: each call counts
# references to its three arrays, an atomic operation on counters the
# threads share (see lstm.py, the cells). twitter.py at batch 32 gathers
# 3,200 rows a step. The copies are chosen from plain Python, never from a
# jitted kernel: a jitted caller compiled in a process that had loaded a
# parallel kernel from numba's cache was cached broken, and the next process
# to load that caller crashed (twitter.py: predict in one process, train in
# a second, train again in a third: a segmentation fault).


# Copies of this many values or more split over the threads: a hand-off
# costs 30-60 us here. twitter.py at batch 32, one thread against two:
# gathering 2,737 rows of 512 233 against 196 us, scattering 3,200 rows of
# 128 47 against 109 us; at batch 256 (25,600 rows) 455 against 308 us.
_LSTM_COPY_PARALLEL_MIN = 1 << 20


def _lstm_copy_rows(dst, src, rows, add):
    """_lstm_copy_rows_range over every k of rows; over the threads when big."""
    n = rows.shape[0]
    _in_ranges(_lstm_copy_rows_range, _range_threads(n * src.shape[1], _LSTM_COPY_PARALLEL_MIN), n, dst, src,
               rows, np.bool_(add))


@njit
def _lstm_distinct_ids(uniq, inv, slot, nu, ids):
    """The distinct ids in order of first use into uniq, each step's index
    in uniq into inv, their count into nu[0] (see lstm_embedded_forward)."""
    n = 0
    for r in range(ids.shape[0]):
        v = ids[r]
        s = slot[v]
        if s < 0:
            s = n
            slot[v] = n
            uniq[n] = v
            n += 1
        inv[r] = s
    for k in range(n):
        slot[uniq[k]] = -1
    nu[0] = n


def _lstm_project_embedded(zs, uniq, inv, slot, nu, xu, pu, ids, table, kernel):
    """zs = (table[ids] @ kernel) through the distinct ids (see
    lstm_embedded_forward for the buffers)."""
    B, T, G = zs.shape
    _lstm_distinct_ids(uniq, inv, slot, nu, ids)
    n = nu[0]
    _lstm_copy_rows(xu[:n], table, uniq[:n], False)
    _lstm_project(pu[:n][None], xu[:n][None], kernel)
    _lstm_copy_rows(zs.reshape(B * T, G), pu, inv, False)


def _lstm_embedded_grads(dkernel, dzs, inv, nu, xu, pu, kernel, wmode):
    """dkernel (wmode 1 overwrite, 2 accumulate) and, into xu[:n], the
    distinct rows' gradients, through the distinct ids."""
    n = int(nu[0])
    xn, dzu = xu[:n], pu[:n]
    _lstm_sum_by_id(dzu, dzs, inv)
    _lstm_grad_product(dkernel, xn, dzu, wmode, dzs.shape[0] * dzs.shape[1])
    _lstm_rows_grads(xn, dzu, kernel)


@njit
def _lstm_sum_by_id(dzu, dzs, inv):
    """dzu (n, G) = the gate gradients of the B*T rows summed per distinct id."""
    B, T, G = dzs.shape
    dzf = dzs.reshape(B * T, G)
    dzu[:] = 0
    for r in range(B * T):
        k = inv[r]
        for j in range(G):
            dzu[k, j] += dzf[r, j]


@njit
def _lstm_rows_grads(xn, dzu, kernel):
    """xn (n, I) = dzu @ kernel.T: the distinct rows' gradients."""
    np.dot(dzu, kernel.T, xn)


def _lstm_table_grads(dtable, uniq, nu, xu):
    """dtable[uniq[k]] += xu[k]: the distinct rows' gradients into the
    table's (a (0, 0) dtable: left in xu, see lstm_embedded_backward)."""
    n = nu[0]
    if dtable.shape[0] == 0:
        return
    _lstm_copy_rows(dtable, xu[:n], uniq[:n], True)


# Predict reads each step's projection from p = table @ kernel, computed a
# row at a time as ids first need it: a row's sums are always the same
# (k in order, no BLAS blocking), so predict gives the same bits whatever
# else the batch or the cache holds. (BLAS rounds a row of a product
# differently depending on the matrix around it: 1st and 2nd predicts of
# one batch differed in the last bit when the cache held BLAS products.)


@njit
def _lstm_project_row(p, r, table, kernel):
    """p[r] = table[r] @ kernel, summed over k in order (vectorized across
    the 4U outputs, no reduction reordered)."""
    out = p[r]
    x = table[r]
    zero = out.dtype.type(0.0)
    for j in range(out.shape[0]):
        out[j] = zero
    for k in range(x.shape[0]):
        xk = x[k]
        kr = kernel[k]
        for j in range(out.shape[0]):
            out[j] += xk * kr[j]


@njit
def _lstm_missing_rows(rows, done, ids):
    """Write the distinct ids whose row is not computed yet to rows, mark
    them done, and return how many. A count, not an array: the helper that
    compiles a first step ahead records kernel calls without running them,
    and takes 0 for every result (templates/runtime_compile.py)."""
    n = 0
    for i in range(ids.shape[0]):
        r = ids[i]
        if not done[r]:
            done[r] = True
            rows[n] = r
            n += 1
    return n


@njit(nogil=True)
def _lstm_project_rows_range(i0, i1, p, rows, table, kernel):
    for i in range(i0, i1):
        _lstm_project_row(p, rows[i], table, kernel)


def lstm_project_rows(p, done, ids, table, kernel):
    """p[r] = table[r] @ kernel for every id r whose done[r] is False.

    p    (V, G)  the projection cache     done (V,) bool: rows of p computed
    ids  (n,)    ids in [0, V)            table (V, I)   kernel (I, G)
    """
    rows = np.empty(ids.shape[0], np.int64)
    rows = rows[:_lstm_missing_rows(rows, done, ids)]
    if not rows.shape[0]:
        return
    try:
        # threads from 2^23 multiply-adds (128 of twitter's rows, ~150 us on
        # one core): below, waking them (~40 us) costs more than it saves
        macs = rows.shape[0] * table.shape[1] * kernel.shape[1]
        _in_ranges(_lstm_project_rows_range, _range_threads(macs, 1 << 23), rows.shape[0], p, rows, table, kernel)
    except BaseException:  # interrupted: these rows were marked done but not computed
        done[rows] = False
        raise


def lstm_projected_forward(y, zs, xh, cp, tc, hc, cc, rec, rkt, ids, proj, rkernel, bias,
                           act, ract, return_sequences, per_step):
    """lstm_embedded_forward from proj = table @ kernel (lstm_project_rows):
    a row lookup per step, no product; for forward passes without a
    backward pass (it fills no uniq/inv/xu for one)."""
    B, T, G = zs.shape
    _lstm_copy_rows(zs.reshape(B * T, G), proj, ids, False)  # zs[b, t] = proj[ids[b * T + t]]
    _lstm_recurrence_forward(y, zs, xh, _lstm_h_column(xh, rkernel, bias), cp, tc, hc, cc, rec, rkt,
                             rkernel, bias, act, ract, return_sequences, per_step)


def lstm_embedded_forward(y, zs, xh, cp, tc, hc, cc, rec, rkt, uniq, inv, slot, nu,
                          xu, pu, ids, table, kernel, rkernel, bias,
                          act, ract, return_sequences, per_step):
    """lstm_forward of table[ids] without materializing table[ids].

    xh    (B, T, W)      cache: rows [h_{t-1} | 1], W = U + 1 (U without a
                         bias): table[ids] is never materialized, so the
                         kernel's gradient comes from the distinct rows
    uniq  (B*T,) int64   out: the distinct ids, in order of first use
    inv   (B*T,) int64   out: position in uniq of each step's id
    slot  (V,) int64     scratch, -1 everywhere on entry and on return
    nu    (1,) int64     out: how many distinct ids
    xu    (R, I)         out: table[uniq]        R = min(B*T, V)
    pu    (R, G)         scratch: table[uniq] @ kernel
    ids   (B*T,) int     ids of the batch, row-major (b, t); all in [0, V)
    table (V, I)         the other arguments as in lstm_forward
    """
    B, T, G = zs.shape
    _lstm_project_embedded(zs, uniq, inv, slot, nu, xu, pu, ids, table, kernel)
    if xh.shape[1] == T:  # caches for a backward pass
        _lstm_stage_inputs(xh, np.empty((B, T, 0), xh.dtype), bias)  # the 1 column
    _lstm_recurrence_forward(y, zs, xh, _lstm_h_column(xh, rkernel, bias), cp, tc, hc, cc, rec, rkt,
                             rkernel, bias, act, ract, return_sequences, per_step)


def lstm_embedded_backward(dtable, dw, dzs, dh, dc, dzt,
                           dy, uniq, inv, nu, xu, pu, zs, xh, cp, tc,
                           kernel, rkernel, rkt, act, ract, return_sequences,
                           per_step, wmode):
    """Backpropagation for lstm_embedded_forward, into dtable (V, I) too.

    dw (I + W, G) is [dkernel; drkernel; dbias] as in lstm_backward: the
    product with xh fills its last W rows, the distinct rows its first I.
    pu becomes dzu, the gate gradients summed per distinct id; xu (after
    its use for dkernel) becomes the table gradient of the distinct rows.
    dtable accumulates; or, when it is (0, 0), xu[:nu] is left holding the
    gradients of the rows uniq[:nu] (each id's whole gradient: the ids are
    distinct). wmode applies to dw. The other arguments as in
    lstm_backward and lstm_embedded_forward.
    """
    I = kernel.shape[0]
    _lstm_recurrence_backward(dzs, dh, dc, dzt, dy, zs, cp, tc, rkernel, rkt,
                              act, ract, return_sequences, per_step, dw[I:], xh, wmode)
    _lstm_embedded_grads(dw[:I], dzs, inv, nu, xu, pu, kernel, wmode)
    _lstm_table_grads(dtable, uniq, nu, xu)
