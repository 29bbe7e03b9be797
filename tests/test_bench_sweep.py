"""The scaling sweep's choice of close points to measure again (benchmarks/sweep.py)."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))

import sweep  # noqa: E402

FWS = ["gen", "keras-jax", "torch"]


def table(steps):
    """summarise() over one round of step times {(T, units, batch): (gen, keras-jax, torch)}."""
    values = {p + (f,): [v] for p, st in steps.items() for f, v in zip(FWS, st)}
    return sweep.summarise(sorted(steps), FWS, values)


def test_close_points_are_those_within_the_band_either_side():
    t = table({(25, 512, 32): (0.036, 0.056, 0.0316),     # 0.88x
               (25, 512, 256): (0.232, 0.35, 0.256),      # 1.10x
               (25, 32, 1): (0.00007, 0.001, 0.0012),     # 14.3x
               (100, 128, 32): (0.02, 0.01, 0.011)})      # 0.50x
    assert [c[:3] for c in sweep.close_points(t, (0.8, 1.25))] == [(25, 512, 32), (25, 512, 256)]
    assert sweep.close_points(t, (0.9, 1.0)) == []


def test_a_confirmation_round_runs_gen_and_the_anchors_near_the_fastest():
    """An anchor more than CONFIRM_ANCHORS_WITHIN behind a point's fastest
    is not measured again there (torch's T 400 steps at 512 units)."""
    t = table({(25, 512, 32): (0.036, 0.056, 0.0316),      # keras-jax 1.77x behind torch: kept
               (400, 512, 256): (4.3, 5.07, 77.0),         # torch 15x behind keras-jax: dropped
               (25, 32, 256): (0.0052, 0.0088, 0.0064)})   # 1.21x, the only 32-unit one
    todo = sweep.confirm_runs(sweep.close_points(t, (0.8, 1.25)), FWS)
    assert todo == {32: [("gen", [(25, 32, 256)]), ("keras-jax", [(25, 32, 256)]), ("torch", [(25, 32, 256)])],
                    512: [("gen", [(25, 512, 32), (400, 512, 256)]),
                          ("keras-jax", [(25, 512, 32), (400, 512, 256)]),
                          ("torch", [(25, 512, 32)])]}
