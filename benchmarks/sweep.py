"""Scaling sweep of issue 5: gen vs Keras 3 on JAX and PyTorch eager over
sequence length x LSTM units x batch size.

    python benchmarks/sweep.py                  # 27 points x 3 frameworks, close ones again: ~13-20 min on 2 cores
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
     measured --confirm-rounds more times (default 2), by gen and by every
     anchor within 2x of that point's fastest, in the same rotating order;
     its figures are then medians over all its rounds, whichever way they
     move the ratio;
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
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)

from frameworks import FRAMEWORK_ENV, SWEEP_FEATURES, sweep_model_source  # noqa: E402
from run import (EXTRA, FRAMEWORKS, child_env, log, machine_info,  # noqa: E402
                 module_fingerprint, rotate, run_worker)

DEFAULT_FRAMEWORKS = ("gen", "keras-jax", "torch")
SEQ_LENS = (25, 100, 400)
UNITS = (32, 128, 512)
BATCHES = (1, 32, 256)
# gen's step-time ratio between two sequence lengths, divided by the length
# ratio: 1.0 is linear; the 4x steps give 3.0-5.5 for "linear"
LINEAR_BAND = (0.75, 1.375)
# a close point's extra rounds also run every anchor within this factor of
# its fastest (one far behind cannot become the fastest; torch's T 400 steps
# at 512 units take over a minute each)
CONFIRM_ANCHORS_WITHIN = 2.0
# gen's growth between two lengths, normalised as above, from which the two
# lengths are measured again alternating in one process: points minutes apart
# in the first rounds can differ in the machine's state by more than the band
LINEAR_CONFIRM_ABOVE = 1.2

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
                    help="extra rounds for the points whose ratio is within --confirm-band "
                         "after --rounds (default 2; --quick 0; 0: none)")
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

    def spec(fw, pts):
        s = {"mode": "sweep", "framework": fw, "model": "sweep", "features": SWEEP_FEATURES}
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

    for r in range(prof["rounds"]):
        run_round(r + 1, {u: [(fw, pts) for fw in fws] for u, pts in groups.items()})
    confirmed = close_points(summarise(points, fws, values), prof["confirm_band"])
    if confirmed and prof["confirm_rounds"] > 0:
        log(f"  confirming {len(confirmed)} close point(s) (gen/fastest within "
            f"{prof['confirm_band'][0]:g}-{prof['confirm_band'][1]:g}): "
            + ", ".join(f"{t}x{u}x{b}" for t, u, b, _ in confirmed))
        todo = confirm_runs(confirmed, fws)
        for r in range(prof["confirm_rounds"]):
            run_round(f"c{r + 1}", todo)

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


# ----------------------------------------------------------------- analysis

def summarise(points, fws, values):
    """Per point: median step time per framework, samples/s, gen / fastest anchor."""
    rows = []
    for t, u, b in points:
        step = {}
        for f in fws:
            xs = values.get((t, u, b, f))
            if xs:
                step[f] = statistics.median(xs)
        rate = {f: b / s for f, s in step.items()}
        anchors = {f: v for f, v in rate.items() if not f.startswith("gen")}
        ref = max(anchors, key=anchors.get) if anchors else None
        ratio = rate["gen"] / anchors[ref] if ("gen" in rate and ref) else None
        verdict = None if ratio is None else ("PASS" if ratio >= 1.0 else "MISS")
        rows.append({"seq_len": t, "units": u, "batch": b, "step_s": step,
                     "samples_per_s": rate, "rounds": {f: len(values.get((t, u, b, f), []))
                                                       for f in fws},
                     "ref": ref, "ratio": ratio, "verdict": verdict})
    return rows


def close_points(table, band):
    """The points whose gen / fastest ratio lies within band, with their
    frameworks' samples/s: [(T, units, batch, rates)]."""
    lo, hi = band
    return [(r["seq_len"], r["units"], r["batch"], r["samples_per_s"]) for r in table
            if r["ratio"] is not None and lo <= r["ratio"] <= hi]


def confirm_runs(confirmed, fws):
    """What a confirmation round runs, {units: [(framework, points)]}: every
    close point by gen and by each anchor within CONFIRM_ANCHORS_WITHIN of
    that point's fastest."""
    todo = {}
    for fw in fws:
        for t, u, b, rates in sorted(confirmed, key=lambda c: (c[1], c[0], c[2])):
            best = max(v for f, v in rates.items() if not f.startswith("gen"))
            if fw.startswith("gen") or rates.get(fw, 0.0) * CONFIRM_ANCHORS_WITHIN >= best:
                runs = todo.setdefault(u, [])
                if not runs or runs[-1][0] != fw:
                    runs.append((fw, []))
                runs[-1][1].append((t, u, b))
    return todo


def _linear_label(norm):
    lo, hi = LINEAR_BAND
    if norm < lo:
        return "sublinear"   # a fixed per-step cost dominates at the short length
    if norm > hi:
        return "SUPERLINEAR"
    return "linear"


