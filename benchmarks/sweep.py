"""Scaling sweep of issue 5: gen vs Keras 3 on JAX and PyTorch eager over
sequence length x LSTM units x batch size.

    python benchmarks/sweep.py                  # 27 points x 3 frameworks, close ones again: ~7-20 min on 2 cores
    python benchmarks/sweep.py --quick          # 8 points, tiny budget: a smoke test, ~1.5-2 min
    python benchmarks/sweep.py --units 512 --batches 32,256 --budget 3
    python benchmarks/sweep.py --points 400x512x256,25x32x1 --rounds 3
    python benchmarks/sweep.py --markdown --json sweep.json

The model of every point (F = 32 input features, float input, no embedding):

    inputs = Input(shape=(T, 32)); x = LSTM(units)(inputs)
    out = Dense(1, activation='sigmoid')(x); model = Model(inputs, outputs=out)
    model.compile(optimizer='rmsprop', loss='binary_crossentropy')

What it does:
  1. writes that model file for every (T, units) and generates it with
     `python -m gen <file> -o <work>/models/t<T>_u<units>/`;
  2. for each round, for each LSTM width (a "group": every T x batch point of
     that width), runs every framework in its own subprocess (worker.py, mode
     "sweep"); the framework order rotates from group to group and round to
     round.  Inside the process each point gets a fresh model and one fixed
     batch of pre-made data, 2 untimed warm-up steps (the first compiles: numba
     for gen, XLA for keras-jax), then single training steps (train_on_batch
     for gen and Keras, zero_grad/forward/loss/backward/step/loss.item() for
     torch) until `--budget` seconds are spent (at least 3 steps, unless a
     point is so slow that 10 x budget passes first);
  3. confirms the close points: a point whose gen / fastest anchor ratio
     lies within --confirm-band (default 0.8-1.25) after those rounds, where
     one round's noise on this kind of machine can flip the verdict, is
     measured again by gen and by every anchor within 2x of that point's
     fastest, paired: one process per framework, all alive at once, each
     built and warmed up, then taking turns, --confirm-rounds x 3 windows
     each (default 2 x 3) of budget / 2 seconds (one untimed step, then
     timed steps), 0.1 s apart, the first of each turn rotating; so every
     framework is timed in the same seconds of the machine's state.  Its
     figures are then medians over its first rounds and those windows,
     whichever way they move the ratio;
  4. measures again where gen's step time looks steep in T: where it grows
     more than 1.2x linear between two lengths of a (units, batch), gen runs
     those lengths again, one after the other in one process, --linear-rounds
     times (default 3; the first rounds ran them minutes apart, in whatever
     state the machine was in), and that growth comes from those medians;
  5. prints, per point, samples/s = batch / median step time for every
     framework, gen / the fastest anchor and PASS (>= 1.0) or MISS; and per
     (units, batch), how gen's step time grows with T: time(100)/time(25) and
     time(400)/time(100), 4.0 if linear (called linear within 3.0-5.5).

Child processes get this environment without OPENBLAS_CORETYPE /
OPENBLAS_L2_SIZE (as run.py does); gen's numba cache directory belongs to the
run.  Medians over rounds of each process's median.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)

from frameworks import FRAMEWORK_ENV  # noqa: E402
from harness import (EXTRA, FRAMEWORKS, Served, child_env, log, machine_info,  # noqa: E402
                     module_fingerprint, rotate, run_worker)
from sweep_analysis import (LINEAR_CONFIRM_ABOVE, close_points, linear_runs,  # noqa: E402
                            linearity, paired_runs, paired_windows, steep_growth, summarise)
from sweep_report import markdown_tables, print_report  # noqa: E402
from workloads import SWEEP_FEATURES, sweep_model_source  # noqa: E402

DEFAULT_FRAMEWORKS = ("gen", "keras-jax", "torch")
SEQ_LENS = (25, 100, 400)
UNITS = (32, 128, 512)
BATCHES = (1, 32, 256)
# the paired confirmation: windows a framework per confirmation round, each
# half the budget; the pause before each window lets the process before it
# wind down (threads that spin after their last work: torch's OpenMP pool,
# XLA's)
PAIRED_WINDOWS_PER_ROUND = 3
PAIRED_GAP_S = 0.1

PROFILES = {
    # budget: timed seconds per point per framework; steps: warm-up (untimed),
    # min and max timed steps per point; a point stops after max_timed_s (default
    # 10 x budget) of timed steps even short of min_steps (never with none)
    "full": {"rounds": 1, "budget": 1.5, "warmup_steps": 2, "min_steps": 3, "max_steps": 5000,
             "seq_lens": SEQ_LENS, "units": UNITS, "batches": BATCHES,
             "confirm_rounds": 2, "confirm_band": (0.8, 1.25), "linear_rounds": 3},
    "quick": {"rounds": 1, "budget": 0.2, "warmup_steps": 2, "min_steps": 2, "max_steps": 500,
              "seq_lens": (25, 100), "units": (32, 128), "batches": (1, 32),
              "confirm_rounds": 0, "confirm_band": (0.8, 1.25), "linear_rounds": 0},
}


def ints(s):
    return tuple(int(v) for v in s.split(",") if v.strip())


def parse_points(s):
    pts = []
    for item in s.split(","):
        if not item.strip():
            continue
        try:
            t, u, b = (int(v) for v in item.lower().split("x"))
        except ValueError:
            raise SystemExit(f"--points: {item!r} is not TxUNITSxBATCH (e.g. 400x512x256)")
        pts.append((t, u, b))
    return pts


def generate(pairs, work):
    """One generated module per (T, units): {(T, units): path}."""
    paths = {}
    for seq_len, units in pairs:
        tag = f"t{seq_len}_u{units}"
        src = os.path.join(work, "src", f"sweep_{tag}.py")
        os.makedirs(os.path.dirname(src), exist_ok=True)
        with open(src, "w") as f:
            f.write(sweep_model_source(seq_len, units))
        out = os.path.join(work, "models", tag)
        cmd = [sys.executable, "-m", "gen", src, "-o", out + "/"]
        p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
        if p.returncode != 0:
            raise SystemExit(f"gen failed for {tag}:\n{p.stdout}\n{p.stderr}")
        pys = sorted(f for f in os.listdir(out) if f.endswith(".py"))
        if len(pys) != 1:
            raise SystemExit(f"expected one module in {out}, found {pys}")
        paths[(seq_len, units)] = os.path.join(out, pys[0])
    log(f"  generated {len(paths)} sweep module(s) under {os.path.join(work, 'models')}")
    return paths


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="T 25,100 x units 32,128 x batch 1,32, budget 0.2 s: a smoke test")
    ap.add_argument("--frameworks", default=",".join(DEFAULT_FRAMEWORKS),
                    help=f"comma list from {FRAMEWORKS + EXTRA} (default: "
                         f"{','.join(DEFAULT_FRAMEWORKS)}); gen is compared with the "
                         f"fastest of the others that are not gen-*")
    ap.add_argument("--seq-lens", type=ints, help="comma list (default 25,100,400)")
    ap.add_argument("--units", type=ints, help="comma list (default 32,128,512)")
    ap.add_argument("--batches", type=ints, help="comma list (default 1,32,256)")
    ap.add_argument("--points", type=parse_points,
                    help="only these points, TxUNITSxBATCH, comma separated "
                         "(e.g. 400x512x256,25x32x1); overrides the three lists")
    ap.add_argument("--budget", type=float,
                    help="timed seconds per point per framework (default 1.5; --quick 0.2)")
    ap.add_argument("--min-steps", type=int, help="timed steps per point at least (default 3)")
    ap.add_argument("--rounds", type=int, help="rounds (default 1); medians over rounds")
    ap.add_argument("--confirm-rounds", type=int,
                    help="the points whose ratio is within --confirm-band after --rounds are "
                         f"measured again, the frameworks alternating: {PAIRED_WINDOWS_PER_ROUND} "
                         "windows of budget/2 s a framework per confirm round "
                         "(default 2; --quick 0; 0: none)")
    ap.add_argument("--confirm-band", type=lambda v: tuple(float(x) for x in v.split(",")),
                    help="LO,HI: the ratios a point is confirmed at (default 0.8,1.25)")
    ap.add_argument("--linear-rounds", type=int,
                    help="rounds in which gen measures again, alternating in one process, "
                         f"the lengths of a (units, batch) whose growth exceeds "
                         f"{LINEAR_CONFIRM_ABOVE:g}x linear (default 3; --quick 0; 0: none)")
    ap.add_argument("--json", help="also write the raw results here")
    ap.add_argument("--markdown", action="store_true", help="print the tables as Markdown too")
    ap.add_argument("--timeout", type=float, default=1800, help="per child process, seconds")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    a = ap.parse_args(argv)

    prof = dict(PROFILES["quick" if a.quick else "full"])
    for k in ("seq_lens", "units", "batches", "budget", "min_steps", "rounds", "confirm_rounds",
              "confirm_band", "linear_rounds"):
        if getattr(a, k) is not None:
            prof[k] = getattr(a, k)
    prof["max_timed_s"] = 10 * prof["budget"]
    prof["confirm_windows"] = prof["confirm_rounds"] * PAIRED_WINDOWS_PER_ROUND
    if a.points:
        points = sorted(set(a.points))
    else:
        points = [(t, u, b) for u in prof["units"] for t in prof["seq_lens"]
                  for b in prof["batches"]]
    fws = [f for f in a.frameworks.split(",") if f]
    for f in fws:
        if f not in FRAMEWORKS + EXTRA:
            raise SystemExit(f"unknown framework {f!r}; choose from {FRAMEWORKS + EXTRA}")
    if not points:
        raise SystemExit("no points to measure")

    t_run = time.time()
    work = tempfile.mkdtemp(prefix="gen-sweep-")
    cache = os.path.join(work, "numba-cache")
    log(f"gen scaling sweep: {len(points)} point(s), frameworks {fws}, {prof['rounds']} "
        f"round(s), budget {prof['budget']}s per point per framework; work dir {work}")
    load0 = os.getloadavg()
    if load0[0] > 1.0:
        log(f"  WARNING: load average {load0[0]:.1f} on {os.cpu_count()} CPUs before the run: "
            f"other processes compete for the cores; threaded frameworks suffer most")
    needs_gen = any(f.startswith("gen") for f in fws)
    paths = generate(sorted({(t, u) for t, u, _ in points}), work) if needs_gen else {}

    def env_for(fw):
        return child_env(dict(FRAMEWORK_ENV[fw], NUMBA_CACHE_DIR=cache,
                              TORCHINDUCTOR_CACHE_DIR=os.path.join(work, "inductor-cache")))

    # a group: every point of one LSTM width, in one process per framework;
    # inside it T then batch ascending, so the largest buffers come last
    groups = {}
    for t, u, b in sorted(points, key=lambda p: (p[1], p[0], p[2])):
        groups.setdefault(u, []).append((t, u, b))

    def spec(fw, pts, mode="sweep"):
        s = {"mode": mode, "framework": fw, "model": "sweep", "features": SWEEP_FEATURES}
        s.update({k: prof[k] for k in ("budget", "warmup_steps", "min_steps", "max_steps",
                                       "max_timed_s")})
        s["points"] = []
        for t, u, b in pts:
            p = {"seq_len": t, "units": u, "batch": b}
            if fw.startswith("gen"):
                p["gen_path"] = paths[(t, u)]
                p["gen_module"] = f"genbench_sweep_t{t}_u{u}"  # the same in every process
            s["points"].append(p)
        return s

    raw = []          # every worker's result
    values = {}       # (T, units, batch, fw) -> [median step seconds per round]
    errors = []
    few = []          # points that hit max_timed_s before min_steps
    loads = [load0]
    turn = [0]        # groups run so far: the framework order rotates with it

    def run_round(label, todo, sink=values):
        """One round: for each width group, each framework's points (todo:
        {units: [(fw, points)]} in the order to run) in one process; step
        times into sink."""
        for u, runs in todo.items():
            for fw, pts in rotate(runs, turn[0]):
                t0 = time.perf_counter()
                res, err, _ = run_worker(spec(fw, pts), env_for(fw), a.timeout)
                took = time.perf_counter() - t0
                if err:
                    errors.append(f"round {label} units {u} {fw}: {err}")
                    log(f"  round {label} units {u:<4} {fw:<12} ERROR {err}")
                    continue
                res.update(framework=fw, round=label, units=u)
                raw.append(res)
                loads.append(tuple(res["loadavg"]))
                for key, e in res["errors"].items():
                    errors.append(f"round {label} {fw} {key}: {e}")
                for p in res["points"]:
                    sink.setdefault((p["seq_len"], p["units"], p["batch"], fw), []).append(
                        p["step_s"])
                    if p["steps"] < prof["min_steps"]:
                        few.append(f"round {label} {fw} T{p['seq_len']}/u{p['units']}/"
                                   f"b{p['batch']}: {p['steps']} timed step(s) of "
                                   f"{p['step_s']:.1f}s")
                log(f"  round {label} units {u:<4} {fw:<12} {took:6.1f}s  "
                    f"{len(res['points'])}/{len(pts)} points  rss {res['peak_rss_mb']:.0f}MB  "
                    f"load {res['loadavg'][0]:.1f}  "
                    f"[{(time.time() - t_run) / 60:.1f} min]")
            turn[0] += 1

    def run_paired(pt, pfws):
        """The paired confirmation of one point: a process per framework,
        all alive at once, their windows of timed steps alternating
        (paired_windows); each window's median step time into values, once
        all ran (on an error the first rounds' figures stand)."""
        served, got, t0 = {}, {f: [] for f in pfws}, time.perf_counter()
        key = "x".join(map(str, pt))
        try:
            for fw in pfws:
                served[fw] = Served(spec(fw, [pt], mode="sweep-serve"), env_for(fw),
                                    time.time() + a.timeout)
            for fw in pfws:
                served[fw].ready()
            for fw in paired_windows(pfws, prof["confirm_windows"]):
                time.sleep(PAIRED_GAP_S)
                m = served[fw].window(budget=prof["budget"] / 2, min_steps=1, warmup_steps=1)
                got[fw].append(m["step_s"])
            for fw in pfws:
                res = served.pop(fw).stop()
                res.update(framework=fw, round="paired", point=list(pt))
                raw.append(res)
                loads.append(tuple(res["loadavg"]))
            for fw in pfws:
                values.setdefault(pt + (fw,), []).extend(got[fw])
        except RuntimeError as err:
            errors.append(f"paired {key}: {err}")
            log(f"  paired {key} ERROR {err}")
        finally:
            for sv in served.values():
                sv.kill()
        log(f"  paired {key:<12} {time.perf_counter() - t0:6.1f}s  "
            + "  ".join(f"{fw} " + ",".join(f"{v * 1e3:.3g}" for v in got[fw]) + " ms"
                        for fw in pfws)
            + f"  [{(time.time() - t_run) / 60:.1f} min]")

    for r in range(prof["rounds"]):
        run_round(r + 1, {u: [(fw, pts) for fw in fws] for u, pts in groups.items()})
    confirmed = close_points(summarise(points, fws, values), prof["confirm_band"])
    if confirmed and prof["confirm_rounds"] > 0:
        log(f"  confirming {len(confirmed)} close point(s) (gen/fastest within "
            f"{prof['confirm_band'][0]:g}-{prof['confirm_band'][1]:g}), the frameworks "
            f"alternating: " + ", ".join(f"{t}x{u}x{b}" for t, u, b, _ in confirmed))
        for pt, pfws in paired_runs(confirmed, fws):
            run_paired(pt, pfws)

    table = summarise(points, fws, values)
    again = steep_growth(linearity(points, fws, values), LINEAR_CONFIRM_ABOVE)
    lin_values = {}   # (T, units, batch, "gen") -> step seconds, the lengths alternating
    if again and "gen" in fws and prof["linear_rounds"] > 0:
        log(f"  measuring again, alternating, the lengths of {len(again)} (units, batch) "
            f"pair(s) whose growth exceeds {LINEAR_CONFIRM_ABOVE:g}x linear: "
            + ", ".join(f"u{u}/b{b} T {','.join(map(str, lens))}" for u, b, lens in again))
        run_round("lin", linear_runs(again, prof["linear_rounds"]), sink=lin_values)
    linear = linearity(points, fws, values, lin_values)
    out = {"machine": machine_info(), "profile": prof, "frameworks": fws,
           "points": points, "table": table, "linearity": linear, "raw": raw,
           "confirmed": [list(c[:3]) for c in confirmed] if prof["confirm_rounds"] > 0 else [],
           "linear_again": [[u, b, lens] for u, b, lens in again] if lin_values else [],
           "errors": errors, "few_steps": few, "loadavg": loads,
           "minutes": (time.time() - t_run) / 60,
           "gen_modules": {f"t{t}_u{u}": module_fingerprint(p) for (t, u), p in paths.items()}}
    print_report(out)
    if a.markdown:
        print()
        print(markdown_tables(out))
    path = a.json or os.path.join(work, "results.json")
    with open(path, "w") as f:
        json.dump(out, f, indent=1, default=str)
    print(f"\nraw results: {path}")
    if not a.keep:
        for d in ("src", "models", "numba-cache", "inductor-cache"):
            shutil.rmtree(os.path.join(work, d), ignore_errors=True)
        if a.json:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
