"""Where a training step of a generated module spends its time.

    python benchmarks/kernels.py generated/twitter/model.py --batch 32 256 [--steps 20]

(run.py runs it in its own worker process with the cleaned BLAS environment.)

Method: after warm-up (every kernel compiled for these types), every numba
kernel the Python side calls (module globals used by `_forward`,
`_backward`, the loss / metric / optimizer tables and the runtime's checks)
is replaced by a thin timing wrapper.  Each call is attributed to its call
site: inside `_forward` / `_backward` the site is the model-file line the
generator wrote above the call (`# twitter.py:13  lstm_out = LSTM(32)(x)`),
elsewhere it is the runtime method (`_metrics`, `_gradients`,
`_train_step`, `_prep_inputs`...).  Steps run through `fit` over pre-made
data, the same path run.py times.

Reported per (phase, kernel, site): calls per step, microseconds per step
(wall time of the dispatcher call, so it includes numba's argument
dispatch), share of the step.  Also:

  * step time without wrappers; "runtime" = step - sum(kernels): the Python
    work between kernels (batch gather, validation, dict building...);
  * dispatch: the cost of calling a do-nothing numba function with the same
    arguments (typeof + unboxing every array), times calls per step;
  * the launch + join cost of an empty `prange` region (each parallel kernel
    pays it once per region; the LSTM kernels open one per timestep).
"""
import argparse
import collections
import os
import re
import statistics
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

SITE_RE = re.compile(r"^\s*# (\S+\.py:\d+)\s+(.*)$")


def _site_map(mod):
    """generated-file line number -> 'model.py:13 LSTM(32)' for _forward/_backward bodies."""
    with open(mod.__file__) as f:
        lines = f.read().splitlines()
    sites, current = {}, None
    for i, line in enumerate(lines, start=1):
        m = SITE_RE.match(line)
        if m:
            src = m.group(2)
            call = re.search(r"([A-Za-z_][\w.]*\(.*)$", src.split("=", 1)[-1].strip())
            current = f"{m.group(1)} {call.group(1) if call else src}"[:60]
        elif re.match(r"^\s*def ", line):
            current = None
        sites[i] = current
    return sites


class Recorder:
    def __init__(self, sites, model_class_file):
        self.sites = sites
        self.file = model_class_file
        self.times = collections.defaultdict(float)   # (phase, kernel, site) -> seconds
        self.calls = collections.defaultdict(int)
        self.args = {}                                # (kernel, site) -> args of one call
        self.on = True

    def wrap(self, name, fn):
        rec = self

        def timed(*args):
            if not rec.on:
                return fn(*args)
            f = sys._getframe(1)
            caller = f.f_code.co_name
            if caller in ("_forward", "_backward") and f.f_code.co_filename == rec.file:
                phase = "forward" if caller == "_forward" else "backward"
                site = ("every layer, one call" if name == "_forward_small"
                        else rec.sites.get(f.f_lineno) or "(input views)")
            else:
                phase, site = _runtime_phase(caller, name), caller
            t = time.perf_counter()
            out = fn(*args)
            dt = time.perf_counter() - t
            key = (phase, name, site)
            rec.times[key] += dt
            rec.calls[key] += 1
            if (name, site) not in rec.args:
                rec.args[(name, site)] = args
            return out

        timed.__wrapped__ = fn
        return timed


def _runtime_phase(caller, name):
    if caller == "_metrics":
        return "loss+metrics"
    if caller == "_gradients":
        return "loss backward"
    if caller == "_train_step":
        return "optimizer" if name.endswith("_update") else "finite check"
    if caller in ("_check_finite", "_ids", "_prep_inputs", "_prep_targets"):
        return "input checks"
    return "runtime"


def instrument(mod, rec):
    """Replace the kernels the Python side calls by timing wrappers."""
    wrapped = {}
    for name, obj in list(vars(mod).items()):
        # the module's own test: numba kernels and its Python entry points;
        # _forward_small and _forward_owned are whole forward passes (small
        # batches of models without LSTM), timed as one kernel; _*_owned the
        # updates of owned-rows steps (runtime: _opt_owned); _train_parts and
        # _forward_parts whole passes in parts (gen/parts.py), _rt_sum_parts
        # their gradients' sum
        if mod._rt_is_kernel(obj) and (not name.startswith("_") or name in (
                "_rt_first_nonfinite", "_forward_small", "_forward_owned", "_sgd_owned", "_rmsprop_owned", "_adam_owned",
                "_train_parts", "_forward_parts", "_rt_sum_parts")):
            w = rec.wrap(name, obj)
            setattr(mod, name, w)
            wrapped[obj] = w
    for table in ("_LOSS_KERNELS", "_ACCURACY_KERNELS", "_OPTIMIZER_KERNELS", "_OPTIMIZER_OWNED_KERNELS"):
        t = getattr(mod, table, None)
        if not t:
            continue
        for k, v in list(t.items()):
            if isinstance(v, tuple):
                t[k] = tuple(wrapped.get(f, f) for f in v)
            else:
                t[k] = wrapped.get(v, v)
    return wrapped


