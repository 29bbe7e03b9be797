# ---------------------------------------------------------------------------
# Runtime: the user API shared by every generated model (templates/runtime_*.py
# and runtime.py, included verbatim in that order). These helpers first; then
# the parts of _Runtime (runtime_state, _data, _weights, _report) and _Runtime
# itself. Everything a Keras user calls lives there.
# ---------------------------------------------------------------------------
import json
import os
import tempfile
import time

_RT_WEIGHTS_FORMAT = "gen-weights-1"
# Batch sizes kept allocated, least recently used dropped first: fit uses two
# (full and last partial batch), plus one for predict or evaluate.
_RT_CACHE_LIMIT = 3

# Optimizer kernel arguments after (w, g): state buffer names, then
# hyper-parameters with Keras 3 defaults; Adam also takes t = iterations + 1.
_RT_OPTIMIZERS = {
    "sgd": (("m",), (("learning_rate", 0.01), ("momentum", 0.0), ("nesterov", False)), False),
    "rmsprop": (("v", "m", "mg"), (("learning_rate", 0.001), ("rho", 0.9), ("momentum", 0.0),
                                    ("epsilon", 1e-07), ("centered", False)), False),
    "adam": (("m", "v", "vhat"), (("learning_rate", 0.001), ("beta_1", 0.9), ("beta_2", 0.999),
                                   ("epsilon", 1e-07), ("amsgrad", False)), True),
}


@njit
def _rt_count_nonfinite(a):
    """NaN/Inf count of 1-D `a`: branch-free (v - v is NaN exactly for
    NaN/Inf), so it vectorizes."""
    n = 0
    for i in range(a.shape[0]):
        d = a[i] - a[i]
        n += d != d
    return n


@njit
def _rt_first_nonfinite(a):
    """Index of the first NaN/Inf in 1-D `a`, or -1 (no temporary arrays):
    blocks are counted vectorized, and only a bad block is searched (7x
    faster than a loop that can exit early)."""
    for lo in range(0, a.shape[0], 4096):
        blk = a[lo:lo + 4096]
        if _rt_count_nonfinite(blk) > 0:
            for i in range(blk.shape[0]):
                if not math.isfinite(blk[i]):
                    return lo + i
    return -1


_RT_CHECK_PARALLEL_MIN = 1 << 21  # values (8 MB of float32) from which a data check uses every thread


