"""What the scaling sweep's measurements say (sweep.py): per point, each
framework's median step time and samples/s and gen's ratio to the fastest
anchor; per (units, batch), how the step time grows with T; and which points
are measured again (ratios close to 1, steep growth), in which processes."""
import statistics

from harness import rotate

# gen's step-time ratio between two sequence lengths, divided by the length
# ratio: 1.0 is linear; the 4x steps give 3.0-5.5 for "linear"
LINEAR_BAND = (0.75, 1.375)
# a close point's confirmation also runs every anchor within this factor of
# its fastest (one far behind cannot become the fastest; torch's T 400 steps
# at 512 units take over a minute each)
CONFIRM_ANCHORS_WITHIN = 2.0
# gen's growth between two lengths, normalised as above, from which the two
# lengths are measured again alternating in one process: points minutes apart
# in the first rounds can differ in the machine's state by more than the band
LINEAR_CONFIRM_ABOVE = 1.2


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


def paired_runs(confirmed, fws):
    """What the paired confirmation measures, [((T, units, batch),
    [framework, ...])]: every close point, by gen and by each anchor within
    CONFIRM_ANCHORS_WITHIN of that point's fastest, in the order of fws."""
    runs = []
    for t, u, b, rates in sorted(confirmed, key=lambda c: (c[1], c[0], c[2])):
        best = max(v for f, v in rates.items() if not f.startswith("gen"))
        runs.append(((t, u, b), [f for f in fws if f.startswith("gen")
                                 or rates.get(f, 0.0) * CONFIRM_ANCHORS_WITHIN >= best]))
    return runs


def paired_windows(fws, windows):
    """The order of the windows of a paired confirmation: `windows` turns,
    each framework once a turn, the first of each turn rotating, so that none
    always runs just after another (what a process leaves in the caches, or
    its threads winding down, falls on each in turn)."""
    return [f for w in range(windows) for f in rotate(fws, w)]


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
