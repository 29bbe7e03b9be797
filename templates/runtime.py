# ---------------------------------------------------------------- runtime
# The user API of every generated model: _Runtime, made of the parts
# above (runtime_*.py) and its own batches, fit, predict, evaluate and
# train_on_batch. The per-model class below supplies the metadata and
# _alloc/_forward/_backward.


class _Runtime(_RuntimeState, _RuntimeData, _RuntimeWeights, _RuntimeReport):
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
        if "train" in _RT_AHEAD:  # this process's first step: a helper compiles ahead
            return _rt_compile_ahead("train", b, self._train_step, b, xb, tb, kinds)
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
        if "train-parts" in _RT_AHEAD:
            return _rt_compile_ahead("train-parts", b, self._train_step_parts, b, xs, ts, idx, kinds, P)
        if self._pgrads is None or self._pgrads.shape[0] != P:
            self._pgrads = _rt_zeros((P, self._params.size), self.dtype)  # written every step where nonzero
        outs = self._train_in_parts(b, xs, ts, idx, self._pgrads)
        logs = self._metrics(b, outs, b.tb, kinds)
        bad = None if math.isfinite(logs["loss"]) else f"loss ({logs['loss']})"
        spread = self._parts_on_threads(P)
        if bad is None and self._sum_parts(spread) > 0:
            bad = "gradient"
        self._owned_step = False
        self._update_unless(bad, spread)
        return logs

    def _infer(self, bufs, xs):
        """The forward pass of predict and evaluate; the first of this
        process has a helper compile ahead."""
        if "infer" in _RT_AHEAD:
            return _rt_compile_ahead("infer", None, self._forward, bufs, xs, False)
        return self._forward(bufs, xs, False)

    def _train_all(self, b, xs, ts, kinds):
        """One step on every row of xs and ts, in parts where they apply."""
        n = xs[0].shape[0]
        parts = self._parts_for(n)
        if parts:
            return self._train_step_parts(b, xs, ts, np.arange(n), kinds, parts)
        return self._train_step(b, xs, ts, kinds)

    def _update_unless(self, bad, spread=0):
        """The optimizer step (on `spread` threads: _apply_update), or
        FloatingPointError if bad names a non-finite value."""
        if bad is not None:
            raise FloatingPointError(
                f"Non-finite {bad} at step {self.iterations + 1}: training stopped, the update "
                f"was not applied and the weights are those of the last finite step. Try a "
                f"lower learning rate or check the data.")
        self._apply_update(spread)

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
                logs = self._metrics(b, self._infer(b.bufs, xb), tb, kinds)
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
            bufs = self._batch(n, grads=False).bufs
            outs = self._forward(bufs, xs, False) if "infer" not in _RT_AHEAD else self._infer(bufs, xs)
            if defer:
                self._check_deferred(xs, defer, 0)
            return outs[0].copy() if len(outs) == 1 else [o.copy() for o in outs]
        res = [np.empty((n,) + tuple(o[1]), self.dtype) for o in self._outputs]
        for s in range(0, n, bs):
            e = min(s + bs, n)
            xb = [a[s:e] for a in xs]
            outs = self._infer(self._batch(e - s, grads=False).bufs, xb)
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