@njit(parallel=True)
def _rt_count_nonfinite_parallel(a):
    """_rt_count_nonfinite over blocks on every thread: a whole training set
    is checked once per fit (6.4M values: 520 us on one thread, 290 on two)."""
    n = 0
    blk = 1 << 16
    for b in prange((a.shape[0] + blk - 1) // blk):
        n += _rt_count_nonfinite(a[b * blk:min(a.shape[0], (b + 1) * blk)])
    return n


def _rt_has_nonfinite(a):
    """Whether 1-D `a` holds a NaN/Inf (plain Python: small data never
    compiles the parallel kernel)."""
    if a.shape[0] >= _RT_CHECK_PARALLEL_MIN:
        return _rt_count_nonfinite_parallel(a) > 0
    return _rt_first_nonfinite(a) >= 0


@njit
def _rt_rows_nonfinite(a, rows):
    """Whether any of the given rows of 2-D `a` holds a NaN/Inf."""
    for r in rows:
        if _rt_count_nonfinite(a[r]) > 0:
            return True
    return False


_RT_DEFER_CHECK_MIN = 1 << 16  # values (256 KB of float32) from which predict may defer a check


@njit
def _rt_has_zero_row(k, tiny):
    """Whether a row of 2-D `k` has no value of magnitude >= tiny (the
    smallest normal float: a BLAS that flushes subnormals may treat them
    as zero). Stops at a row's first such value."""
    for r in range(k.shape[0]):
        j = 0  # k[r, j], not a row view: 784 x 64 in 0.6 us, not 8
        while j < k.shape[1] and not abs(k[r, j]) >= tiny:
            j += 1
        if j == k.shape[1]:
            return True
    return False


@njit
def _rt_zero_rows(a, rows):
    """a[rows] = 0 for 2-D `a`, without numpy's fancy-indexing temporaries."""
    zero = a.dtype.type(0.0)
    for r in rows:
        ar = a[r]
        for j in range(ar.shape[0]):
            ar[j] = zero


# A training step's forward pass at small batches (_forward_small, under this
# many rows) runs its products on one OpenBLAS thread. On two, the second
# thread reads part of each weight matrix into its core's cache; the
# optimizer update that ends the step then writes those weights from this
# core, and every such cache line must first be invalidated there. mlp.py at
# batch 32 on the Zen 4 machine: RMSprop 24 -> 60 us a step, where the
# forward pass on one thread costs 36 -> 54 us; fit 177k -> 199k samples/s.
# Batch 64 +2%, 128 -8%, 256 -18%: the product's second thread wins there.
# Only for models of up to _RT_TRAIN_ONE_THREAD_WEIGHTS values (1 MB of
# float32, a core's L2 here): the other core cannot keep more of bigger
# weights, so their update pays no more, while their product gains more
# from the second thread.
# OpenBLAS's one- and two-thread paths round some products differently (last
# bits), so the forward pass of a small batch in training can differ in those
# bits from predict's; both are within the Keras tolerances.
_RT_TRAIN_ONE_THREAD_ROWS = 64
_RT_TRAIN_ONE_THREAD_WEIGHTS = 1 << 18


def _rt_forward_small(training, rows, weights, fn, *args):
    """fn(*args) (a model's _forward_small), on one OpenBLAS thread in a
    training step under _RT_TRAIN_ONE_THREAD_ROWS rows of a model with up to
    _RT_TRAIN_ONE_THREAD_WEIGHTS weight values."""
    if training and rows < _RT_TRAIN_ONE_THREAD_ROWS and weights <= _RT_TRAIN_ONE_THREAD_WEIGHTS:
        return _blas_one_thread(fn, *args)
    return fn(*args)


def _rt_owned_threads():
    """numba's thread count for owned-rows steps (dense.py), or 0: one
    thread, or regions too slow to start for a step of ~100 us (the
    workqueue layer; OpenMP threads that sleep at once: see
    _omp_spin_between_regions)."""
    spins = "GOMP_SPINCOUNT" in os.environ or os.environ.get("OMP_WAIT_POLICY", "passive").lower() != "passive"
    return _rt_parts_threads() if spins else 0


def _rt_empty(shape, dtype):
    """np.empty(shape, dtype) whose data starts on a 64-byte boundary (a cache
    line; an AVX-512 vector). numpy starts a large array 16 bytes into a page,
    and the panel products (panels.py), which read the weights 16 floats at a
    time, ran ~15% slower on weights off that boundary (mlp's forward pass on
    one thread: 1020 against 872 us)."""
    dtype = np.dtype(dtype)
    shape = (int(shape),) if np.ndim(shape) == 0 else tuple(int(d) for d in shape)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    raw = np.empty(nbytes + 64, np.uint8)
    s = -raw.ctypes.data % 64
    return raw[s:s + nbytes].view(dtype).reshape(shape)


def _rt_zeros(shape, dtype):
    """np.zeros on a 64-byte boundary (_rt_empty), every page written now
    (not np.zeros, whose pages map on their first touch)."""
    a = _rt_empty(shape, dtype)
    a[...] = 0
    return a


# Parts (gen/parts.py): a model of Dense, Activation and Concatenate layers
# on (n, features) tensors runs a pass over a batch of at least
# _RT_PARTS_MIN_ROWS rows and _RT_PARTS_MIN_MACS multiply-adds (Dense
# products) as P blocks of rows at once, a thread each, in one parallel
# region: no OpenBLAS threads, and no thread waits for another inside it.
_RT_PARTS_MIN_ROWS = 64
_RT_PARTS_MIN_MACS = 1 << 21
# A forward pass in parts hands out its rows in chunks of this many, the next
# one to whichever thread is done first (_forward_parts): on a machine whose
# cores are not equally fast at a time (a VM's vCPU sharing its core), halves
# fixed in advance wait for the slower thread. Fixed chunks, not a split by
# thread count, so each row's result is the same however many threads run.
_RT_PARTS_CHUNK_ROWS = 32


def _rt_parts_threads():
    """numba's thread count for a parts pass, or 0: one thread, or the
    workqueue layer (~80 us to start a region)."""
    n = numba.get_num_threads()
    if n < 2:
        return 0
    try:
        layer = numba.threading_layer()
    except ValueError:  # no parallel region has run yet: the prelude's choice stands
        return n
    return n if layer in ("omp", "tbb") else 0


@njit
def _rt_gather_rows(dst, src, idx, r0, r1):
    """dst[r0:r1] = src[idx[r0:r1]], 2-D: rows copied through slices
    indexed from 0, which vectorize (128 x 784: 9.6 us; dst[r] = src[i], 29)."""
    for r in range(r0, r1):
        s, d = src[idx[r]], dst[r]
        for k in range(s.shape[0]):
            d[k] = s[k]


@njit
def _rt_gather_values(dst, src, idx, r0, r1):
    """dst[r0:r1] = src[idx[r0:r1]], 1-D (sparse targets)."""
    for r in range(r0, r1):
        dst[r] = src[idx[r]]


@njit
def _rt_sum_parts_range(g, G, lo, hi):
    """g[lo:hi] = the sum of G's rows there, in row order; returns how many
    of those values are NaN/Inf."""
    # loops over slices indexed from 0, which vectorize (55k values: 60 ->
    # 12 us, the count included); indexed from lo, they did not inside a
    # parallel region (87 against 15 us)
    gs = g[lo:hi]
    first = G[0, lo:hi]
    for i in range(gs.shape[0]):
        gs[i] = first[i]
    for p in range(1, G.shape[0]):
        other = G[p, lo:hi]
        for i in range(gs.shape[0]):
            gs[i] += other[i]
    return _rt_count_nonfinite(gs)


@njit
def _rt_sum_parts(g, G):
    """g = the sum of G's rows, in row order; returns how many of g's values
    are NaN/Inf."""
    return _rt_sum_parts_range(g, G, 0, g.shape[0])


@njit(parallel=True)
def _rt_sum_parts_owned(g, G, spans, parts):
    """_rt_sum_parts on the threads: thread p sums the spans (lo, hi, p),
    which the optimizer's owned kernel then updates on that thread, so each
    half of g stays in the cache of the core that reads it next. The same
    sums: the bits of _rt_sum_parts."""
    n = 0
    for p in prange(parts):
        c = 0
        for s in range(spans.shape[0]):
            if spans[s, 2] == p:
                c += _rt_sum_parts_range(g, G, spans[s, 0], spans[s, 1])
        n += c
    return n


def _rt_is_kernel(v):
    """A numba kernel, or a kernel entry point written in Python (it picks
    and calls numba kernels)."""
    if isinstance(v, numba.core.dispatcher.Dispatcher):
        return True
    return (callable(v) and getattr(v, "__module__", None) == __name__ and not isinstance(v, type)
            and v is not njit and v.__name__.endswith(("_forward", "_backward", "_update", "_update_rows", "_owned")))


class History(dict):
    """fit()'s result: a dict of lists; `.history` also works, as in Keras."""

    @property
    def history(self):
        return self


class _Batch:
    """Buffers for one batch size: the model's own plus loss/metric scratch."""

    __slots__ = ("bufs", "grads", "xb", "tb", "loss", "acc", "dy", "douts")


def _rt_shape(shape):
    return str((None,) + tuple(shape))
