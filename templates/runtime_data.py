# ------------------------------------------------- runtime: data checks
# Part of _Runtime (runtime.py): inputs and targets put in the model's
# order, their shapes, dtypes, ids and finiteness checked (SPEC section 4).


class _RuntimeData:
    """Data normalisation and validation (SPEC section 4)."""

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
