"""The table of a benchmark run (run.py): the metrics, the issue's targets,
the medians over rounds with gen's ratio to its reference and the verdict,
and the report printed at the end (plain text and Markdown)."""
import statistics

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