def _restore(mod, wrapped):
    for orig, w in wrapped.items():
        for name, obj in list(vars(mod).items()):
            if obj is w:
                setattr(mod, name, orig)
    for table in ("_LOSS_KERNELS", "_ACCURACY_KERNELS", "_OPTIMIZER_KERNELS", "_OPTIMIZER_OWNED_KERNELS"):
        t = getattr(mod, table, None)
        for k, v in list((t or {}).items()):
            if isinstance(v, tuple):
                t[k] = tuple(getattr(f, "__wrapped__", f) for f in v)
            else:
                t[k] = getattr(v, "__wrapped__", v)


def _noop_dispatch_us(args, reps=300):
    """Median cost of calling a do-nothing njit function with these arguments."""
    import numba
    names = ", ".join(f"a{i}" for i in range(len(args)))
    ns = {}
    exec(f"def _noop({names}):\n    return None\n", ns)
    f = numba.njit(ns["_noop"])
    f(*args)
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        f(*args)
        ts.append(time.perf_counter() - t)
    return statistics.median(ts) * 1e6


def _prange_launch_us(reps=300):
    import numba
    from numba import prange

    @numba.njit(parallel=True)
    def touch(a):
        for i in prange(a.shape[0]):
            a[i] += 1.0

    a = np.zeros(numba.get_num_threads(), np.float32)
    touch(a)
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        touch(a)
        ts.append(time.perf_counter() - t)

    @numba.njit
    def touch1(a):
        for i in range(a.shape[0]):
            a[i] += 1.0

    touch1(a)
    ts1 = []
    for _ in range(reps):
        t = time.perf_counter()
        touch1(a)
        ts1.append(time.perf_counter() - t)
    ts.sort()
    return (statistics.median(ts) * 1e6, ts[len(ts) * 9 // 10] * 1e6,
            statistics.median(ts1) * 1e6)


def _wrapper_us(reps=2000):
    """What a timing wrapper itself costs per call (frame lookup, dict updates)."""
    rec = Recorder({}, "")
    f = rec.wrap("noop", lambda *a: None)
    t = time.perf_counter()
    for _ in range(reps):
        f(1, 2, 3)
    return (time.perf_counter() - t) / reps * 1e6


def _fit_step_seconds(m, x, y, bs, steps):
    n = bs * steps
    t = time.perf_counter()
    m.fit(x, y, epochs=1, batch_size=bs, shuffle=True, verbose=0)
    return (time.perf_counter() - t) / (n // bs)


def breakdown(spec):
    """spec: gen_path, model, batch_sizes, steps.  Returns a JSON-able dict."""
    from frameworks import load_generated
    from workloads import make_data
    model = spec["model"]
    mod = load_generated(spec["gen_path"], f"genbench_{model}")
    steps = int(spec.get("steps", 10))
    out = {"model": model, "batches": {}}
    for bs in spec["batch_sizes"]:
        xs, ys = make_data(model, bs * steps, seed=2)
        x = xs[0] if len(xs) == 1 else xs
        y = ys[0] if len(ys) == 1 else ys
        m = mod.Model(seed=0)
        # warm-up: compile / load every kernel for these types, touch all buffers
        wx = [a[:2 * bs] for a in xs]
        wy = [a[:2 * bs] for a in ys]
        m.fit(wx[0] if len(wx) == 1 else wx, wy[0] if len(wy) == 1 else wy,
              epochs=2, batch_size=bs, verbose=0)
        plain = [_fit_step_seconds(m, x, y, bs, steps) for _ in range(3)]
        step_s = statistics.median(plain)

        rec = Recorder(_site_map(mod), mod.__file__)
        wrapped = instrument(mod, rec)
        m2 = mod.Model(seed=0)  # takes the wrapped optimizer kernel
        m2.fit(wx[0] if len(wx) == 1 else wx, wy[0] if len(wy) == 1 else wy,
               epochs=1, batch_size=bs, verbose=0)
        rec.times.clear()
        rec.calls.clear()
        reps = 3
        t = time.perf_counter()
        for _ in range(reps):
            m2.fit(x, y, epochs=1, batch_size=bs, shuffle=True, verbose=0)
        wrapped_step_s = (time.perf_counter() - t) / (reps * steps)
        nsteps = reps * steps
        rec.on = False
        _restore(mod, wrapped)

        rows = []
        for key, sec in rec.times.items():
            phase, name, site = key
            calls = rec.calls[key] / nsteps
            disp = _noop_dispatch_us(rec.args[(name, site)])
            rows.append({"phase": phase, "kernel": name, "site": site,
                         "calls_per_step": calls, "us_per_step": sec / nsteps * 1e6,
                         "dispatch_us_per_step": disp * calls})
        rows.sort(key=lambda r: -r["us_per_step"])
        kern_us = sum(r["us_per_step"] for r in rows)
        out["batches"][str(bs)] = {
            "step_us": step_s * 1e6, "step_us_instrumented": wrapped_step_s * 1e6,
            "samples_per_s": bs / step_s, "kernels_us": kern_us,
            # Python between kernels, from the instrumented run itself (the
            # wrappers add ~1 us per call, subtracted); the plain step time is
            # measured separately and can differ on a noisy machine
            "runtime_us": max(0.0, wrapped_step_s * 1e6 - kern_us
                              - sum(r["calls_per_step"] for r in rows) * _wrapper_us()),
            "dispatch_us": sum(r["dispatch_us_per_step"] for r in rows),
            "kernel_calls_per_step": sum(r["calls_per_step"] for r in rows),
            "rows": rows}
    launch, launch90, serial = _prange_launch_us()
    out["prange_launch_us"] = launch
    out["prange_launch_p90_us"] = launch90
    out["serial_call_us"] = serial
    import numba
    out["numba_threads"] = numba.get_num_threads()
    try:
        out["threading_layer"] = numba.threading_layer()
    except ValueError:
        out["threading_layer"] = "?"
    return out


def format_breakdown(res, top=14):
    lines = []
    for bs, b in res["batches"].items():
        lines.append(f"\n{res['model']}  batch {bs}: step {b['step_us']:.0f} us "
                     f"({b['samples_per_s']:.0f} samples/s through fit; instrumented step "
                     f"{b['step_us_instrumented']:.0f} us); kernels "
                     f"{b['kernels_us']:.0f} us in {b['kernel_calls_per_step']:.0f} calls, "
                     f"runtime (Python between kernels) {b['runtime_us']:.0f} us, "
                     f"of which numba dispatch ~{b['dispatch_us']:.0f} us")
        phases = collections.defaultdict(float)
        for r in b["rows"]:
            phases[r["phase"]] += r["us_per_step"]
        phases["runtime (not in kernels)"] = b["runtime_us"]
        lines.append("  by phase: " + ", ".join(
            f"{p} {us:.0f} us ({100 * us / b['step_us_instrumented']:.0f}%)"
            for p, us in sorted(phases.items(), key=lambda kv: -kv[1])))
        lines.append(f"  {'phase':<13} {'kernel':<34} {'site':<44} {'calls':>5} "
                     f"{'us/step':>9} {'%':>5} {'disp us':>8}   (% of the instrumented step)")
        for r in b["rows"][:top]:
            lines.append(f"  {r['phase']:<13} {r['kernel']:<34} {r['site'][:44]:<44} "
                         f"{r['calls_per_step']:>5.0f} {r['us_per_step']:>9.1f} "
                         f"{100 * r['us_per_step'] / b['step_us_instrumented']:>5.1f} "
                         f"{r['dispatch_us_per_step']:>8.1f}")
        rest = b["rows"][top:]
        if rest:
            lines.append(f"  ({len(rest)} more rows: "
                         f"{sum(r['us_per_step'] for r in rest):.0f} us together)")
    lines.append(f"\n  numba: {res['numba_threads']} threads, layer {res['threading_layer']}; "
                 f"empty prange region {res['prange_launch_us']:.1f} us (p90 "
                 f"{res.get('prange_launch_p90_us', float('nan')):.1f} us) vs serial call "
                 f"{res['serial_call_us']:.1f} us")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("gen_path")
    ap.add_argument("--model", help="mlp | twitter (default: guessed from the path)")
    ap.add_argument("--batch", type=int, nargs="+", default=[32, 256])
    ap.add_argument("--steps", type=int, default=10)
    a = ap.parse_args()
    model = a.model or ("twitter" if "twitter" in a.gen_path else "mlp")
    res = breakdown({"gen_path": a.gen_path, "model": model, "batch_sizes": a.batch,
                     "steps": a.steps})
    print(format_breakdown(res))


if __name__ == "__main__":
    main()
