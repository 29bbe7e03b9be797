# ------------------------------------------------- runtime: weights API
# Part of _Runtime (runtime.py): get/set weights in Keras's order,
# save_weights/load_weights and fit's checkpoints, each file written
# whole or not at all.


class _RuntimeWeights:
    """Weights in and out: Keras order, files, checkpoints."""

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
