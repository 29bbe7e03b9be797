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

import numpy as np
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
train = sys.argv[3] == "train"
m, rng = mod.Model(seed=0), np.random.default_rng(0)
passes = []
# the small, owned-rows and parts paths (serial and parallel kernels); and
# in predict, the latency path: one row, where an LSTM's h_{t-1} cache is
# contiguous and so another array type than in a batch
for n in (3, 32, 256) if train else (1, 3, 32, 256):
    xs, ys = random_data(m, n, rng)
    with event.install_recorder("numba:compile") as rec:
        if train:
            m.fit(xs, ys, batch_size=n, epochs=1, verbose=0)
        p = m.predict(xs, batch_size=n)
    names = collections.Counter()
    for _, ev in rec.buffer:
        if ev.is_start:
            f = getattr(ev.data.get("dispatcher"), "py_func", None)
            names[f"{getattr(f, '__module__', '?')}.{getattr(f, '__name__', '?')}"] += 1
    passes.append(names)
np.savez(sys.argv[4], *(p if isinstance(p, list) else [p]), *m.get_weights())


def plain(t):  # a literal as its type; any integer scalar as one type; an array of any layout
    t = types.unliteral(t)
    if isinstance(t, types.Array):
        return t.copy(layout="A")
    return "int" if isinstance(t, types.Integer) else t


kernels = {k: v for k, v in vars(mod).items() if isinstance(v, Dispatcher)}
print(json.dumps({"passes": passes,  # each kernel's signatures, and each as plain()
                  "signatures": {k: {str(s): str(tuple(map(plain, s))) for s in v.signatures}
                                 for k, v in kernels.items()}}))
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
def test_a_cache_filled_in_stages_compiles_each_kernel_once_and_no_strings(tmp_path, example):
    """A fresh copy of the module and an empty cache, filled in stages by
    child processes: predict (1, 3, 32 and 256 rows), then fit and predict
    (3, 32 and 256 rows), which loads what the first compiled and compiles
    the rest, then the same again, which loads everything and gives the
    same bits. No pass compiles a kernel twice or any string formatting,
    and no kernel is left with two signatures that differ only in literals,
    in the integer type of a scalar or in an array's layout: numba compiles
    a callee once more for a literal argument (Literal[int](0),
    Literal[bool](True)) next to its plain copy, and a literal passed on
    goes down the calls (twitter's cold start 13.7 -> 11.2 s without some
    of them); a view contiguous at one row and strided at more typed
    twitter's cells kernel twice (0.87 s of a batch-1 predict after
    training on a cold cache). A jitted kernel
    compiled while a parallel kernel it calls came from the cache was once
    cached broken, and the third process crashed (twitter: a segmentation
    fault in the embedded LSTM's projection, fixed by calling the parallel
    row copy from Python only)."""
    src = tmp_path / "model.py"
    if example == "wide":
        (tmp_path / "wide.py").write_text(PER_STEP_LSTM)
        r = subprocess.run([sys.executable, "-m", "gen", str(tmp_path / "wide.py"), "-o", str(tmp_path)],
                           cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
    else:
        src.write_text((ROOT / "generated" / example / "model.py").read_text())
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "cache"))
    got = []
    for k, stage in enumerate(("predict", "train", "train")):
        r = subprocess.run([sys.executable, "-c", CHILD, str(ROOT / "tests"), str(src), stage,
                            str(tmp_path / f"{k}.npz")], env=env, capture_output=True, text=True, timeout=900)
        assert r.returncode == 0, (stage, r.returncode, r.stderr[-3000:])
        got.append(json.loads(r.stdout.strip().splitlines()[-1]))
    for stage, run in zip(("predict", "train", "train again"), got):
        for names in run["passes"]:
            ours = {k.split(".", 1)[1]: v for k, v in names.items() if k.startswith("cold_module.")}
            twice = {k: v for k, v in ours.items() if v > 1}
            assert not twice, f"{stage}: compiled more than once in a pass: {twice}"
            strings = {k: v for k, v in names.items() if k.rsplit(".", 1)[-1] in STRING_MACHINERY}
            assert not strings, f"{stage}: string formatting compiled into a kernel: {strings}"
    first_step = {k for k in got[1]["passes"][0] if k.startswith("cold_module.")}
    assert len(first_step) >= 5, sorted(first_step)  # the events were read: a step compiles many kernels
    again = {k for names in got[2]["passes"] for k in names if k.startswith("cold_module.")}
    assert not again, f"compiled again, not loaded from the cache: {sorted(again)}"
    signatures = {}  # the three processes': what the cache holds
    for run in got:
        for k, sigs in run["signatures"].items():
            signatures.setdefault(k, {}).update(sigs)
    assert sum(map(len, signatures.values())) > 10, signatures
    twins = {k: sorted(sigs) for k, sigs in signatures.items() if len(set(sigs.values())) < len(sigs)}
    assert not twins, f"compiled for a literal, another integer type or another array layout too: {twins}"
    with np.load(tmp_path / "1.npz") as a, np.load(tmp_path / "2.npz") as b:
        assert a.files == b.files
        for f in a.files:
            np.testing.assert_array_equal(a[f], b[f])
