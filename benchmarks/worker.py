"""One benchmark measurement in its own process (started by benchmarks/run.py and sweep.py, through harness.run_worker).

    python benchmarks/worker.py '<json spec>'

The spec names the mode ("steady", "startup", "kernels", "sweep" or
"sweep-serve", which also reads stdin), the framework, the model and the time
budgets.  The result is printed as one line
`BENCH-RESULT <json>` (anything else on stdout/stderr is the frameworks' own
chatter).  Nothing here is timed against a threshold: it only measures.
"""
import time

T_PROCESS = time.time()  # as early as possible: start-up is measured from the parent's launch

import json  # noqa: E402
import os  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402


def peak_rss_mb():
    # Linux: ru_maxrss in KiB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def current_rss_mb():
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return float("nan")


def emit(result):
    sys.stdout.flush()
    print("BENCH-RESULT " + json.dumps(result), flush=True)


# ------------------------------------------------------------------ startup

def run_startup(spec):
    """Process start -> end of the first training step (batch 32).

    Everything a user's script would do: import the framework, build (and
    compile) the model, make a batch, one optimizer step, the loss on the host."""
    from frameworks import RUNNERS
    from workloads import make_data
    fw, model = spec["framework"], spec["model"]
    xs, ys = make_data(model, 32, seed=1)
    t_import = time.time()
    r = RUNNERS[fw](model, spec)
    t_built = time.time()
    r.train_step(xs, ys)
    t_end = time.time()
    emit({"t_process": T_PROCESS, "t_import": t_import, "t_built": t_built, "t_end": t_end,
          "peak_rss_mb": peak_rss_mb(), "info": r.info()})


# ------------------------------------------------------------------- steady

