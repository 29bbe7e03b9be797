# ------------------------------- runtime: weights, gradients, optimizer
# Part of _Runtime (runtime.py): the flat weight and gradient buffers,
# their initializers, the optimizer's state and update, the sparse
# Embedding rows and the owned-rows set-up.


class _RuntimeState:
    """Weights, gradients and optimizer state (construction of _Runtime)."""

    def _flat(self, shapes):
        """One flat buffer and per-weight reshaped views into it."""
        sizes = [int(np.prod(s, dtype=np.int64)) for s in shapes]
        flat = _rt_zeros(sum(sizes), self.dtype)  # every page mapped now, not on a first touch mid-training
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
        self._opt_state = [_rt_zeros(self._params.size, self.dtype) if used[s] else np.zeros(0, self.dtype) for s in states]
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
        self._spans_by_parts = {}  # P: the spans of a parts step's update (_parts_spans)

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

    def _parts_spans(self, P):
        """(lo, hi, part) spans of P equal parts of the flat buffer, made once."""
        spans = self._spans_by_parts.get(P)
        if spans is None:
            n = self._params.size
            spans = np.array([(p * n // P, (p + 1) * n // P, p) for p in range(P)], np.int64)
            self._spans_by_parts[P] = spans
        return spans

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

    def _parts_on_threads(self, parts):
        """How many threads sum and apply the gradients of a step in `parts`
        parts, each its part of the flat buffer: `parts` with the optimizer's
        owned kernel when OpenMP's threads spin between regions, else 0 (the
        calling thread). Decided once a step, so each half is summed where
        it is updated."""
        return parts if parts > 1 and self._opt_owned is not None and _rt_owned_threads() else 0

    def _sum_parts(self, spread):
        """_grads = the sum of the parts' gradients (_pgrads); returns how
        many are NaN/Inf. On `spread` threads (_parts_on_threads), or here."""
        if spread:
            return _rt_sum_parts_owned(self._grads, self._pgrads, self._parts_spans(spread), spread)
        return _rt_sum_parts(self._grads, self._pgrads)

    def _apply_update(self, spread=0):
        """One optimizer step: dense segments, then the rows each table used.
        After a step in parts, a model with owned-rows kernels updates the
        parts of its flat buffer on `spread` threads (_parts_on_threads),
        whose OpenMP threads spin between regions then (mlp at batch 256:
        344k -> 360k samples/s in fit, the same weights: the update is
        element-wise)."""
        t = (self.iterations + 1,) if self._opt_takes_t else ()
        if self._owned_step:
            self._opt_owned(self._params, self._grads, *self._opt_state, *self._opt_args, *t,
                            self._owned_spans, self._owned_parts)
        elif spread:
            self._opt_owned(self._params, self._grads, *self._opt_state, *self._opt_args, *t,
                            self._parts_spans(spread), spread)
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
                rmsprop_flush_rows(v, last, self.iterations, self._opt_args[1], self._opt_args[3])
