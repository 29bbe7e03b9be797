"""What a cold numba cache compiles for a first training step.

Three numba habits cost seconds of compile that a user waits through on a
fresh machine without any faster kernel for it:
- array-to-array slice assignment (y[b, t] = h[b]) compiles numba's
  broadcasting with its string-formatting error paths (~1 s each);
- a callee given a prange index bare compiles twice: numba types the index
  int64 in the function and uint64 in the parallel region it builds;
- a literal argument (0, True) compiles a callee once more, next to its
  copy for a plain int or bool.
These tests compile the seed models' first steps, and an LSTM wide enough
for the per-step schedules, with an empty cache, in a child process, and
read numba's compile events and the kernels' signatures; they assert what
was compiled, never how long it took (timing lives in benchmarks/)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import collections, json, sys
sys.path.insert(0, sys.argv[1])
import numpy as np
from numba.core import event, types
from numba.core.dispatcher import Dispatcher
from conftest import import_module_from_path
from genmods import random_data
mod = import_module_from_path(sys.argv[2], "cold_module")
m, rng = mod.Model(seed=0), np.random.default_rng(0)
phases = []
# the small, owned-rows and parts paths (serial and parallel kernels), and
# the latency path: one row, where an LSTM's h_{t-1} cache is contiguous
# and so another array type than in a batch
for n in (3, 1, 32, 256):
    xs, ys = random_data(m, n, rng)
    with event.install_recorder("numba:compile") as rec:
        if n == 1:
            m.predict(xs)
        else:
            m.fit(xs, ys, batch_size=n, epochs=1, verbose=0)
            m.predict(xs, batch_size=n)
    names = collections.Counter()
    for _, ev in rec.buffer:
        if ev.is_start:
            f = getattr(ev.data.get("dispatcher"), "py_func", None)
            names[f"{getattr(f, '__module__', '?')}.{getattr(f, '__name__', '?')}"] += 1
    phases.append(names)


def plain(t):  # a literal as its type; any integer scalar as one type
    t = types.unliteral(t)
    return "int" if isinstance(t, types.Integer) else t


kernels = {k: v for k, v in vars(mod).items() if isinstance(v, Dispatcher)}
twins = {k: [str(s) for s in v.signatures] for k, v in kernels.items()
         if len({tuple(map(plain, s)) for s in v.signatures}) < len(v.signatures)}
print(json.dumps({"phases": phases, "signatures": sum(len(v.signatures) for v in kernels.values()),
                  "twins": twins}))
"""

# numba's own string helpers: compiled only for a formatted message
STRING_MACHINERY = ("join_list", "join_list_impl", "_strncpy", "concat_impl", "_empty_string")

# a 256-unit LSTM: the per-step schedules, which the seed models do not reach
PER_STEP_LSTM = """from keras.layers import Input, LSTM, Dense
from keras.models import Model
inputs = Input(shape=(5, 8))
x = LSTM(256)(inputs)
out = Dense(1, activation='sigmoid')(x)
model = Model(inputs, outputs=out)
model.compile(optimizer='rmsprop', loss='binary_crossentropy')
"""


@pytest.mark.parametrize("example", ["twitter", "mlp", "wide"])
def test_a_cold_cache_compiles_each_kernel_once_and_no_strings(tmp_path, example):
    """Compiled from scratch in a child process (a fresh copy of the module
    and an empty cache), fit and predict at 3, 32 and 256 rows and predict
    of one row compile no kernel twice in one of those passes and no string
    formatting, and leave no kernel with two signatures that differ only in
    literals or in the integer type of a scalar: numba compiles a callee
    once more for a literal argument (Literal[int](0), Literal[bool](True))
    next to its plain copy, and a literal passed on goes down the calls
    (twitter's cold start 13.7 -> 11.2 s without some of them)."""
    src = tmp_path / "model.py"
    if example == "wide":
        (tmp_path / "wide.py").write_text(PER_STEP_LSTM)
        r = subprocess.run([sys.executable, "-m", "gen", str(tmp_path / "wide.py"), "-o", str(tmp_path)],
                           cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
    else:
        src.write_text((ROOT / "generated" / example / "model.py").read_text())
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "cache"))
    r = subprocess.run([sys.executable, "-c", CHILD, str(ROOT / "tests"), str(src)],
                       env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    for n, names in zip((3, 1, 32, 256), got["phases"]):
        ours = {k.split(".", 1)[1]: v for k, v in names.items() if k.startswith("cold_module.")}
        twice = {k: v for k, v in ours.items() if v > 1}
        assert not twice, f"compiled more than once on a cold cache at {n} rows: {twice}"
        strings = {k: v for k, v in names.items() if k.rsplit(".", 1)[-1] in STRING_MACHINERY}
        assert not strings, f"string formatting compiled into a kernel at {n} rows: {strings}"
    first = {k for k in got["phases"][0] if k.startswith("cold_module.")}
    assert len(first) >= 5, sorted(first)  # the events were read: a step compiles many kernels
    assert got["signatures"] > 10, got  # compiled here, not loaded
    assert not got["twins"], f"compiled for a literal or another integer type too: {got['twins']}"
