"""The scaling sweep's report (sweep.py): the table of the points and the
table of growth with T, as plain text and as Markdown, and what goes with
them (what ran, the machine, the load, slow points, errors)."""
import statistics

from sweep_analysis import LINEAR_BAND, LINEAR_CONFIRM_ABOVE


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
              f"{prof['confirm_windows']} windows a framework, the frameworks alternating; "
              f"medians over all): "
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
