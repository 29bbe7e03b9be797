"""gen vs Keras 3 (JAX, torch), PyTorch eager and torch.compile, side by side.

    python benchmarks/run.py                  # full run, ~15 min on 2 cores
    python benchmarks/run.py --quick          # one round, shorter budgets, no keras-torch, ~3-5 min
    python benchmarks/run.py --models mlp --frameworks gen,torch --rounds 2

What it does, in one run:
  1. regenerates the seed models (`python -m gen examples/<m>.py -o <work>/models/<m>/`);
  2. primes a numba cache directory owned by the run (the "warm" cache) with
     one steady-state run per model on minimal budgets;
  3. for each round, for each model, runs every framework in its own
     subprocess (the order rotates every round, so no framework always goes
     first or last) measuring, after warm-up:
       train32 / train256   training samples/s through `fit` (Keras fit, the
                            generated fit, a fit-like torch loop) on pre-made data
       predict1             median latency of one predict call on one sample (ms)
       predict1024          predict samples/s at batch 1024
       peak RSS             ru_maxrss of that process (MB)
     then the start-up processes: process launch -> end of the first training
     step (batch 32), numba cache warm, and for gen also cold (fresh
     NUMBA_CACHE_DIR);
  4. the per-kernel forward/backward breakdown of the generated modules
     (benchmarks/kernels.py) at batch 32 and 256;
  5. prints the table of medians over rounds, the ratio of gen to the fastest
     anchor (to PyTorch eager for start-up and memory, as the issue states the
     targets), the target and PASS/MISS; writes everything to a JSON file.

Every child process gets a copy of this environment without
OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE (set on the project's machine; they pick a
slower BLAS kernel).  Nothing outside the children is changed.  Each framework
runs in its own process so that the thread pools of JAX (XLA/Eigen), torch
(OpenMP) and numba (OpenMP) + OpenBLAS never compete inside one
process, and a framework's import cost and memory are its own.
"""
import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
WORKER = os.path.join(HERE, "worker.py")
sys.path.insert(0, HERE)

FRAMEWORKS = ("gen", "keras-jax", "keras-torch", "torch", "torch-compile")
# opt-in diagnostic column, never an anchor: gen with NUMBA_NUM_THREADS=1 and
# OPENBLAS_NUM_THREADS=1 (shows what thread hand-offs cost on this machine)
EXTRA = ("gen-1t",)
MODELS = ("mlp", "twitter")
BLAS_VARS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")

# metric -> (label, unit, higher is better)
METRICS = {
    "train32": ("train samples/s, batch 32 (fit)", "samples/s", True),
    "train256": ("train samples/s, batch 256 (fit)", "samples/s", True),
    "predict1": ("predict latency, batch 1", "ms", False),
    "predict1024": ("predict samples/s, batch 1024", "samples/s", True),
    "startup_warm": ("start -> 1st train step, cache warm", "s", False),
    "startup_cold": ("start -> 1st train step, cache cold", "s", False),
    "peak_rss": ("peak RSS of the steady-state run", "MB", False),
}

# (model, metric) -> (kind, value, reference); kind ">=" / "<=" compare
# gen / reference; "abs<=" compares gen's own value.  From issue 5.
TARGETS = {
    ("mlp", "train32"): (">=", 2.0, "fastest"),
    ("mlp", "train256"): (">=", 2.0, "fastest"),
    ("twitter", "train32"): (">=", 3.0, "fastest"),
    ("twitter", "train256"): (">=", 2.5, "fastest"),
    ("mlp", "predict1"): ("<=", 0.25, "fastest"),
    ("twitter", "predict1"): ("<=", 0.25, "fastest"),
    ("mlp", "predict1024"): (">=", 1.5, "fastest"),
    ("twitter", "predict1024"): (">=", 2.0, "fastest"),
    ("mlp", "startup_warm"): ("<=", 0.5, "torch"),
    ("twitter", "startup_warm"): ("<=", 0.5, "torch"),
    ("twitter", "startup_cold"): ("abs<=", 15.0, None),
    ("mlp", "peak_rss"): ("<=", 0.5, "torch"),
    ("twitter", "peak_rss"): ("<=", 0.5, "torch"),
}

