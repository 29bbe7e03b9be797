# ------------------------------------------ runtime: benchmark, summary
# Part of _Runtime (runtime.py): benchmark() and `--bench`, which time
# the module's own kernels, and summary(), Keras's table.


class _RuntimeReport:
    """Self-benchmark and summary."""

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