def _fit_rate(r, xs, ys, bs, spec):
    """Training samples/s through fit over pre-generated data, after warm-up.

    Warm-up: two fits of two batches (the first compiles/specialises for this
    batch size).  Then the number of samples per timed fit is chosen so one
    fit takes about `rep_s` seconds (at least 2 batches, at most all the
    data), and fits are repeated for about `measure_s` seconds."""
    n_all = xs[0].shape[0]
    w = 2 * bs
    wx, wy = [a[:w] for a in xs], [a[:w] for a in ys]
    r.fit(wx, wy, bs, 1)
    t = time.perf_counter()
    r.fit(wx, wy, bs, 1)
    rate = w / (time.perf_counter() - t)
    n = int(rate * spec["rep_s"]) // bs * bs
    n = max(2 * bs, min(n, n_all // bs * bs))
    fx, fy = [a[:n] for a in xs], [a[:n] for a in ys]
    rates = []
    start = time.perf_counter()
    while True:
        t = time.perf_counter()
        r.fit(fx, fy, bs, 1)
        rates.append(n / (time.perf_counter() - t))
        spent = time.perf_counter() - start
        if len(rates) >= spec["max_reps"] or spent > 2 * spec["measure_s"]:
            break
        if spent >= spec["measure_s"] and (len(rates) >= spec["min_reps"] or n == 2 * bs):
            break  # enough, or so slow that even the smallest fit takes the whole budget
    return {"value": statistics.median(rates), "reps": len(rates), "n_per_fit": n,
            "all": rates}


def _predict_latency(r, xs, spec):
    """Median wall time of one predict call on one sample."""
    x1 = [a[:1] for a in xs]
    for _ in range(10):
        r.predict(x1)
    times = []
    start = time.perf_counter()
    while len(times) < 5000:
        t = time.perf_counter()
        r.predict(x1)
        times.append(time.perf_counter() - t)
        if len(times) >= 20 and time.perf_counter() - start > spec["predict_s"]:
            break
    return {"value": statistics.median(times) * 1e3, "reps": len(times),
            "p10": sorted(times)[len(times) // 10] * 1e3}


def _predict_rate(r, xs, spec, bs=1024):
    xb = [a[:bs] for a in xs]
    for _ in range(2):
        r.predict(xb)
    rates = []
    start = time.perf_counter()
    while len(rates) < 500:
        t = time.perf_counter()
        r.predict(xb)
        rates.append(bs / (time.perf_counter() - t))
        if len(rates) >= 3 and time.perf_counter() - start > spec["predict_s"]:
            break
    return {"value": statistics.median(rates), "reps": len(rates)}


def run_steady(spec):
    from frameworks import RUNNERS, blas_info
    from workloads import make_data
    fw, model = spec["framework"], spec["model"]
    xs, ys = make_data(model, spec["n_data"])
    data_mb = sum(a.nbytes for a in xs + ys) / 2**20
    r = RUNNERS[fw](model, spec)
    rss_built = current_rss_mb()
    res = {"metrics": {}, "errors": {}}
    jobs = [("train32", lambda: _fit_rate(r, xs, ys, 32, spec)),
            ("train256", lambda: _fit_rate(r, xs, ys, 256, spec)),
            ("predict1", lambda: _predict_latency(r, xs, spec)),
            ("predict1024", lambda: _predict_rate(r, xs, spec))]
    only = spec.get("metrics")
    for name, job in jobs:
        if only and name not in only:
            continue
        try:
            res["metrics"][name] = job()
        except Exception as err:  # one metric failing must not lose the others
            res["errors"][name] = f"{type(err).__name__}: {err}"[:400]
    res["peak_rss_mb"] = peak_rss_mb()
    res["rss_after_build_mb"] = rss_built
    res["data_mb"] = data_mb
    res["info"] = r.info()
    res["blas"] = blas_info()
    res["loadavg"] = os.getloadavg()
    emit(res)


# -------------------------------------------------------------------- sweep

def _warm_steps(r, xs, ys, spec):
    """`warmup_steps` untimed training steps (the first compiles: numba for
    gen, XLA for keras-jax, or allocates): their wall times."""
    warm = []
    for _ in range(spec["warmup_steps"]):
        t = time.perf_counter()
        r.train_step(xs, ys)
        warm.append(time.perf_counter() - t)
    return warm


def _timed_steps(r, xs, ys, spec):
    """Timed training steps until `budget` seconds are spent and at least
    `min_steps` were taken (at most `max_steps`). A point so slow that
    `max_timed_s` pass before `min_steps` stops early, with at least one
    timed step, so one slow point cannot stall the whole sweep."""
    times = []
    start = time.perf_counter()
    while True:
        t = time.perf_counter()
        r.train_step(xs, ys)
        times.append(time.perf_counter() - t)
        spent = time.perf_counter() - start
        if len(times) >= spec["max_steps"]:
            break
        if spent >= spec["budget"] and len(times) >= spec["min_steps"]:
            break
        if spent >= spec["max_timed_s"]:
            break
    return {"step_s": statistics.median(times), "min_s": min(times), "max_s": max(times),
            "steps": len(times), "timed_s": sum(times)}


def _train_step_times(r, xs, ys, spec):
    """Wall times of single training steps (train_on_batch-like, optimizer
    update included, loss back on the host) on one fixed batch: warm-up
    steps, then timed ones (_warm_steps, _timed_steps)."""
    warm = _warm_steps(r, xs, ys, spec)
    return dict(_timed_steps(r, xs, ys, spec), warmup_s=warm)


def run_sweep(spec):
    """The scaling sweep (benchmarks/sweep.py): every point of spec["points"]
    in this process, one after another; a fresh model per point."""
    import gc
    from frameworks import RUNNERS, blas_info
    from workloads import make_data
    fw = spec["framework"]
    res = {"points": [], "errors": {}}
    r, info = None, {}
    for pt in spec["points"]:
        key = f"T{pt['seq_len']}/u{pt['units']}/b{pt['batch']}"
        pspec = dict(spec, **pt)
        t0 = time.perf_counter()
        try:
            xs, ys = make_data("sweep", pt["batch"], seed=1, spec=pspec)
            r = RUNNERS[fw]("sweep", pspec)
            m = _train_step_times(r, xs, ys, pspec)
            m.update({k: pt[k] for k in ("seq_len", "units", "batch")})
            m["samples_per_s"] = pt["batch"] / m["step_s"]
            m["point_s"] = time.perf_counter() - t0
            m["loadavg"] = os.getloadavg()
            res["points"].append(m)
            print(f"  {fw} {key}: {m['step_s'] * 1e3:.3f} ms/step over {m['steps']} steps "
                  f"(first step {m['warmup_s'][0]:.2f}s)", file=sys.stderr, flush=True)
        except Exception as err:  # one point failing (memory...) must not lose the others
            res["errors"][key] = f"{type(err).__name__}: {err}"[:400]
        finally:
            if r is not None:
                info = r.info()
            r = xs = ys = None  # free this point's buffers before the next one
            gc.collect()
    res["info"] = info
    res["blas"] = blas_info()
    res["peak_rss_mb"] = peak_rss_mb()
    res["loadavg"] = os.getloadavg()
    emit(res)


def run_sweep_serve(spec):
    """One point of the sweep, timed in windows the parent asks for (sweep.py's
    paired confirmation: every framework's process alive at once, their
    windows alternating). Builds the model and runs its warm-up steps, prints
    `BENCH-READY`, then for each line on stdin, {"budget": s, "min_steps": n,
    "warmup_steps": k}, runs k untimed steps (the first steps after the
    process idled: caches and threads cold), times steps as _timed_steps does
    and prints `BENCH-WINDOW <json>`; on {"stop": true} or the end of stdin,
    `BENCH-RESULT` as run_sweep does."""
    from frameworks import RUNNERS, blas_info
    from workloads import make_data
    fw, pt = spec["framework"], spec["points"][0]
    pspec = dict(spec, **pt)
    xs, ys = make_data("sweep", pt["batch"], seed=1, spec=pspec)
    r = RUNNERS[fw]("sweep", pspec)
    warm = _warm_steps(r, xs, ys, pspec)
    print("BENCH-READY " + json.dumps({"warmup_s": warm}), flush=True)
    windows = []
    for line in sys.stdin:
        ask = json.loads(line)
        if ask.get("stop"):
            break
        m = _train_step_times(r, xs, ys, dict(pspec, **ask))
        windows.append(m)
        print("BENCH-WINDOW " + json.dumps(m), flush=True)
    emit({"windows": windows, "warmup_s": warm, "info": r.info(), "blas": blas_info(),
          "peak_rss_mb": peak_rss_mb(), "loadavg": os.getloadavg()})


def main():
    spec = json.loads(sys.argv[1])
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    mode = spec["mode"]
    if mode == "startup":
        run_startup(spec)
    elif mode == "steady":
        run_steady(spec)
    elif mode == "sweep":
        run_sweep(spec)
    elif mode == "sweep-serve":
        run_sweep_serve(spec)
    elif mode == "kernels":
        import kernels
        emit(kernels.breakdown(spec))
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main()
