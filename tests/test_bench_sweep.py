"""The scaling sweep's choice of points to measure again (benchmarks/sweep.py and sweep_analysis.py): close
ratios, and lengths whose step time grows steeply."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))

import sweep_analysis  # noqa: E402
import sweep_report  # noqa: E402

FWS = ["gen", "keras-jax", "torch"]


def table(steps):
    """summarise() over one round of step times {(T, units, batch): (gen, keras-jax, torch)}."""
    values = {p + (f,): [v] for p, st in steps.items() for f, v in zip(FWS, st)}
    return sweep_analysis.summarise(sorted(steps), FWS, values)


def test_close_points_are_those_within_the_band_either_side():
    t = table({(25, 512, 32): (0.036, 0.056, 0.0316),     # 0.88x
               (25, 512, 256): (0.232, 0.35, 0.256),      # 1.10x
               (25, 32, 1): (0.00007, 0.001, 0.0012),     # 14.3x
               (100, 128, 32): (0.02, 0.01, 0.011)})      # 0.50x
    assert [c[:3] for c in sweep_analysis.close_points(t, (0.8, 1.25))] == [(25, 512, 32), (25, 512, 256)]
    assert sweep_analysis.close_points(t, (0.9, 1.0)) == []


def test_a_confirmation_pairs_gen_with_the_anchors_near_the_fastest():
    """An anchor more than CONFIRM_ANCHORS_WITHIN behind a point's fastest
    is not measured again there (torch's T 400 steps at 512 units)."""
    t = table({(25, 512, 32): (0.036, 0.056, 0.0316),      # keras-jax 1.77x behind torch: kept
               (400, 512, 256): (4.3, 5.07, 77.0),         # torch 15x behind keras-jax: dropped
               (25, 32, 256): (0.0052, 0.0088, 0.0064)})   # 1.21x, the only 32-unit one
    runs = sweep_analysis.paired_runs(sweep_analysis.close_points(t, (0.8, 1.25)), FWS)
    assert runs == [((25, 32, 256), FWS), ((25, 512, 32), FWS), ((400, 512, 256), ["gen", "keras-jax"])]


def test_paired_windows_take_turns_and_rotate_who_goes_first():
    assert sweep_analysis.paired_windows(FWS, 4) == ["gen", "keras-jax", "torch", "keras-jax", "torch", "gen",
                                                    "torch", "gen", "keras-jax", "gen", "keras-jax", "torch"]
    assert sweep_analysis.paired_windows(["gen", "torch"], 0) == []


# A stand-in for worker.py's "sweep-serve" mode: chatter on stdout, then the
# protocol's lines; a window whose budget is negative makes it exit with a message.
STUB = """
import json, sys
print("framework chatter", flush=True)
print("BENCH-READY " + json.dumps({"warmup_s": [0.5]}), flush=True)
n = 0
for line in sys.stdin:
    ask = json.loads(line)
    if ask.get("stop"):
        break
    if ask["budget"] < 0:
        sys.exit("boom")
    n += 1
    sys.stdout.write("more chatter\\nBENCH-WINDOW " + json.dumps({"step_s": ask["budget"] * n}) + "\\n")
    sys.stdout.flush()
if ask.get("hang"):
    import time; time.sleep(60)
print("BENCH-RESULT " + json.dumps({"windows": n}), flush=True)
"""


def served(deadline_s=30):
    import time
    import harness
    return harness.Served({}, None, time.time() + deadline_s, cmd=[sys.executable, "-c", STUB])


def test_a_served_worker_answers_each_window_past_its_chatter():
    """Two lines in one read (chatter and the window's) are both seen."""
    sv = served()
    assert sv.ready() == {"warmup_s": [0.5]}
    assert sv.window(budget=0.25, min_steps=1) == {"step_s": 0.25}
    assert sv.window(budget=0.25, min_steps=1) == {"step_s": 0.5}
    assert sv.stop() == {"windows": 2}
    assert sv.p.returncode == 0


def test_a_served_worker_that_dies_or_stalls_raises_and_is_gone():
    import pytest
    sv = served()
    sv.ready()
    with pytest.raises(RuntimeError, match="exit 1 before BENCH-WINDOW: boom"):
        sv.window(budget=-1)
    assert sv.p.poll() == 1
    with pytest.raises(RuntimeError, match="worker gone"):
        sv.window(budget=0.25)
    sv = served(deadline_s=3)
    sv.ready()
    sv._send({"stop": True, "hang": True})
    with pytest.raises(RuntimeError, match="no BENCH-RESULT before the deadline"):
        sv._read("BENCH-RESULT")
    assert sv.p.poll() is not None


def growth(steps, again=None):
    """linearity() of gen's step times {(T, units, batch): seconds} (one round)."""
    values = {p + ("gen",): [v] for p, v in steps.items()}
    return sweep_analysis.linearity(sorted(steps), ["gen"], values, again)


def test_steep_growth_names_each_pair_and_the_lengths_that_grew_fast():
    lin = growth({(25, 32, 256): 0.0036, (100, 32, 256): 0.013, (400, 32, 256): 0.080,  # 3.6x, 6.2x
                  (25, 128, 32): 0.0027, (100, 128, 32): 0.0082, (400, 128, 32): 0.035,  # 3.0x, 4.2x
                  (25, 512, 1): 0.004, (100, 512, 1): 0.020, (400, 512, 1): 0.100})     # 5.0x, 5.0x
    assert sweep_analysis.steep_growth(lin, 1.2) == [(32, 256, [100, 400]), (512, 1, [25, 100, 400])]
    assert sweep_analysis.steep_growth(lin, 1.5) == [(32, 256, [100, 400])]
    assert sweep_analysis.steep_growth(lin, 2.0) == []


def test_linear_runs_alternate_the_lengths_of_each_pair_in_one_process_a_width():
    todo = sweep_analysis.linear_runs([(32, 256, [100, 400]), (32, 1, [25, 100]), (512, 32, [25, 100])], 2)
    assert todo == {32: [("gen", [(25, 32, 1), (100, 32, 1), (100, 32, 256), (400, 32, 256),
                                  (25, 32, 1), (100, 32, 1), (100, 32, 256), (400, 32, 256)])],
                    512: [("gen", [(25, 512, 32), (100, 512, 32), (25, 512, 32), (100, 512, 32)])]}


def test_a_growth_measured_again_takes_its_ratio_from_the_alternated_steps():
    """The first rounds' ratio stays under "first"; a growth with only one
    of its lengths measured again keeps the first rounds' ratio."""
    steps = {(25, 32, 256): 0.0036, (100, 32, 256): 0.013, (400, 32, 256): 0.080}
    again = {(100, 32, 256, "gen"): [0.016, 0.018, 0.020], (400, 32, 256, "gen"): [0.064, 0.085, 0.090]}
    (row,) = growth(steps, again)
    first, second = row["frameworks"]["gen"]["growth"]
    assert "rounds" not in first and abs(first["ratio"] - 0.013 / 0.0036) < 1e-12
    assert second["rounds"] == 3 and abs(second["ratio"] - 0.085 / 0.018) < 1e-12
    assert second["label"] == "linear" and second["first"]["label"] == "SUPERLINEAR"
    assert row["gen_verdict"] == "linear"
    assert sweep_report._growth_cell(second) == "4.72* (6.15)"
    (row,) = growth(steps)
    assert row["gen_verdict"] == "SUPERLINEAR"
