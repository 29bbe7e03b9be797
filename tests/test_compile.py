"""What a cold numba cache compiles for a first training step.

Two numba habits cost seconds of compile that a user waits through on a
fresh machine without any faster kernel for it:
- array-to-array slice assignment (y[b, t] = h[b]) compiles numba's
  broadcasting with its string-formatting error paths (~1 s each);
- a callee given a prange index bare compiles twice: numba types the index
  int64 in the function and uint64 in the parallel region it builds.
These tests compile the seed models' first steps with an empty cache, in a
child process, and read numba's compile events; they assert what was
compiled, never how long it took (timing lives in benchmarks/)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

CHILD = r'''
import collections, json, sys
sys.path.insert(0, sys.argv[1])
import numpy as np
from numba.core import event
from conftest import import_module_from_path
from genmods import random_data
mod = import_module_from_path(sys.argv[2], "cold_module")
m = mod.Model(seed=0)
n = int(sys.argv[3])
xs, ys = random_data(m, n, np.random.default_rng(0))
with event.install_recorder("numba:compile") as rec:
    m.train_on_batch(xs, ys)
    m.predict(xs, batch_size=n)
names = collections.Counter()
for _, ev in rec.buffer:
    if ev.is_start:
        f = getattr(ev.data.get("dispatcher"), "py_func", None)
        names[f"{getattr(f, '__module__', '?')}.{getattr(f, '__name__', '?')}"] += 1
print(json.dumps(names))
'''

# numba's own string helpers: compiled only for a formatted message
STRING_MACHINERY = ("join_list", "join_list_impl", "_strncpy", "concat_impl", "_empty_string")


@pytest.mark.parametrize("example, batch", [("twitter", 32), ("mlp", 256), ("mlp", 32)])
def test_a_cold_first_step_compiles_each_kernel_once_and_no_strings(tmp_path, example, batch):
    # the module under a fresh path and cache: nothing comes from a cache
    src = tmp_path / "model.py"
    src.write_text((ROOT / "generated" / example / "model.py").read_text())
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "cache"))
    r = subprocess.run([sys.executable, "-c", CHILD, str(ROOT / "tests"), str(src), str(batch)],
                       env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    names = json.loads(r.stdout.strip().splitlines()[-1])
    ours = {k.split(".", 1)[1]: v for k, v in names.items() if k.startswith("cold_module.")}
    assert len(ours) >= 5, sorted(ours)  # the events were read: a step compiles many kernels
    twice = {k: v for k, v in ours.items() if v > 1}
    assert not twice, f"compiled more than once on a cold cache: {twice}"
    strings = {k: v for k, v in names.items() if k.rsplit(".", 1)[-1] in STRING_MACHINERY}
    assert not strings, f"string formatting compiled into a kernel: {strings}"