PROFILES = {
    # rep_s: seconds per timed fit; measure_s: seconds of timed fits per metric;
    # predict_s: seconds per predict metric; n_data: pre-made samples per model
    "full": {"rounds": 3, "startup_rounds": 3, "rep_s": 0.6, "measure_s": 2.0, "min_reps": 3,
             "max_reps": 30, "predict_s": 0.8, "kernel_steps": 10,
             "n_data": {"mlp": 8192, "twitter": 2048}},
    "quick": {"rounds": 1, "startup_rounds": 1, "rep_s": 0.4, "measure_s": 0.8, "min_reps": 2,
              "max_reps": 10, "predict_s": 0.3, "kernel_steps": 5,
              "n_data": {"mlp": 4096, "twitter": 1024}},
}


def child_env(extra=None):
    """This process's environment without the slow-BLAS overrides, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if k not in BLAS_VARS}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def run_worker(spec, env, timeout):
    """Run one worker process; returns (result dict | None, error str | None, launch time)."""
    cmd = [sys.executable, WORKER, json.dumps(spec)]
    t_launch = time.time()
    try:
        p = subprocess.run(cmd, env=env, cwd=HERE, capture_output=True, text=True,
                           timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, f"timeout after {timeout}s", t_launch
    for line in reversed(p.stdout.splitlines()):
        if line.startswith("BENCH-RESULT "):
            return json.loads(line[len("BENCH-RESULT "):]), None, t_launch
    tail = (p.stderr or p.stdout).strip().splitlines()[-3:]
    return None, f"exit {p.returncode}: " + " | ".join(tail)[-400:], t_launch


def regenerate(models, work, use_generated):
    paths = {}
    for m in models:
        if use_generated:
            d = os.path.join(REPO, "generated", m)
        else:
            d = os.path.join(work, "models", m)
            cmd = [sys.executable, "-m", "gen", os.path.join("examples", f"{m}.py"), "-o", d + "/"]
            t = time.perf_counter()
            p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
            if p.returncode != 0:
                raise SystemExit(f"gen failed for {m}:\n{p.stdout}\n{p.stderr}")
            log(f"  generated {m} in {time.perf_counter() - t:.2f}s -> {d}")
        pys = sorted(f for f in os.listdir(d) if f.endswith(".py"))
        if len(pys) != 1:
            raise SystemExit(f"expected one module in {d}, found {pys}")
        paths[m] = os.path.join(d, pys[0])
    return paths


def rotate(seq, k):
    seq = list(seq)
    k %= len(seq)
    return seq[k:] + seq[:k]


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="one round, short budgets (~3-4 min)")
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--frameworks", default=None,
                    help=f"comma list from {FRAMEWORKS + EXTRA} (default: the first five; "
                         f"--quick drops keras-torch)")
    ap.add_argument("--rounds", type=int, help="rounds of steady-state measurements")
    ap.add_argument("--startup-rounds", type=int, help="rounds of start-up measurements")
    ap.add_argument("--no-startup", action="store_true")
    ap.add_argument("--no-kernels", action="store_true", help="skip the per-kernel breakdown")
    ap.add_argument("--use-generated", action="store_true",
                    help="time generated/<model>/ as committed instead of regenerating")
    ap.add_argument("--json", help="also write the raw results here")
    ap.add_argument("--markdown", action="store_true", help="print the table as Markdown too")
    ap.add_argument("--timeout", type=float, default=600, help="per child process, seconds")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    a = ap.parse_args(argv)

    prof = dict(PROFILES["quick" if a.quick else "full"])
    if a.rounds:
        prof["rounds"] = a.rounds
    if a.startup_rounds is not None:
        prof["startup_rounds"] = a.startup_rounds
    models = [m for m in a.models.split(",") if m]
    if a.frameworks is None:  # --quick leaves out Keras-on-torch: slowest anchor, slowest to run
        a.frameworks = ",".join(f for f in FRAMEWORKS if not (a.quick and f == "keras-torch"))
    fws = [f for f in a.frameworks.split(",") if f]
    for f in fws:
        if f not in FRAMEWORKS + EXTRA:
            raise SystemExit(f"unknown framework {f!r}; choose from {FRAMEWORKS + EXTRA}")

    t_run = time.time()
    work = tempfile.mkdtemp(prefix="gen-bench-")
    warm_cache = os.path.join(work, "numba-cache")
    inductor_cache = os.path.join(work, "inductor-cache")
    log(f"gen benchmark: models {models}, frameworks {fws}, {prof['rounds']} round(s); "
        f"work dir {work}")
    load0 = os.getloadavg()
    if load0[0] > 1.0:
        log(f"  WARNING: load average {load0[0]:.1f} on {os.cpu_count()} CPUs before the run: "
            f"other processes compete for the cores; threaded frameworks suffer most")
    paths = regenerate(models, work, a.use_generated)

    def env_for(fw, cache=warm_cache):
        from frameworks import FRAMEWORK_ENV
        return child_env(dict(FRAMEWORK_ENV[fw], NUMBA_CACHE_DIR=cache,
                              TORCHINDUCTOR_CACHE_DIR=inductor_cache))

    def spec(mode, fw, model, **kw):
        s = {"mode": mode, "framework": fw, "model": model, "gen_path": paths[model],
             "n_data": prof["n_data"][model]}
        s.update({k: prof[k] for k in ("rep_s", "measure_s", "min_reps", "max_reps", "predict_s")})
        s.update(kw)
        return s

    # the warm cache: one untimed steady-state run per model, on small
    # budgets, compiles every kernel the rounds call into it (a start-up run
    # alone left fit's and predict's batch-size paths to round 1, whose peak
    # RSS then counted numba's compiler: mlp 218 against 150 MB). rep_s is
    # big enough for a fit over all of mlp's data: its finite check takes
    # the parallel kernel from 2M values.
    if "gen" in fws:
        for m in models:
            t = time.perf_counter()
            res, err, _ = run_worker(spec("steady", "gen", m, rep_s=0.05, measure_s=0.001, min_reps=1,
                                          max_reps=1, predict_s=0.001), env_for("gen"), a.timeout)
            log(f"  primed numba cache for {m} in {time.perf_counter() - t:.1f}s"
                + (f"  ERROR {err}" if err else ""))

    steady = {(m, f): [] for m in models for f in fws}
    startup = {(m, f): [] for m in models for f in fws + (["gen-cold"] if "gen" in fws else [])}
    errors = []
    loads = [load0]
    for r in range(prof["rounds"]):
        for m in models:
            for f in rotate(fws, r):
                t = time.perf_counter()
                res, err, _ = run_worker(spec("steady", f, m), env_for(f), a.timeout)
                took = time.perf_counter() - t
                if err:
                    errors.append(f"round {r + 1} {m} {f} steady: {err}")
                    log(f"  round {r + 1} {m:<8} {f:<14} steady  ERROR {err}")
                    continue
                for k, e in res["errors"].items():
                    errors.append(f"round {r + 1} {m} {f} {k}: {e}")
                steady[(m, f)].append(res)
                loads.append(tuple(res["loadavg"]))
                vals = "  ".join(f"{k} {v['value']:.4g}" for k, v in res["metrics"].items())
                log(f"  round {r + 1} {m:<8} {f:<14} steady  {took:5.1f}s  {vals}  "
                    f"rss {res['peak_rss_mb']:.0f}MB  load {res['loadavg'][0]:.1f}")
        if a.no_startup or r >= prof["startup_rounds"]:
            continue
        for m in models:
            kinds = fws + (["gen-cold"] if "gen" in fws else [])
            for f in rotate(kinds, r):
                fw = "gen" if f == "gen-cold" else f
                cache = tempfile.mkdtemp(prefix="numba-cold-", dir=work) if f == "gen-cold" \
                    else warm_cache
                sp = spec("startup", fw, m)
                if f == "gen-cold":
                    # a fresh copy of the module too: numba may keep its cache beside the
                    # source (__pycache__, the in-tree locator) whatever NUMBA_CACHE_DIR says
                    sp["gen_path"] = os.path.join(cache, os.path.basename(paths[m]))
                    shutil.copyfile(paths[m], sp["gen_path"])
                res, err, t_launch = run_worker(sp, env_for(fw, cache), a.timeout)
                if f == "gen-cold":
                    shutil.rmtree(cache, ignore_errors=True)
                if err:
                    errors.append(f"round {r + 1} {m} {f} startup: {err}")
                    log(f"  round {r + 1} {m:<8} {f:<14} startup ERROR {err}")
                    continue
                res["seconds"] = res["t_end"] - t_launch
                res["interpreter_s"] = res["t_process"] - t_launch
                res["import_s"] = res["t_built"] - t_launch
                startup[(m, f)].append(res)
                log(f"  round {r + 1} {m:<8} {f:<14} startup {res['seconds']:5.2f}s "
                    f"(model built at {res['import_s']:.2f}s)")

    kern = {}
    for fw in [f for f in ("gen", "gen-1t") if f in fws and not a.no_kernels]:
        for m in models:
            res, err, _ = run_worker({"mode": "kernels", "framework": fw, "model": m,
                                      "gen_path": paths[m], "batch_sizes": [32, 256],
                                      "steps": prof["kernel_steps"]},
                                     env_for(fw), a.timeout)
            label = m if fw == "gen" else f"{m} ({fw})"
            if err:
                errors.append(f"kernels {label}: {err}")
                log(f"  kernels {label} ERROR {err}")
            else:
                res["model"] = label
                kern[label] = res

    table = summarise(models, fws, steady, startup)
    out = {"machine": machine_info(), "profile": prof, "models": models, "frameworks": fws,
           "table": table, "steady": {f"{m}/{f}": v for (m, f), v in steady.items()},
           "startup": {f"{m}/{f}": v for (m, f), v in startup.items()}, "kernels": kern,
           "errors": errors, "loadavg": loads, "minutes": (time.time() - t_run) / 60,
           "gen_paths": paths,
           "gen_modules": {m: module_fingerprint(p) for m, p in paths.items()}}
    print_report(out)
    if a.markdown:
        print()
        print(markdown_table(out))
    path = a.json or os.path.join(work, "results.json")
    with open(path, "w") as f:
        json.dump(out, f, indent=1, default=str)
    print(f"\nraw results: {path}")
    if not a.keep and not a.json:
        # keep only results.json
        for d in ("models", "numba-cache", "inductor-cache"):
            shutil.rmtree(os.path.join(work, d), ignore_errors=True)
    return 0


def summarise(models, fws, steady, startup):
    """Median over rounds per (model, metric, framework); ratio and verdict."""
    rows = []
    for m in models:
        for metric in METRICS:
            vals, spread = {}, {}
            for f in fws:
                if metric in ("startup_warm", "startup_cold"):
                    key = "gen-cold" if (metric == "startup_cold" and f == "gen") else f
                    if metric == "startup_cold" and f != "gen":
                        continue
                    xs = [r["seconds"] for r in startup.get((m, key), [])]
                elif metric == "peak_rss":
                    xs = [r["peak_rss_mb"] for r in steady[(m, f)]]
                else:
                    xs = [r["metrics"][metric]["value"] for r in steady[(m, f)]
                          if metric in r["metrics"]]
                if xs:
                    vals[f] = statistics.median(xs)
                    spread[f] = (min(xs), max(xs), len(xs))
            higher = METRICS[metric][2]
            anchors = {f: v for f, v in vals.items() if not f.startswith("gen")}
            tgt = TARGETS.get((m, metric))
            ref_name = None
            if tgt and tgt[2] == "torch":
                ref_name = "torch" if "torch" in anchors else None
            elif anchors:
                ref_name = (max if higher else min)(anchors, key=anchors.get)
            ratio = vals["gen"] / anchors[ref_name] if ("gen" in vals and ref_name) else None
            verdict = None
            if tgt and "gen" in vals:
                kind, goal, _ = tgt
                if kind == "abs<=":
                    verdict = "PASS" if vals["gen"] <= goal else "MISS"
                elif ratio is not None:
                    verdict = "PASS" if (ratio >= goal if kind == ">=" else ratio <= goal) else "MISS"
            rows.append({"model": m, "metric": metric, "values": vals, "spread": spread,
                         "ref": ref_name, "ratio": ratio, "target": tgt, "verdict": verdict})
    return rows


def _fmt(v, unit):
    if v is None:
        return "-"
    if unit == "samples/s":
        return f"{v:,.0f}"
    if unit == "ms":
        return f"{v:.3f}"
    if unit == "s":
        return f"{v:.2f}"
    return f"{v:.0f}"


def _target_str(t):
    if not t:
        return ""
    kind, goal, ref = t
    if kind == "abs<=":
        return f"<= {goal:g} s"
    who = "torch eager" if ref == "torch" else "fastest"
    return f"{kind} {goal:g}x {who}"


def table_rows(out):
    fws = out["frameworks"]
    head = ["model", "metric"] + fws + ["ref", "gen/ref", "target", ""]
    rows = []
    for r in out["table"]:
        label, unit, _ = METRICS[r["metric"]]
        cells = [r["model"], f"{label} [{unit}]"]
        cells += [_fmt(r["values"].get(f), unit) for f in fws]
        cells += [r["ref"] or "-", f"{r['ratio']:.2f}x" if r["ratio"] is not None else "-",
                  _target_str(r["target"]), r["verdict"] or ""]
        rows.append(cells)
    return head, rows


def markdown_table(out):
    head, rows = table_rows(out)
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(c for c in row) + " |" for row in rows]
    return "\n".join(lines)


def print_report(out):
    head, rows = table_rows(out)
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    print()
    print(f"Medians over {out['profile']['rounds']} round(s) "
          f"(start-up: {out['profile']['startup_rounds']}); ratio = gen / ref "
          f"(fastest anchor, or PyTorch eager where the issue says so)")
    print("  ".join(h.ljust(w) for h, w in zip(head, widths)))
    for row in rows:
        print("  ".join(str(c).rjust(w) if i >= 2 else str(c).ljust(w)
                        for i, (c, w) in enumerate(zip(row, widths))))
    print("\nspread over rounds (min..max of the per-round medians):")
    for r in out["table"]:
        unit = METRICS[r["metric"]][1]
        parts = [f"{f} {_fmt(lo, unit)}..{_fmt(hi, unit)}" for f, (lo, hi, n) in r["spread"].items()
                 if n > 1]
        if parts:
            print(f"  {r['model']:<8} {r['metric']:<13} " + "; ".join(parts))

    print("\nWhat ran (first steady-state process of each framework):")
    seen = set()
    for key, results in out["steady"].items():
        m, f = key.split("/")
        if not results or f in seen:
            continue
        seen.add(f)
        res = results[0]
        info = {k: v for k, v in res["info"].items() if k != "dynamo_graph_breaks"}
        print(f"  {f}: {info}")
        for b in res["blas"]:
            print(f"      {b.get('user_api')}: {b.get('internal_api')} {b.get('version') or ''} "
                  f"kernel={b.get('architecture', '-')} threads={b.get('num_threads')} "
                  f"{b.get('file')}{'  <- ' + b['used_by'] if b.get('used_by') else ''}")
    for key, results in out["steady"].items():
        m, f = key.split("/")
        if f == "torch-compile" and results:
            info = results[-1]["info"]
            print(f"  torch.compile on {m}: {info.get('dynamo_unique_graphs')} graph(s), "
                  f"graph breaks: {info.get('dynamo_graph_breaks') or 'none'}")
    mi = out["machine"]
    print(f"\nmachine: {mi['cpu']}, {mi['cpus']} CPUs; python {mi['python']}; "
          f"{mi['versions']}")
    print(f"repo at {mi['git'].get('commit')} with {mi['git'].get('dirty_files')} modified "
          f"tracked file(s); generated modules: " + ", ".join(
              f"{m} {fp['sha256']}" for m, fp in out.get("gen_modules", {}).items()))
    la = [l[0] for l in out["loadavg"]]
    print(f"load average (1 min) seen by the workers: min {min(la):.1f}, median "
          f"{statistics.median(la):.1f}, max {max(la):.1f}; "
          f"run took {out['minutes']:.1f} min")
    if out["kernels"]:
        import kernels
        print("\nPer-kernel breakdown of the generated modules (one training step via fit):")
        for m, res in out["kernels"].items():
            print(kernels.format_breakdown(res))
    if out["errors"]:
        print("\nerrors:")
        for e in out["errors"]:
            print("  " + e)


def machine_info():
    cpu = platform.processor() or "?"
    try:
        txt = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        for line in txt.splitlines():
            if line.startswith("Model name:"):
                cpu = line.split(":", 1)[1].strip()
    except OSError:
        pass
    versions = {}
    for mod in ("numpy", "numba", "scipy", "keras", "torch", "jax", "jaxlib"):
        try:
            p = subprocess.run([sys.executable, "-c",
                                f"import importlib.metadata as m; print(m.version('{mod}'))"],
                               capture_output=True, text=True, env=child_env())
            versions[mod] = p.stdout.strip() or "-"
        except OSError:
            versions[mod] = "?"
    git = {}
    for key, cmd in (("commit", ["git", "rev-parse", "--short", "HEAD"]),
                     ("dirty_files", ["git", "status", "--porcelain", "--untracked-files=no"])):
        try:  # read-only queries
            p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
            git[key] = p.stdout.strip() if key == "commit" else len(p.stdout.splitlines())
        except OSError:
            git[key] = "?"
    return {"cpu": cpu, "cpus": os.cpu_count(), "python": platform.python_version(),
            "versions": versions, "kernel": platform.release(), "git": git}


def module_fingerprint(path):
    import hashlib
    with open(path, "rb") as f:
        data = f.read()
    return {"sha256": hashlib.sha256(data).hexdigest()[:16],
            "header": data.split(b"\n", 1)[0].decode(errors="replace")}


if __name__ == "__main__":
    sys.exit(main())
