# ---------------------------------------------------------------------------
# Runtime: the user API shared by every generated model (templates/runtime.py,
# included verbatim). The per-model class below supplies the metadata and
# _alloc/_forward/_backward; everything a Keras user calls lives here.
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


# Parts (gen/parts.py): a model of Dense, Activation and Concatenate layers
# on (n, features) tensors runs a pass over a batch of at least
# _RT_PARTS_MIN_ROWS rows and _RT_PARTS_MIN_MACS multiply-adds (Dense
# products) as P blocks of rows at once, a thread each, in one parallel
# region: no OpenBLAS threads, and no thread waits for another inside it.
_RT_PARTS_MIN_ROWS = 64
_RT_PARTS_MIN_MACS = 1 << 21


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
def _rt_sum_parts(g, G):
    """g = the sum of G's rows, in row order; returns how many of g's values
    are NaN/Inf."""
    first = G[0]
    for i in range(g.shape[0]):  # loops over whole rows, which vectorize (55k values: 60 -> 12 us, the count included)
        g[i] = first[i]
    for p in range(1, G.shape[0]):
        other = G[p]
        for i in range(g.shape[0]):
            g[i] += other[i]
    return _rt_count_nonfinite(g)


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


class _Runtime:
    name = "model"
    input_names = ()
    output_names = ()
    _inputs = ()
    _outputs = ()
    _layers = ()
    _inits = ()
    _grad_blocks = ()  # (first weight, rows, columns) of each gradient block
    _optimizer = ("rmsprop", {})
    _grads_zeroed = None  # weights whose gradient _backward adds to (None: all of them)
    _fit_defaults = {"epochs": 1, "batch_size": 32, "shuffle": True, "validation_split": 0.0}
    # small batches of a model with _forward_small run its forward pass as one
    # compiled call; benchmark() turns it off to time each layer's kernel
    _fuse_small = True
    # input index -> weight indices of the kernels of the Dense calls that
    # read it (lower.py); a model with any sets _nonfinite in every _forward:
    # nonzero when one of those calls saw a NaN/Inf pre-activation
    _checked_inputs = {}
    _nonfinite = -1
    # weight indices of the Dense kernels whose rows the threads own in a
    # training step at a small batch (lower.py, OWNED_MIN_VALUES); _forward
    # sets _owned_step when it takes that path, and the backward pass, the
    # finite check and the update follow it
    _owned_kernels = ()
    _owned_step = False
    # a model with _forward_part / _train_part (gen/parts.py) and its
    # multiply-adds a sample: passes over big enough batches run in parts
    _parts = False
    _parts_macs = 0
    _pgrads = None  # (parts, weights): each part's gradients of a parts step

    def __init__(self, seed=0, dtype=np.float32, check_finite=True):
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.float32, np.float64):
            raise ValueError(f"dtype must be float32 or float64, Received: {self.dtype}")
        self.check_finite = check_finite  # NaN/Inf checks on data; off saves one pass
        self._rng = np.random.default_rng(seed)  # init, then shuffling: one stream
        self._wnames, self._shapes, self._layer_idx = [], [], {}
        for lname, _cls, weights in self._layers:
            self._layer_idx[lname] = []
            for wname, shape in weights:
                self._layer_idx[lname].append(len(self._shapes))
                self._wnames.append(f"{lname}/{wname}")
                self._shapes.append(tuple(shape))
        self._params, self._w = self._flat(self._shapes)
        self._grads, self._g = self._flat(self._shapes)
        # a layer's adjacent gradients as one matrix (lower.grad_block)
        start = np.cumsum([0] + [int(np.prod(s, dtype=np.int64)) for s in self._shapes])
        self._gb = [self._grads[start[i]:start[i] + r * c].reshape(r, c) for i, r, c in self._grad_blocks]
        self._init_weights()
        self._init_optimizer()
        self.iterations = 0
        self._cache = {}
        self._proj = {}  # (table, kernel) weight indices -> [weights version, table @ kernel, rows done]
        self._wversion = 0  # bumped by every write of the weights through the API

    # -- construction -------------------------------------------------------

    def _flat(self, shapes):
        """One flat buffer and per-weight reshaped views into it."""
        sizes = [int(np.prod(s, dtype=np.int64)) for s in shapes]
        flat = np.empty(sum(sizes), dtype=self.dtype)
        flat[...] = 0  # written, not np.zeros: every page mapped now, not on a first touch mid-training
        views, off = [], 0
        for shape, size in zip(shapes, sizes):
            views.append(flat[off:off + size].reshape(shape))
            off += size
        return flat, views

    def _init_weights(self):
        if len(self._inits) != len(self._w):
            raise ValueError(f"{len(self._inits)} initialisers for {len(self._w)} weights")
        rng = self._rng
        for w, (kind, *args) in zip(self._w, self._inits):
            if kind == "glorot_uniform":
                limit = math.sqrt(6.0 / (args[0] + args[1]))
                w[...] = rng.uniform(-limit, limit, size=w.shape)
            elif kind == "uniform":
                w[...] = rng.uniform(args[0], args[1], size=w.shape)
            elif kind == "zeros":
                w[...] = 0
            elif kind == "lstm_bias":  # unit_forget_bias: ones on the forget gate block
                w[...] = 0
                w[args[0]:2 * args[0]] = 1
            elif kind == "orthogonal":
                w[...] = self._orthogonal(rng, w.shape)
            else:
                raise ValueError(f"unknown initialiser {kind!r}")

    @staticmethod
    def _orthogonal(rng, shape):
        """Keras Orthogonal: QR of a normal matrix, signs fixed by diag(R)."""
        rows = int(np.prod(shape[:-1], dtype=np.int64))
        cols = shape[-1]
        a = rng.standard_normal((max(rows, cols), min(rows, cols)))
        q, r = np.linalg.qr(a)
        q *= np.sign(np.diag(r))
        if rows < cols:
            q = q.T
        return q.reshape(shape)

    def _init_optimizer(self):
        if self._optimizer is None:  # the model file never compiled this model: predict only
            self._opt_kernel = None
            self._sparse, self._dense, self._distinct = [], [(0, self._params.size)], []
            self._rows_clean, self._gathered, self._scatter_off, self._rowgrads = True, set(), (), []
            self._zero_whole = self._accumulated_grads()
            self._owned_parts = 0
            return
        name, given = self._optimizer
        if name not in _RT_OPTIMIZERS:
            raise ValueError(f"unsupported optimizer {name!r}")
        states, hyper, self._opt_takes_t = _RT_OPTIMIZERS[name]
        unknown = set(given) - {k for k, _ in hyper}
        if unknown:
            raise ValueError(f"unsupported {name} arguments: {sorted(unknown)}")
        # Python float/bool scalars so numba compiles one specialisation.
        self._opt_args = tuple(type(d)(given.get(k, d)) for k, d in hyper)
        hp = dict(zip((k for k, _ in hyper), self._opt_args))
        # a state this configuration never reads is a (0,) array, which the
        # kernels accept: RMSprop without momentum or centering keeps one
        # buffer the size of the model, not three
        used = {"v": True, "m": name == "adam" or hp.get("momentum", 0.0) != 0.0,
                "mg": bool(hp.get("centered", False)), "vhat": bool(hp.get("amsgrad", False))}
        self._opt_state = [np.zeros_like(self._params) if used[s] else np.zeros(0, self.dtype) for s in states]
        self._opt_kernel = _OPTIMIZER_KERNELS[name]
        self._init_sparse(name, hp)
        self._init_owned(name)

    def _init_owned(self, name):
        """Owned-rows steps, if this model can take them: their parts are
        counted at the first such step (_owned_setup), as that launches
        numba's threads, which predict alone never needs."""
        able = self._owned_kernels and not self._sparse
        self._owned_parts = None if able else 0
        self._opt_owned = _OPTIMIZER_OWNED_KERNELS[name] if able else None

    def _owned_setup(self):
        """_owned_parts threads (0: none), and the spans of the flat buffer
        each part updates, (lo, hi, part): each owned kernel's rows as
        _dense_part splits them, and everything else in part 0, whose
        values _owned_free lists for the finite check."""
        self._owned_parts = _rt_owned_threads()
        if not self._owned_parts:
            return
        offsets = np.cumsum([0] + [int(np.prod(sh, dtype=np.int64)) for sh in self._shapes])
        spans, self._owned_free, at = [], [], 0
        for i in self._owned_kernels:
            (K, N), lo0 = self._shapes[i], int(offsets[i])
            if lo0 > at:
                self._owned_free.append((at, lo0))
            for p in range(self._owned_parts):
                lo, hi = _dense_part(K, self._owned_parts, p)
                spans.append((lo0 + lo * N, lo0 + hi * N, p))
            at = int(offsets[i + 1])
        if at < self._params.size:
            self._owned_free.append((at, self._params.size))
        self._owned_spans = np.array(spans + [(lo, hi, 0) for lo, hi in self._owned_free], np.int64)

    def _parts_for(self, n):
        """Threads to run a pass over n rows in, as parts (gen/parts.py), or 0."""
        if not (self._parts and self._fuse_small) or n < _RT_PARTS_MIN_ROWS or n * self._parts_macs < _RT_PARTS_MIN_MACS:
            return 0
        return _rt_parts_threads()

    def _owned_parts_for(self, n):
        """Threads owning rows in a training step of n rows, or 0: the batches
        and models whose forward pass would otherwise run on one OpenBLAS
        thread (_rt_forward_small), where the update would pay the
        invalidations owned rows avoid."""
        if n >= _RT_TRAIN_ONE_THREAD_ROWS or self._params.size > _RT_TRAIN_ONE_THREAD_WEIGHTS:
            return 0
        if self._owned_parts is None:
            self._owned_setup()
        return self._owned_parts

    def _init_sparse(self, name, hp):
        """Embedding tables whose update can skip the rows a batch did not use
        without changing Keras's result (see the *_update_rows kernels); the
        rest of the flat buffer is updated densely, in segments."""
        self._sparse = []  # (weight index, ids buffer key, (rows, dim) views: w, g, v, last) per table
        exact = ((name == "sgd" and hp["momentum"] == 0.0) or
                 (name == "rmsprop" and hp["momentum"] == 0.0 and not hp["centered"]))
        offsets = np.cumsum([0] + [int(np.prod(sh, dtype=np.int64)) for sh in self._shapes])
        cut = []
        self._distinct = []  # per table: (uniq key, count key, rows key) of a fused LSTM kernel, or None
        for i, key, distinct in (getattr(self, "_sparse_tables", ()) if exact else ()):
            self._distinct.append(distinct)
            lo, hi = int(offsets[i]), int(offsets[i + 1])
            v = self._opt_state[0][lo:hi].reshape(self._shapes[i]) if name == "rmsprop" else None
            last = np.zeros(self._shapes[i][0], np.int64)
            self._sparse.append((i, key, self._w[i], self._g[i], v, last))
            cut.append((lo, hi))
        self._dense, at = [], 0
        for lo, hi in sorted(cut):
            if lo > at:
                self._dense.append((at, lo))
            at = hi
        if at < self._params.size:
            self._dense.append((at, self._params.size))
        self._rows_clean = True  # whether the rows the last backward pass wrote into g are zero again
        # Tables behind a fused LSTM kernel skip its scatter in training steps:
        # the update reads the distinct rows' gradients where the kernel left
        # them, and the table's gradient is never written or cleared (twitter
        # batch 32: three passes over rows scattered in a 20 MB table less).
        self._gathered = {self._sparse[k][0] for k, d in enumerate(self._distinct) if d is not None}
        self._scatter_off = ()  # the tables the current backward pass leaves unscattered
        self._no_grad = np.empty((0, 0), self.dtype)
        self._rowgrads = []  # per table: (rows, their gradients, gathered) of the last backward pass
        rowwise = {s[0] for s in self._sparse}
        self._zero_whole = [i for i in self._accumulated_grads() if i not in rowwise]

    def _accumulated_grads(self):
        return list(range(len(self._w)) if self._grads_zeroed is None else self._grads_zeroed)

    def _projected(self, ti, ki, ids):
        """table @ kernel of a fused Embedding -> LSTM, for a forward pass
        with no backward pass: each step's projection is then a row lookup
        (predict at batch 1: 0.13 -> 0.05 ms on twitter.py). Rows are
        computed as ids first need them (lstm_project_rows: the same bits
        whichever rows come with them) and kept until a weight changes
        through this API (training, set_weights, load_weights, ...)."""
        table, kernel = self._w[ti], self._w[ki]
        entry = self._proj.get((ti, ki))
        if entry is None:
            entry = self._proj[(ti, ki)] = [-1, np.empty((table.shape[0], kernel.shape[1]), self.dtype),
                                            np.zeros(table.shape[0], np.bool_)]
        if entry[0] != self._wversion:  # rows of older weights: none counts as computed
            entry[0] = self._wversion
            entry[2][:] = False
        lstm_project_rows(entry[1], entry[2], ids, table, kernel)
        return entry[1]

    def _zero_grads(self):
        """Zero the gradients the backward pass adds to rather than overwrites
        (_grads_zeroed, from lower.py): whole, or for the tables updated
        row by row, the rows the last backward pass wrote."""
        for i in self._zero_whole:
            self._g[i][...] = 0
        if not self._rows_clean:  # else the row update zeroed them
            for rows, g, gathered in self._rowgrads:
                if not gathered:  # gathered rows were never written into the table's gradient
                    _rt_zero_rows(g, rows)

    def _table_grad(self, i):
        """Table i's gradient for a fused kernel, or an empty array that tells
        it to leave its rows' gradients in its own buffer (see _gathered)."""
        return self._no_grad if i in self._scatter_off else self._g[i]

    def _backward_pass(self, b, gathered):
        """Zero what accumulates, run _backward, note the rows each table's
        gradient got. gathered: a training step, which updates from the
        fused kernels' row buffers (compute_gradients wants whole tables)."""
        self._scatter_off = self._gathered if gathered else ()
        self._owned_bad = b.bufs["_owned_bad"] if self._owned_step else None  # (kernels, parts) counts
        self._zero_grads()
        self._backward(b.bufs, b.douts)
        self._note_touched(b.bufs)

    def _note_touched(self, bufs):
        """The rows each table's gradient got and where their gradients are:
        the distinct ids a fused LSTM kernel already found, with the row
        gradients in its buffer when it did not scatter them (used before
        the next forward pass overwrites them), else the table's gradient
        on those rows (ids copied) or on the sorted unique ids."""
        self._rowgrads = []
        for (i, key, _w, g, _v, _l), d in zip(self._sparse, self._distinct):
            if d is not None and i in self._scatter_off:
                n = bufs[d[1]][0]
                self._rowgrads.append((bufs[d[0]][:n], bufs[d[2]][:n], True))
            else:
                rows = np.unique(bufs[key]) if d is None else bufs[d[0]][:bufs[d[1]][0]].copy()
                self._rowgrads.append((rows, g, False))
        self._rows_clean = False

    def _grads_nonfinite(self):
        if self._owned_step:  # the owned rows were counted where they were computed
            return bool(self._owned_bad.any()) or any(_rt_first_nonfinite(self._grads[lo:hi]) >= 0
                                                      for lo, hi in self._owned_free)
        if any(_rt_first_nonfinite(self._grads[lo:hi]) >= 0 for lo, hi in self._dense):
            return True
        return any(_rt_count_nonfinite(gr.reshape(-1)) > 0 if gathered else _rt_rows_nonfinite(gr, rows)
                   for rows, gr, gathered in self._rowgrads)

    def _apply_update(self):
        """One optimizer step: dense segments, then the rows each table used."""
        t = (self.iterations + 1,) if self._opt_takes_t else ()
        if self._owned_step:
            self._opt_owned(self._params, self._grads, *self._opt_state, *self._opt_args, *t,
                            self._owned_spans, self._owned_parts)
        elif not self._sparse:
            self._opt_kernel(self._params, self._grads, *self._opt_state, *self._opt_args, *t)
        else:
            for lo, hi in self._dense:
                self._opt_kernel(self._params[lo:hi], self._grads[lo:hi], *[st[lo:hi] for st in self._opt_state],
                                 *self._opt_args, *t)
            lr = self._opt_args[0]
            for (_i, _k, w, _g, v, last), (rows, gr, gathered) in zip(self._sparse, self._rowgrads):
                if v is None:
                    sgd_update_rows(w, gr, rows, gathered, lr)
                else:  # rmsprop: learning_rate, rho, momentum, epsilon, centered
                    rmsprop_update_rows(w, gr, v, last, rows, gathered, self.iterations, lr,
                                        self._opt_args[1], self._opt_args[3])
            self._rows_clean = True  # the row updates zeroed the rows of g they read
        self.iterations += 1
        self._wversion += 1

    def _flush_sparse(self):
        """Apply the decays RMSprop's lazily updated rows still owe, so the
        optimizer state is exactly what a dense update would hold."""
        for _i, _k, _w, _g, v, last in self._sparse:
            if v is not None:
                rmsprop_flush_rows(v, last, self.iterations, self._opt_args[1])

    # -- data normalisation and validation (SPEC section 4) -----------------

    def _structure(self, data, names, what):
        """array | list | dict by name -> list in model order."""
        if len(names) == 1 and isinstance(data, np.ndarray):
            return [data]  # the common case, first (predict at batch 1 is mostly such overhead)
        label = f"{what}s" if len(names) != 1 else what
        if isinstance(data, dict):
            unknown = [k for k in data if k not in names]
            missing = [k for k in names if k not in data]
            if unknown or missing:
                bad = f"Missing data for {what.lower()} '{missing[0]}'" if missing \
                    else f"Unknown {what.lower()} name '{unknown[0]}'"
                raise ValueError(f"{bad}. You passed a data dictionary with keys "
                                 f"{list(data)}. Expected the following keys: {list(names)}")
            return [data[k] for k in names]
        if isinstance(data, (list, tuple)):
            if len(data) != len(names):
                raise ValueError(f"Model '{self.name}' expects {len(names)} {label.lower()} "
                                 f"{list(names)}, Received: a list of {len(data)} arrays")
            return list(data)
        if len(names) != 1:
            raise ValueError(f"Model '{self.name}' expects {len(names)} {label.lower()} "
                             f"{list(names)}, Received: a single array")
        return [data]

    def _check_finite(self, a, label, shape, row0=0):
        """Raise on the first NaN/Inf of `a`, rows of the data from row0 on."""
        if self.check_finite and a.dtype.kind == "f" and _rt_has_nonfinite(a.reshape(-1)):
            i = _rt_first_nonfinite(a.reshape(-1))
            if i >= 0:
                at = tuple(int(v) for v in np.unravel_index(i, a.shape))
                at = (at[0] + row0,) + at[1:]
                raise ValueError(f"{label} (expected shape {_rt_shape(shape)}) contains "
                                 f"{a.reshape(-1)[i]} at index {at}; pass check_finite=False "
                                 f"(or set model.check_finite = False) to skip this check")

    @staticmethod
    def _check_shape(a, label, shape, alt=None):
        if a.shape[1:] != tuple(shape) and (alt is None or a.shape[1:] != tuple(alt)):
            raise ValueError(f"{label} expected shape {_rt_shape(shape)}, "
                             f"Received: shape={a.shape}")

    def _ids(self, a, label, shape, bound):
        """Integer ids as contiguous int64, every id checked against its bound."""
        if a.dtype.kind not in "iu":
            raise ValueError(f"{label} expected integer ids of shape {_rt_shape(shape)}, "
                             f"Received: dtype={a.dtype}")
        if a.dtype.kind == "u" and a.size and a.max() > np.iinfo(np.int64).max:
            raise ValueError(f"{label} has ids beyond the int64 range")
        a = np.ascontiguousarray(a, dtype=np.int64)
        if bound is not None and a.size:
            i = embedding_check_ids(a.reshape(-1), bound)
            if i >= 0:
                at = tuple(int(v) for v in np.unravel_index(i, a.shape))
                raise ValueError(f"{label} (shape {_rt_shape(shape)}) has id "
                                 f"{a.reshape(-1)[i]} at index {at}, outside [0, {bound})")
        return a

    def _prep_inputs(self, x, defer=None):
        """Validated inputs: list of contiguous arrays in input order. Given a
        list `defer`, inputs _defers_check allows are not checked for NaN/Inf
        here: their indices are appended, for predict to check after _forward."""
        xs = []
        for a, (name, shape, kind, bound) in zip(self._structure(x, self.input_names, "Input"), self._inputs):
            a = np.asarray(a)
            if kind != "int" and a.dtype == self.dtype and a.shape[1:] == shape and a.flags.c_contiguous:
                # the common case: nothing to convert; checked in full, or deferred
                if not self.check_finite:
                    xs.append(a)
                    continue
                if a.size < _RT_DEFER_CHECK_MIN or defer is None or not self._defers_check(len(xs), a):
                    if not _rt_has_nonfinite(a.ravel()):
                        xs.append(a)
                        continue
                else:
                    defer.append(len(xs))
                    xs.append(a)
                    continue
            label = f"Input '{name}'"
            self._check_shape(a, label, shape)  # rank and shape
            if kind == "int":  # a float array for token ids is refused, not truncated
                a = self._ids(a, label, shape, bound)
            else:
                if a.dtype.kind not in "biuf":  # ints/bools are cast, as Keras does
                    raise ValueError(f"{label} expected a numeric array of shape "
                                     f"{_rt_shape(shape)}, Received: dtype={a.dtype}")
                a = np.ascontiguousarray(a, dtype=self.dtype)
                self._check_finite(a, label, shape)
            xs.append(a)
        return xs

    def _defers_check(self, i, a):
        """Whether predict may check input i for NaN/Inf through the Dense
        calls that read it (from _RT_DEFER_CHECK_MIN values: below, this test
        costs more than the check). Their pre-activations x @ kernel + bias are
        NaN/Inf wherever a NaN/Inf of x meets a nonzero weight, and each
        kernel row (an input feature) has one. Reading a big input once, not
        twice, saves a tenth of mlp's predict at batch 1024 (34 of 350 us).
        A kernel row with no normal nonzero value could hide that feature's
        NaN from a BLAS that skips zero weights (reference BLAS does), so
        then it checks."""
        ks = self._checked_inputs.get(i)
        if ks is None:
            return False
        tiny = np.finfo(self.dtype).tiny
        return not any(_rt_has_zero_row(self._w[k], tiny) for k in ks)

    def _check_deferred(self, xs, defer, row0):
        """After _forward of a batch (rows from row0 on): unless the Dense
        calls found every pre-activation finite, check the batch's deferred
        inputs in full. A NaN/Inf there raises the error the check before
        _forward gave, as earlier batches were clean; an overflow does not."""
        if self._nonfinite != 0:
            for i in defer:
                name, shape = self._inputs[i][:2]
                self._check_finite(xs[i], f"Input '{name}'", shape, row0)

    def _prep_targets(self, y):
        """Validated targets in output order: int64 ids for sparse losses,
        model dtype otherwise; also the accuracy kind per output."""
        ts, kinds = [], []
        for t, (name, shape, loss, _w, acc) in zip(self._structure(y, self.output_names, "Target"),
                                                  self._outputs):
            t, label = np.asarray(t), f"Target '{name}'"
            if t.ndim == 0 or t.dtype.kind not in "biuf":
                raise ValueError(f"{label} expected a numeric array, Received: {t.dtype} "
                                 f"of shape {t.shape}")
            kinds.append(self._accuracy_kind(shape, t.shape) if acc else None)
            if loss == "sparse_categorical_crossentropy":
                want = shape[:-1]
                self._check_shape(t, label, want, want + (1,))
                t = t.reshape((t.shape[0],) + tuple(want))  # squeeze a trailing axis of 1
                ts.append(self._sparse_target(t, label, want, shape[-1]))
            else:
                # A target without the output's trailing axis of 1 is expanded (Keras).
                self._check_shape(t, label, shape, shape[:-1] if shape[-1:] == (1,) else None)
                t = np.ascontiguousarray(t.reshape((t.shape[0],) + tuple(shape)), dtype=self.dtype)
                self._check_finite(t, label, shape)
                ts.append(t)
        return ts, kinds

    def _sparse_target(self, t, label, shape, classes):
        if t.dtype.kind == "f":
            self._check_finite(t, label, shape)
            if not np.array_equal(t, np.floor(t)):
                raise ValueError(f"{label} expected integer class ids, Received: non-integer values")
        t = np.ascontiguousarray(t, dtype=np.int64)
        if t.size and (t.min() < 0 or t.max() >= classes):  # the kernels index with it
            bad = t.min() if t.min() < 0 else t.max()
            raise ValueError(f"{label} has class id {bad} outside [0, {classes})")
        return t

    @staticmethod
    def _accuracy_kind(out_shape, t_shape):
        """Keras resolves 'accuracy' from shapes (with the batch axis)."""
        if out_shape[-1] == 1:
            return "binary"
        if len(t_shape) < len(out_shape) + 1 or t_shape[-1] == 1:
            return "sparse_categorical"
        return "categorical"

    @staticmethod
    def _cardinality(xs, ts=(), names=(), tnames=()):
        if len(xs) == 1 and not ts:
            return xs[0].shape[0]
        sizes = [(f"input '{n}'", a.shape[0]) for n, a in zip(names, xs)]
        sizes += [(f"target '{n}'", a.shape[0]) for n, a in zip(tnames, ts)]
        if len({s for _, s in sizes}) > 1:
            listed = ", ".join(f"{w} has {s}" for w, s in sizes)
            raise ValueError(f"Data cardinality is ambiguous: {listed} samples. Make sure all "
                             f"arrays contain the same number of samples.")
        return sizes[0][1]

    def _prep(self, x, y):
        if self._opt_kernel is None or any(o[2] is None for o in self._outputs):
            raise RuntimeError(f"Model '{self.name}' has no compile(...) in its model file, so it has no loss or "
                               "optimizer: it can predict, not train or evaluate. Add model.compile(...) and regenerate.")
        xs = self._prep_inputs(x)
        ts, kinds = self._prep_targets(y)
        n = self._cardinality(xs, ts, self.input_names, self.output_names)
        if n == 0:
            raise ValueError("Expected at least one sample, Received: 0")
        return xs, ts, kinds, n

    @staticmethod
    def _batch_size(batch_size, default):
        bs = default if batch_size is None else batch_size
        if int(bs) != bs or bs < 1:
            raise ValueError(f"batch_size must be a positive integer, Received: {batch_size}")
        return int(bs)

    # -- batches ------------------------------------------------------------

    def _batch(self, m, grads=True):
        """Buffers for batch size m, allocated once and reused; those of the
        backward pass only when asked for (predict and evaluate never are)."""
        b = self._cache.pop(m, None)
        if b is None:
            while len(self._cache) >= _RT_CACHE_LIMIT:  # freed before the new one: a lower peak
                del self._cache[next(iter(self._cache))]
            b = self._new_batch(m)
        self._cache[m] = b  # most recently used last
        if grads and not b.grads:
            self._alloc_grads(m, b.bufs)
            b.grads = True
        return b

    def _new_batch(self, m):
        b = _Batch()
        b.bufs, b.grads = self._alloc(m), False
        ids = [kind == "int" for _n, _s, kind, _b in self._inputs]
        b.xb = [np.empty((m,) + tuple(s), np.int64 if i else self.dtype)
                for (_n, s, _k, _b), i in zip(self._inputs, ids)]
        b.tb, b.loss, b.acc, b.dy, b.douts = [], [], [], [], []
        for _n, shape, loss, _w, _a in self._outputs:
            rows = m * int(np.prod(shape[:-1], dtype=np.int64))
            sparse = loss == "sparse_categorical_crossentropy"
            b.tb.append(np.empty((m,) + tuple(shape[:-1] if sparse else shape),
                                 np.int64 if sparse else self.dtype))
            b.loss.append(np.empty(rows, self.dtype))
            b.acc.append(np.empty(rows, self.dtype))
            b.dy.append(np.empty((rows, shape[-1]), self.dtype))
            b.douts.append(b.dy[-1].reshape((m,) + tuple(shape)))
        return b

    @staticmethod
    def _slice(arrays, bufs, s, e, order):
        """Rows s:e (views) or rows order[s:e] gathered into preallocated bufs."""
        if order is None:
            return [a[s:e] for a in arrays]
        idx = order[s:e]
        return [np.take(a, idx, axis=0, out=buf, mode="clip") for a, buf in zip(arrays, bufs)]

    def _metrics(self, b, outs, ts, kinds):
        """Losses and accuracies of one batch as a dict of floats."""
        logs, total, single = {}, 0.0, len(self._outputs) == 1
        for k, (name, shape, loss, weight, _acc) in enumerate(self._outputs):
            y2, t2 = self._flat2(outs[k], ts[k])
            _LOSS_KERNELS[loss][0](b.loss[k], y2, t2)
            value = float(b.loss[k].sum()) / b.loss[k].size  # ndarray.mean costs 3 us, sum 1 us
            total += weight * value
            if not single:
                logs[f"{name}_loss"] = value
            if kinds[k] is not None:
                logs["accuracy" if single else f"{name}_accuracy"] = self._accuracy(b.acc[k], y2, t2, kinds[k])
        logs["loss"] = total
        return logs

    @staticmethod
    def _flat2(out, t):
        y2 = out.reshape(-1, out.shape[-1])
        if not y2.flags.c_contiguous:
            y2 = np.ascontiguousarray(y2)
        return y2, (t.reshape(-1) if t.dtype.kind in "iu" else t.reshape(y2.shape))

    @staticmethod
    def _accuracy(buf, y2, t2, kind):
        if kind == "binary" and t2.ndim == 1:  # int targets on a 1-unit output
            return float(np.mean((y2[:, 0] > 0.5) == (t2 == 1)))
        _ACCURACY_KERNELS[kind](buf, y2, t2)
        return float(buf.sum()) / buf.size

    def _gradients(self, b, outs, ts, gathered=False):
        """d total / d outputs into b.douts, then the model's backward pass
        (gathered: see _backward_pass)."""
        for k, (_n, _s, loss, weight, _a) in enumerate(self._outputs):
            y2, t2 = self._flat2(outs[k], ts[k])
            _LOSS_KERNELS[loss][1](b.dy[k], y2, t2, float(weight) / y2.shape[0])
        self._backward_pass(b, gathered)

    def _train_step(self, b, xb, tb, kinds):
        """One update; metrics are those before it. A non-finite loss or
        gradient raises before the weights change."""
        outs = self._forward(b.bufs, xb, True)
        logs = self._metrics(b, outs, tb, kinds)
        bad = None if math.isfinite(logs["loss"]) else f"loss ({logs['loss']})"
        if bad is None:
            self._gradients(b, outs, tb, gathered=True)
            bad = "gradient" if self._grads_nonfinite() else None
        self._update_unless(bad)
        return logs

    def _train_step_parts(self, b, xs, ts, idx, kinds, P):
        """_train_step on the rows idx of xs and ts, its passes in P parts at
        once (gen/parts.py): each part gathers its rows into b.xb and b.tb
        and writes its gradients to its row of _pgrads, summed here."""
        if self._pgrads is None or self._pgrads.shape[0] != P:
            self._pgrads = np.zeros((P, self._params.size), self.dtype)  # written every step where nonzero
        outs = self._train_in_parts(b, xs, ts, idx, self._pgrads)
        logs = self._metrics(b, outs, b.tb, kinds)
        bad = None if math.isfinite(logs["loss"]) else f"loss ({logs['loss']})"
        if bad is None and _rt_sum_parts(self._grads, self._pgrads) > 0:
            bad = "gradient"
        self._owned_step = False
        self._update_unless(bad)
        return logs

    def _train_all(self, b, xs, ts, kinds):
        """One step on every row of xs and ts, in parts where they apply."""
        n = xs[0].shape[0]
        parts = self._parts_for(n)
        if parts:
            return self._train_step_parts(b, xs, ts, np.arange(n), kinds, parts)
        return self._train_step(b, xs, ts, kinds)

    def _update_unless(self, bad):
        """The optimizer step, or FloatingPointError if bad names a non-finite value."""
        if bad is not None:
            raise FloatingPointError(
                f"Non-finite {bad} at step {self.iterations + 1}: training stopped, the update "
                f"was not applied and the weights are those of the last finite step. Try a "
                f"lower learning rate or check the data.")
        self._apply_update()

    def _run(self, xs, ts, kinds, n, bs, order=None, train=False, epoch=None):
        """All batches of one pass; batch-size-weighted means, like Keras."""
        sums = {}
        for s in range(0, n, bs):
            e = min(s + bs, n)
            b = self._batch(e - s, grads=train)
            parts = self._parts_for(e - s) if train else 0
            if not parts:
                xb, tb = self._slice(xs, b.xb, s, e, order), self._slice(ts, b.tb, s, e, order)
            if train:
                try:
                    if parts:
                        idx = order[s:e] if order is not None else np.arange(s, e)
                        logs = self._train_step_parts(b, xs, ts, idx, kinds, parts)
                    else:
                        logs = self._train_step(b, xb, tb, kinds)
                except FloatingPointError as err:
                    raise FloatingPointError(f"epoch {epoch}, batch {s // bs + 1}: {err}") from None
            else:
                logs = self._metrics(b, self._forward(b.bufs, xb, False), tb, kinds)
            for k, v in logs.items():
                sums[k] = sums.get(k, 0.0) + v * (e - s)
        return {k: sums[k] / n for k in sorted(sums)}

    # -- public API (SPEC section 3) ----------------------------------------

    def predict(self, x, batch_size=None, verbose=0):
        """Outputs for x: one array, or a list in output order."""
        defer = []  # inputs checked for NaN/Inf through their first layer (_defers_check)
        xs = self._prep_inputs(x, defer)
        # the common case without method calls (each costs ~0.1 us of a 5 us batch-1 predict)
        n = xs[0].shape[0] if len(xs) == 1 else self._cardinality(xs, names=self.input_names)
        bs = 32 if batch_size is None else self._batch_size(batch_size, 32)
        if n <= bs:  # one batch: its outputs, copied (latency at batch 1 is mostly this path)
            outs = self._forward(self._batch(n, grads=False).bufs, xs, False)
            if defer:
                self._check_deferred(xs, defer, 0)
            return outs[0].copy() if len(outs) == 1 else [o.copy() for o in outs]
        res = [np.empty((n,) + tuple(o[1]), self.dtype) for o in self._outputs]
        for s in range(0, n, bs):
            e = min(s + bs, n)
            xb = [a[s:e] for a in xs]
            outs = self._forward(self._batch(e - s, grads=False).bufs, xb, False)
            if defer:
                self._check_deferred(xb, defer, s)
            for r, o in zip(res, outs):
                r[s:e] = o
        return res[0] if len(res) == 1 else res

    def fit(self, x, y, epochs=None, batch_size=None, shuffle=None, validation_split=None,
            validation_data=None, verbose=1, checkpoint=None, resume=False):
        """Train; returns the history: a dict of per-epoch lists.

        checkpoint: a path; after every epoch the weights, optimizer state,
        epoch and RNG state are written there atomically. resume=True
        continues from that file when it exists (same data and arguments),
        ending with the weights an uninterrupted run would have."""
        d = self._fit_defaults
        epochs = int(d.get("epochs", 1) if epochs is None else epochs)
        bs = self._batch_size(batch_size, d.get("batch_size", 32))
        shuffle = d.get("shuffle", True) if shuffle is None else shuffle
        split = d.get("validation_split", 0.0) if validation_split is None else validation_split
        xs, ts, kinds, n = self._prep(x, y)
        val = None
        if validation_data is not None:
            if len(validation_data) != 2:
                raise ValueError("validation_data must be a tuple (x_val, y_val); sample "
                                 "weights are not supported")
            val = self._prep(*validation_data)
        elif split:
            if not 0 < split < 1:
                raise ValueError(f"validation_split must be in (0, 1), Received: {split}")
            at = int(math.floor(n * (1.0 - split)))  # the last fraction, before shuffling
            if at in (0, n):
                raise ValueError(f"Training data contains {n} samples, which is not sufficient "
                                 f"to split it into a validation and training set as specified "
                                 f"by `validation_split={split}`.")
            val = ([a[at:] for a in xs], [t[at:] for t in ts], kinds, n - at)
            xs, ts, n = [a[:at] for a in xs], [t[:at] for t in ts], at
        history = History()
        history.epoch = []
        done = 0
        if resume and checkpoint is not None and os.path.exists(checkpoint):
            done, past = self._load_checkpoint(checkpoint)
            history.update(past)
            history.epoch = list(range(done))
        for epoch in range(done + 1, epochs + 1):
            start = time.perf_counter()
            order = self._rng.permutation(n) if shuffle else None
            logs = self._run(xs, ts, kinds, n, bs, order, train=True, epoch=epoch)
            if val is not None:
                vlogs = self._run(val[0], val[1], val[2], val[3], bs)
                logs.update({f"val_{k}": v for k, v in vlogs.items()})
            for k, v in logs.items():
                history.setdefault(k, []).append(v)
            history.epoch.append(epoch - 1)
            if checkpoint is not None:
                self._save_checkpoint(checkpoint, epoch, history)
            if verbose:
                self._print_epoch(epoch, epochs, -(-n // bs), time.perf_counter() - start, logs)
        return history

    @staticmethod
    def _print_epoch(epoch, epochs, steps, seconds, logs):
        parts = [f"{k}: {v:.4f}" if abs(v) >= 1e-3 or v == 0 else f"{k}: {v:.4e}"
                 for k, v in logs.items()]
        print(f"Epoch {epoch}/{epochs} - {steps} steps - {seconds:.2f}s - " + " - ".join(parts),
              flush=True)

    def evaluate(self, x, y, batch_size=None, verbose=0):
        """Metrics over all of x, y (batch-size-weighted mean of batches)."""
        xs, ts, kinds, n = self._prep(x, y)
        return self._run(xs, ts, kinds, n, self._batch_size(batch_size, 32))

    def train_on_batch(self, x, y):
        """One optimizer step on the whole of x, y; metrics before the step."""
        xs, ts, kinds, n = self._prep(x, y)
        logs = self._train_all(self._batch(n), xs, ts, kinds)
        return {k: logs[k] for k in sorted(logs)}

    def compute_gradients(self, x, y):
        """(metrics, {layer: [gradients]}) of the weighted total loss; no update."""
        xs, ts, kinds, n = self._prep(x, y)
        b = self._batch(n)
        outs = self._forward(b.bufs, xs, True)
        logs = self._metrics(b, outs, ts, kinds)
        self._gradients(b, outs, ts)
        grads = {name: [self._g[i].copy() for i in idx] for name, idx in self._layer_idx.items()}
        return {k: logs[k] for k in sorted(logs)}, grads

    # -- weights --------------------------------------------------------------

    def get_weights(self):
        """Copies, in Keras model.get_weights() order."""
        return [w.copy() for w in self._w]

    def _checked(self, i, a, where):
        a = np.asarray(a)
        if a.shape != self._shapes[i] or a.dtype.kind not in "biuf":
            raise ValueError(f"{where}weight {i} ('{self._wnames[i]}') expected shape "
                             f"{self._shapes[i]}, Received: shape={a.shape} dtype={a.dtype}; "
                             f"no weights were changed")
        return a

    def set_weights(self, weights):
        """Set all weights (Keras order); checked in full before any is written."""
        weights = list(weights)
        if len(weights) != len(self._w):
            raise ValueError(f"set_weights expected {len(self._w)} arrays, Received: "
                             f"{len(weights)}; no weights were changed")
        checked = [self._checked(i, a, "") for i, a in enumerate(weights)]
        for w, a in zip(self._w, checked):
            w[...] = a
        self._wversion += 1

    def layer_weights(self):
        """{layer_name: [arrays]} in Keras layer.get_weights() order."""
        return {name: [self._w[i].copy() for i in idx] for name, idx in self._layer_idx.items()}

    def set_layer_weights(self, d):
        """Set the weights of some layers; all checked before any is written."""
        todo = []
        for name, arrays in d.items():
            if name not in self._layer_idx:
                raise ValueError(f"Unknown layer '{name}'; layers: {list(self._layer_idx)}; "
                                 f"no weights were changed")
            idx, arrays = self._layer_idx[name], list(arrays)
            if len(arrays) != len(idx):
                want = [(self._wnames[i], self._shapes[i]) for i in idx]
                raise ValueError(f"Layer '{name}' expected {len(idx)} arrays {want}, "
                                 f"Received: {len(arrays)}; no weights were changed")
            todo += [(i, self._checked(i, a, f"Layer '{name}': ")) for i, a in zip(idx, arrays)]
        for i, a in todo:
            self._w[i][...] = a
        self._wversion += 1

    def _weights_arrays(self):
        return {"__format__": np.array(_RT_WEIGHTS_FORMAT), "__model__": np.array(self.name),
                "__names__": np.array(self._wnames, dtype=str),
                **{f"w{i:05d}": w for i, w in enumerate(self._w)}}

    @staticmethod
    def _atomic_savez(path, arrays):
        """np.savez to a temporary file beside `path`, then rename: a reader
        (or a crash) never sees half a file."""
        path = os.fspath(path)
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)),
                                   prefix=".tmp-", suffix=".npz")
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, **arrays)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    def save_weights(self, path):
        """Write an .npz with weight names, atomically (temp file + rename)."""
        self._atomic_savez(path, self._weights_arrays())

    def _save_checkpoint(self, path, epoch, history):
        """Everything fit needs to continue bit for bit: weights, optimizer
        state and step count, the shuffling RNG, the epoch and the history."""
        self._flush_sparse()
        arrays = self._weights_arrays()
        arrays.update({f"s{i}": st for i, st in enumerate(self._opt_state)})
        arrays.update(__epoch__=np.array(epoch), __iterations__=np.array(self.iterations),
                      __rng__=np.array(json.dumps(self._rng.bit_generator.state)),
                      __history__=np.array(json.dumps(dict(history))),
                      __dtype__=np.array(np.dtype(self.dtype).name))
        self._atomic_savez(path, arrays)

    def _load_checkpoint(self, path):
        """Restore _save_checkpoint's file; returns (epochs done, history)."""
        with np.load(os.fspath(path), allow_pickle=False) as f:
            if "__epoch__" not in f.files:
                raise ValueError(f"{path} is not a checkpoint written by fit(checkpoint=...)")
            if str(f["__dtype__"]) != np.dtype(self.dtype).name:
                raise ValueError(f"{path} holds a {f['__dtype__']} model; this one is {np.dtype(self.dtype).name}")
            states = [f[f"s{i}"] for i in range(len(self._opt_state))]  # unused ones: (0,)
            for i, (have, want) in enumerate(zip(states, self._opt_state)):
                if have.shape != want.shape:
                    raise ValueError(f"{path}: optimizer state {i} has shape {have.shape}, the model "
                                     f"needs {want.shape}; nothing was changed")
            epoch, iterations = int(f["__epoch__"]), int(f["__iterations__"])
            rng, history = json.loads(str(f["__rng__"])), json.loads(str(f["__history__"]))
        self.load_weights(path)  # checks names and shapes before changing anything
        for have, want in zip(states, self._opt_state):
            want[...] = have
        self.iterations = iterations
        for *_, last in self._sparse:
            last[:] = iterations  # the saved state was flushed up to here
        self._rng.bit_generator.state = rng
        return epoch, history

    def load_weights(self, path):
        """Read save_weights' file; refuses a file of a different model."""
        with np.load(os.fspath(path), allow_pickle=False) as f:
            if "__names__" not in f.files:
                raise ValueError(f"{path} is not a weights file written by save_weights")
            names = [str(s) for s in f["__names__"]]
            for i in range(max(len(names), len(self._wnames))):
                have = names[i] if i < len(names) else "nothing"
                want = self._wnames[i] if i < len(self._wnames) else "nothing"
                if have != want:
                    raise ValueError(f"{path} does not match model '{self.name}': weight {i} is "
                                     f"'{have}' in the file, '{want}' in the model; no weights "
                                     f"were changed")
            arrays = [self._checked(i, f[f"w{i:05d}"], f"{path}: ") for i in range(len(names))]
        for w, a in zip(self._w, arrays):
            w[...] = a
        self._wversion += 1

    # -- self-benchmark ---------------------------------------------------------

    def _random_batch(self, n, rng):
        """Inputs and targets of the right shapes and dtypes, for benchmarks."""
        xs = [rng.integers(0, bound or 2, (n, *shape)) if kind == "int" else
              rng.normal(size=(n, *shape)).astype(self.dtype) for _, shape, kind, bound in self._inputs]
        ys = []
        for _, shape, loss, _, _ in self._outputs:
            if loss == "sparse_categorical_crossentropy":
                ys.append(rng.integers(0, shape[-1], (n, *shape[:-1])))
            elif loss == "categorical_crossentropy":
                ys.append(np.eye(shape[-1], dtype=self.dtype)[rng.integers(0, shape[-1], (n, *shape[:-1]))])
            else:
                ys.append(rng.integers(0, 2, (n, *shape)).astype(self.dtype))
        return xs, ys

    def benchmark(self, batch_size=32, steps=20, warmup=3, seed=0):
        """Time training steps on random data: samples/s, the median time of
        each phase and of each kernel per step (in ms). Changes the weights."""
        rng = np.random.default_rng(seed)
        x, y = self._random_batch(batch_size, rng)
        xs, ts, kinds, n = self._prep(x, y)
        b = self._batch(n)
        kernels = {k: v for k, v in globals().items() if not k.startswith("_") and _rt_is_kernel(v)}
        spent = {}

        def timed(name, fn):
            def call(*args):
                t0 = time.perf_counter()
                out = fn(*args)
                spent[name] = spent.get(name, 0.0) + time.perf_counter() - t0
                return out
            return call

        phases = {"forward": [], "loss": [], "backward": [], "optimizer": [], "step": []}
        per_kernel = {}
        module = globals()
        fuse = self._fuse_small
        try:
            self._fuse_small = False
            module.update({k: timed(k, v) for k, v in kernels.items()})
            for i in range(warmup + steps):
                spent.clear()
                t0 = time.perf_counter()
                outs = self._forward(b.bufs, xs, True)
                t1 = time.perf_counter()
                self._metrics(b, outs, ts, kinds)
                for k, (_n, _s, loss, weight, _a) in enumerate(self._outputs):
                    y2, t2 = self._flat2(outs[k], ts[k])
                    _LOSS_KERNELS[loss][1](b.dy[k], y2, t2, float(weight) / y2.shape[0])
                t2_ = time.perf_counter()
                self._backward_pass(b, True)
                t3 = time.perf_counter()
                self._apply_update()
                t4 = time.perf_counter()
                if i >= warmup:
                    for name, v in zip(phases, (t1 - t0, t2_ - t1, t3 - t2_, t4 - t3, t4 - t0)):
                        phases[name].append(v)
                    for name, v in spent.items():
                        per_kernel.setdefault(name, []).append(v)
        finally:
            module.update(kernels)
            self._fuse_small = fuse
        ms = {k: 1e3 * float(np.median(v)) for k, v in phases.items()}
        # the same steps as fit takes them: in parts, with owned rows or the
        # one-call forward pass where those apply (the timing above runs
        # each layer's own kernel, to time it)
        fit_steps = []
        for i in range(warmup + steps):
            t0 = time.perf_counter()
            self._train_all(b, xs, ts, kinds)
            if i >= warmup:
                fit_steps.append(time.perf_counter() - t0)
        return {"batch_size": n, "samples_per_s": n / (ms["step"] / 1e3), "phases_ms": ms,
                "fit_samples_per_s": n / float(np.median(fit_steps)), "fit_path": self._fit_path(n),
                "kernels_ms": {k: 1e3 * float(np.median(v))
                               for k, v in sorted(per_kernel.items(), key=lambda kv: -np.median(kv[1]))}}

    def _fit_path(self, n):
        """How fit runs a training step of n rows."""
        parts = self._parts_for(n)
        if parts:
            return f"{parts} parts"
        if self._owned_kernels and self._owned_parts_for(n):
            return "owned rows"
        return "layer kernels"

    @classmethod
    def _bench_main(cls, argv):
        """`python <module>.py --bench [--batch-size N] [--steps N] [--float64]`"""
        import argparse
        ap = argparse.ArgumentParser(prog=f"python {os.path.basename(__file__)}")
        ap.add_argument("--bench", action="store_true", help="time training steps on random data")
        ap.add_argument("--batch-size", type=int, default=32)
        ap.add_argument("--steps", type=int, default=20)
        ap.add_argument("--float64", action="store_true")
        args = ap.parse_args(argv)
        if not args.bench:
            ap.print_help()
            return
        r = cls(seed=0, dtype=np.float64 if args.float64 else np.float32).benchmark(args.batch_size, args.steps)
        print(f"{cls.name}: batch {r['batch_size']}, {r['samples_per_s']:,.0f} samples/s (training, median of {args.steps} steps, "
              f"each layer's kernel timed); {r['fit_samples_per_s']:,.0f} samples/s as fit runs it ({r['fit_path']})")
        for name, v in r["phases_ms"].items():
            print(f"  {name:<10} {v:9.3f} ms")
        print("  kernels (ms per step, all calls):")
        for name, v in r["kernels_ms"].items():
            print(f"    {name:<34} {v:9.3f}")

    # -- summary ----------------------------------------------------------------

    def _layer_shape(self, lname, cls):
        shapes = getattr(self, "_output_shapes", None) or {}
        if lname in shapes:
            return str(shapes[lname])
        known = {n: s for n, s, *_ in self._inputs} if cls == "InputLayer" else \
            {n: s for n, s, *_ in self._outputs}
        return _rt_shape(known[lname]) if lname in known else "?"

    def summary(self, print_fn=None):
        """Keras-style table: Layer (type), Output Shape, Param #, totals."""
        rows = [("Layer (type)", "Output Shape", "Param #")]
        for lname, cls, weights in self._layers:
            count = sum(int(np.prod(s, dtype=np.int64)) for _w, s in weights)
            rows.append((f"{lname} ({cls})", self._layer_shape(lname, cls), f"{count:,}"))
        widths = [max(len(r[c]) for r in rows) + 2 for c in range(3)]

        def line(l, m, r, fill="━"):
            return l + m.join(fill * w for w in widths) + r

        def cells(r, bar):
            return bar + bar.join((f" {r[0]:<{widths[0] - 2}} ", f" {r[1]:<{widths[1] - 2}} ",
                                   f" {r[2]:>{widths[2] - 2}} ")) + bar

        total = int(self._params.size)
        size = self._readable(total * self.dtype.itemsize)
        out = [f'Model: "{self.name}"', line("┏", "┳", "┓"), cells(rows[0], "┃"),
               line("┡", "╇", "┩")]
        for k, r in enumerate(rows[1:]):
            if k:
                out.append(line("├", "┼", "┤", "─"))
            out.append(cells(r, "│"))
        out += [line("└", "┴", "┘", "─"), f" Total params: {total:,} ({size})",
                f" Trainable params: {total:,} ({size})", " Non-trainable params: 0 (0.00 B)"]
        (print_fn or print)("\n".join(out))

    @staticmethod
    def _readable(nbytes):
        for unit in ("B", "KB", "MB", "GB"):
            if nbytes < 1024:
                return f"{nbytes:.2f} {unit}"
            nbytes /= 1024
        return f"{nbytes:.2f} TB"