def _growth(step, t1, t2):
    ratio = step[t2] / step[t1]
    norm = ratio / (t2 / t1)
    return {"from": t1, "to": t2, "ratio": ratio, "expected": t2 / t1,
            "normalised": norm, "label": _linear_label(norm)}


def linearity(points, fws, values, again=None):
    """Per (units, batch) and framework: step time at each T and the growth
    ratio between consecutive lengths (ratio / length ratio = 1 if linear).
    again: gen's step times from linear_runs; a growth whose two lengths
    both have them takes its ratio from those (the first rounds' under
    "first")."""
    rows = []
    pairs = sorted({(u, b) for _, u, b in points})
    for u, b in pairs:
        lens = sorted({t for t, uu, bb in points if (uu, bb) == (u, b)})
        if len(lens) < 2:
            continue
        row = {"units": u, "batch": b, "seq_lens": lens, "frameworks": {}}
        for f in fws:
            step = {t: statistics.median(values[(t, u, b, f)]) for t in lens
                    if values.get((t, u, b, f))}
            alt = {t: statistics.median(again[(t, u, b, f)]) for t in lens
                   if (again or {}).get((t, u, b, f))}
            steps = []
            for t1, t2 in zip(lens, lens[1:]):
                if t1 in alt and t2 in alt:
                    g = _growth(alt, t1, t2)
                    g["rounds"] = min(len(again[(t, u, b, f)]) for t in (t1, t2))
                    if t1 in step and t2 in step:
                        g["first"] = _growth(step, t1, t2)
                    steps.append(g)
                elif t1 in step and t2 in step:
                    steps.append(_growth(step, t1, t2))
            row["frameworks"][f] = {"step_s": step, "growth": steps}
        g = row["frameworks"].get("gen", {}).get("growth", [])
        labels = {s["label"] for s in g}
        row["gen_verdict"] = (None if not g else "SUPERLINEAR" if "SUPERLINEAR" in labels
                              else "linear" if labels == {"linear"} else "sublinear")
        rows.append(row)
    return rows


def steep_growth(linear, above):
    """The (units, batch) pairs where gen's step time grows faster than
    above x linear between two lengths, with those lengths: [(units, batch,
    [T, ...])]."""
    out = []
    for r in linear:
        steep = [s for s in r["frameworks"].get("gen", {}).get("growth", [])
                 if s["normalised"] > above]
        if steep:
            out.append((r["units"], r["batch"], sorted({t for s in steep
                                                          for t in (s["from"], s["to"])})))
    return out


def linear_runs(again, rounds):
    """What the linearity round runs, {units: [("gen", points)]}: in one
    process a width, each pair's lengths one after another, rounds times."""
    todo = {}
    for _ in range(rounds):
        for u, b, lens in sorted(again):
            todo.setdefault(u, [("gen", [])])[0][1].extend((t, u, b) for t in lens)
    return todo


# ----------------------------------------------------------------- printing

def _rate(v):
    return "-" if v is None else f"{v:,.0f}" if v >= 100 else f"{v:,.1f}"


def _ms(v):
    if v is None:
        return "-"
    ms = v * 1e3
    return f"{ms:.3f}" if ms < 1 else f"{ms:.2f}" if ms < 100 else f"{ms:,.0f}"


def point_rows(out):
    fws = out["frameworks"]
    head = ["T", "units", "batch"] + [f"{f} [samples/s]" for f in fws] + \
        ["gen [ms/step]", "fastest anchor", "gen/fastest", ""]
    rows = []
    for r in out["table"]:
        cells = [str(r["seq_len"]), str(r["units"]), str(r["batch"])]
        cells += [_rate(r["samples_per_s"].get(f)) for f in fws]
        cells += [_ms(r["step_s"].get("gen")), r["ref"] or "-",
                  f"{r['ratio']:.2f}x" if r["ratio"] is not None else "-", r["verdict"] or ""]
        rows.append(cells)
    return head, rows


def _growth_cell(g):
    """A growth ratio; one measured again alternating: "4.68* (6.18)", the
    first rounds' in parentheses."""
    if g is None:
        return "-"
    if "rounds" not in g:
        return f"{g['ratio']:.2f}"
    return f"{g['ratio']:.2f}*" + (f" ({g['first']['ratio']:.2f})" if "first" in g else "")


def linearity_rows(out):
    fws = out["frameworks"]
    lin = out["linearity"]
    if not lin:
        return None, []
    lens = sorted({t for r in lin for t in r["seq_lens"]})
    growth_cols = [(t1, t2) for t1, t2 in zip(lens, lens[1:])]
    head = ["units", "batch"] + [f"gen T={t} [ms]" for t in lens] + \
        [f"gen {t2}/{t1}" for t1, t2 in growth_cols] + ["gen"] + \
        [f"{f} " + ", ".join(f"{t2}/{t1}" for t1, t2 in growth_cols)
         for f in fws if f != "gen"]
    rows = []
    for r in lin:
        fr = r["frameworks"]
        gen = fr.get("gen", {"step_s": {}, "growth": []})
        cells = [str(r["units"]), str(r["batch"])]
        cells += [_ms(gen["step_s"].get(t)) for t in lens]
        by = {(s["from"], s["to"]): s for s in gen["growth"]}
        cells += [_growth_cell(by.get(c)) for c in growth_cols]
        cells.append(r["gen_verdict"] or "-")
        for f in fws:
            if f == "gen":
                continue
            byf = {(s["from"], s["to"]): s for s in fr.get(f, {}).get("growth", [])}
            cells.append(", ".join(f"{byf[c]['ratio']:.2f}" if c in byf else "-"
                                   for c in growth_cols))
        rows.append(cells)
    return head, rows


def _print_table(head, rows, left=0):
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    print("  ".join(h.ljust(w) for h, w in zip(head, widths)))
    for row in rows:
        print("  ".join(str(c).ljust(w) if i < left else str(c).rjust(w)
                        for i, (c, w) in enumerate(zip(row, widths))))


def _md(head, rows):
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def markdown_tables(out):
    parts = [_md(*point_rows(out))]
    head, rows = linearity_rows(out)
    if head:
        parts.append(_md(head, rows))
    return "\n\n".join(parts)


def print_report(out):
    prof = out["profile"]
    print()
    print(f"Training step (single step on one batch, optimizer update included): "
          f"samples/s = batch / median step time; {prof['rounds']} round(s), "
          f"budget {prof['budget']} s per point per framework; "
          f"gen/fastest = gen / the fastest anchor, PASS if >= 1.0")
    if out.get("confirmed"):
        lo, hi = prof["confirm_band"]
        print(f"Confirmed (gen/fastest within {lo:g}-{hi:g} after the first round(s), then "
              f"{prof['confirm_rounds']} more round(s); medians over all): "
              + ", ".join(f"{t}x{u}x{b}" for t, u, b in out["confirmed"]))
    _print_table(*point_rows(out))
    verdicts = [r["verdict"] for r in out["table"] if r["verdict"]]
    if verdicts:
        print(f"gen at or ahead of the fastest anchor at {verdicts.count('PASS')}/"
              f"{len(verdicts)} point(s)"
              + ("" if len(verdicts) == len(out["table"]) else
                 f" ({len(out['table']) - len(verdicts)} point(s) without a ratio)"))

    head, rows = linearity_rows(out)
    if head:
        lo, hi = LINEAR_BAND
        print(f"\nGrowth of the step time with sequence length (time(T2)/time(T1); linear = "
              f"T2/T1, called linear within {lo:g}-{hi:g}x of it, i.e. 3.0-5.5 for 4x; "
              f"sublinear = a fixed per-step cost still dominates)")
        _print_table(head, rows)
        if out.get("linear_again"):
            print(f"* measured again by gen, the lengths alternating in one process, "
                  f"{prof['linear_rounds']} round(s) (growth above {LINEAR_CONFIRM_ABOVE:g}x "
                  f"linear in the first round(s), whose ratio is in parentheses): "
                  + ", ".join(f"units {u} / batch {b} at T {', '.join(map(str, lens))}"
                              for u, b, lens in out["linear_again"]))
        v = [r["gen_verdict"] for r in out["linearity"] if r["gen_verdict"]]
        print(f"gen: linear at {v.count('linear')}/{len(v)} (units, batch) pair(s), "
              f"sublinear at {v.count('sublinear')}, superlinear at {v.count('SUPERLINEAR')}")

    print("\nWhat ran (first process of each framework):")
    seen = set()
    for res in out["raw"]:
        f = res["framework"]
        if f in seen:
            continue
        seen.add(f)
        print(f"  {f}: {res['info']}")
        for b in res["blas"]:
            print(f"      {b.get('user_api')}: {b.get('internal_api')} {b.get('version') or ''} "
                  f"kernel={b.get('architecture', '-')} threads={b.get('num_threads')} "
                  f"{b.get('file')}{'  <- ' + b['used_by'] if b.get('used_by') else ''}")
    rss = {}
    for res in out["raw"]:
        rss[res["framework"]] = max(rss.get(res["framework"], 0), res["peak_rss_mb"])
    print("  peak RSS of a process (largest group): "
          + ", ".join(f"{f} {v:.0f} MB" for f, v in rss.items()))
    mi = out["machine"]
    print(f"\nmachine: {mi['cpu']}, {mi['cpus']} CPUs; python {mi['python']}; "
          f"{mi['versions']}")
    print(f"repo at {mi['git'].get('commit')} with {mi['git'].get('dirty_files')} modified "
          f"tracked file(s)")
    la = [l[0] for l in out["loadavg"]]
    print(f"load average (1 min) before the run and seen by the workers: min {min(la):.1f}, "
          f"median {statistics.median(la):.1f}, max {max(la):.1f}; "
          f"run took {out['minutes']:.1f} min")
    if out["few_steps"]:
        print(f"\nfewer than {prof['min_steps']} timed steps (slow points, stopped after "
              f"{prof['max_timed_s']:g} s):")
        for e in out["few_steps"]:
            print("  " + e)
    if out["errors"]:
        print("\nerrors:")
        for e in out["errors"]:
            print("  " + e)


if __name__ == "__main__":
    sys.exit(main())
