"""The helper that compiles a cold first pass ahead
(templates/runtime_compile.py).

A process's first training step, and its first inference pass, fork a
helper that records the kernels the pass calls (none runs) and compiles
them from the last one into numba's cache, while the process compiles from
the first and loads what the helper finished. These tests check that it
changes nothing but the time: the recorder sees a whole step or forward
pass and only what it compiles; a first step after a predict-only run on a
cold cache gives the numbers a step without the helper gives, loads
kernels the helper compiled, prints nothing twice and leaves no process
behind, nor a file half-written when it was killed; and a later process
loads the whole step from that cache. The
rest of the suite runs without the helper (conftest.py)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from numba.core.dispatcher import Dispatcher

from genmods import all_generated, generated, random_data

ROOT = Path(__file__).resolve().parents[1]

# modules of model files with compile(...); the others are predict-only
TRAINABLE = [(e, m) for e, m in all_generated() if generated(e, m).Model._optimizer is not None]


@pytest.mark.parametrize("example, model", TRAINABLE)
def test_the_recorder_runs_a_whole_step_and_records_only_what_it_compiles(example, model):
    M = generated(example, model)
    xs, ys = random_data(M.Model, 32, np.random.default_rng(0))
    M.Model(seed=0).train_on_batch(xs, ys)  # compiles every kernel a step at 32 rows calls
    m = M.Model(seed=0)
    before = m.get_weights()
    x2, t2, kinds, n = m._prep(xs, ys)
    b = m._batch(n)
    for a in b.loss:  # memory a batch reuses: the recorder zeroes what the step checks
        a[...] = np.nan
    calls, done = M._rt_record_step(b, m._train_all, (b, x2, t2, kinds), Dispatcher)
    assert done, [k.py_func.__name__ for k, _ in calls]  # not stopped by a loss or gradient read as NaN
    names = [k.py_func.__name__ for k, _ in calls]
    assert any("update" in k or "rmsprop" in k or "adam" in k or "sgd" in k for k in names), names
    not_compiled = [(k.py_func.__name__, s) for k, s in calls if s not in k.signatures]
    assert not not_compiled, f"the helper would compile what the step does not call: {not_compiled}"
    for w0, w1 in zip(before, m.get_weights()):  # no kernel ran
        np.testing.assert_array_equal(w0, w1)


@pytest.mark.parametrize("example, model", all_generated())
def test_the_recorder_runs_a_whole_forward_pass_and_records_only_what_it_compiles(example, model):
    # one row: predict's latency path, where the projected LSTM runs. At 32
    # rows every example passed too when this test was written; one size
    # keeps CI under its 20 minutes (~35 s a size on two workers)
    n = 1
    M = generated(example, model)
    xs, _ = random_data(M.Model, n, np.random.default_rng(0))
    M.Model(seed=0).predict(xs, batch_size=n)  # compiles every kernel predict calls at n rows
    m = M.Model(seed=0)
    x2 = m._prep_inputs(xs, [])
    calls, done = M._rt_record_step(None, m._forward, (m._batch(n, grads=False).bufs, x2, False), Dispatcher)
    assert done and calls, [k.py_func.__name__ for k, _ in calls]
    not_compiled = [(k.py_func.__name__, s) for k, s in calls if s not in k.signatures]
    assert not not_compiled, f"the helper would compile what predict does not call: {not_compiled}"


CHILD = r'''
import json, os, signal, sys
sys.path.insert(0, sys.argv[1])
import numpy as np
from numba.core.dispatcher import Dispatcher
from conftest import import_module_from_path
from genmods import random_data
forks = []
fork = os.fork
stall = os.environ.get("STALL_HELPER")
if stall:  # the helper stops at its first rename of a file it wrote, as if killed mid-write
    parent, replace = os.getpid(), os.replace
    def stalled(src, dst):
        if os.getpid() != parent:
            open(stall, "w").close()
            os.kill(os.getpid(), signal.SIGSTOP)  # until the process kills it
        return replace(src, dst)
    os.replace = stalled
os.fork = lambda: forks.append(1) or fork()
mod = import_module_from_path(sys.argv[2], "ahead_module")
m = mod.Model(seed=0)
xs, ys = random_data(m, 64, np.random.default_rng(0))
done = {}
if sys.argv[4] == "fit":
    print("before the first step")  # a helper that flushed this process's buffers would print it twice
    m.fit(xs, ys, epochs=1, batch_size=32, shuffle=False, verbose=1)
    done["fit"] = len(forks)
    xp, yp = random_data(m, 256, np.random.default_rng(1))
    m.train_on_batch(xp, yp)  # in parts where there are two threads: a first pass of its own
    done["parts"] = len(forks) - done["fit"]
m.predict([x[:1] for x in xs])  # a first inference pass: its helper too is ended and reaped
done["predict"] = len(forks) - sum(done.values())
np.savez(sys.argv[3], *m.get_weights())
try:
    left = os.waitpid(-1, os.WNOHANG)
except ChildProcessError:
    left = None
kernels = [v for v in vars(mod).values() if isinstance(v, Dispatcher)]
print(json.dumps({"forks": done, "left": left, "parts": m._parts_for(256),
                  "hit": sorted(k.py_func.__name__ for k in kernels if sum(k.stats.cache_hits.values())),
                  "ran": sorted(k.py_func.__name__ for k in kernels if k.signatures),
                  "misses": sum(sum(k.stats.cache_misses.values()) for k in kernels)}))
'''


def _run(tmp_path, what, tag, **env):
    '''CHILD's run of mlp.py with the helper on, ``what`` "fit" (then a
    predict) or "predict": (its report, weights, stdout). numba caches the
    module's kernels beside it (prelude: keyed by its import name), in
    tmp_path / "__pycache__".'''
    src = tmp_path / "model.py"
    if not src.exists():
        src.write_text((ROOT / "generated" / "mlp" / "model.py").read_text())
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "numba"), GEN_COMPILE_AHEAD="1", **env)
    out = tmp_path / f"{tag}.npz"
    r = subprocess.run([sys.executable, "-c", CHILD, str(ROOT / "tests"), str(src), str(out), what],
                       env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    with np.load(out) as f:
        weights = [f[k] for k in sorted(f.files, key=lambda k: int(k.split("_")[1]))]
    return json.loads(r.stdout.strip().splitlines()[-1]), weights, r.stdout


def test_first_passes_load_what_the_helper_compiled_and_give_the_same_numbers(tmp_path):
    '''Three processes on one cache: a predict-only run on a cold cache
    forks a helper. A first training step on that cache, which holds an
    earlier run's entries but not this pass's, forks one for what it lacks
    and loads training kernels the helper compiled; a first step in parts
    after it forks one too; its predict, a pass an earlier run finished,
    forks none. Then a warm process forks nothing and loads the whole
    step. The weights are those of a run without the helper; nothing
    prints twice; no process is left.'''
    M = generated("mlp", "model")
    xs, ys = random_data(M.Model, 64, np.random.default_rng(0))
    ref = M.Model(seed=0)
    ref.fit(xs, ys, epochs=1, batch_size=32, shuffle=False, verbose=0)
    ref.train_on_batch(*random_data(M.Model, 256, np.random.default_rng(1)))
    cache = tmp_path / "__pycache__"

    def helper_files():  # data files the helper's own names mark (>= 1000)
        return {p.name for p in cache.rglob("*.nbc") if int(p.name.split(".")[-2]) >= 1000}

    first, _, _ = _run(tmp_path, "predict", "predict")
    assert first["forks"] == {"predict": 1} and first["left"] is None, first  # a cold cache
    after_predict = helper_files()

    cold, weights, stdout = _run(tmp_path, "fit", "cold")
    # a first step in parts after a plain one gets a helper of its own
    assert cold["forks"] == {"fit": 1, "parts": 1 if cold["parts"] else 0, "predict": 0}, cold
    assert helper_files() - after_predict, sorted(helper_files())  # the helper compiled training kernels
    loaded = set(cold["hit"]) - set(first["ran"])
    assert loaded, cold  # and this process loaded some of them
    assert cold["left"] is None, cold  # the helpers were ended and reaped
    assert stdout.count("before the first step") == 1 and stdout.count("Epoch 1/1") == 1, stdout
    for w, r in zip(weights, ref.get_weights()):
        np.testing.assert_allclose(w, r, rtol=1e-6, atol=1e-7)

    files = sorted((p.name, p.stat().st_size) for p in cache.rglob("*"))
    warm, weights, _ = _run(tmp_path, "fit", "warm")
    assert warm["forks"] == {"fit": 0, "parts": 0, "predict": 0}, warm
    assert warm["misses"] == 0 and warm["hit"], warm  # the cache the processes wrote serves the whole step
    assert sorted((p.name, p.stat().st_size) for p in cache.rglob("*")) == files  # a warm helper compiles nothing
    assert warm["left"] is None, warm
    for w, r in zip(weights, ref.get_weights()):
        np.testing.assert_allclose(w, r, rtol=1e-6, atol=1e-7)


def test_a_helper_killed_mid_write_leaves_no_half_written_file(tmp_path):
    """The helper stops before renaming the first file it wrote; the
    process kills it when its pass ends and removes that file (numba's
    own temporary names would leave it in the cache for good)."""
    stalled = tmp_path / "stalled"
    report, _, _ = _run(tmp_path, "fit", "fit", STALL_HELPER=str(stalled))
    assert report["forks"]["fit"] == 1 and report["left"] is None, report
    assert stalled.exists()  # the helper did stop mid-write
    cache = tmp_path / "__pycache__"
    assert not [p.name for p in cache.rglob("*") if ".tmp." in p.name]
    assert list(cache.rglob("*.gen-ahead-*")), sorted(p.name for p in cache.rglob("*"))  # the pass ended


def test_without_numba_cache_a_first_step_forks_nothing_and_runs(monkeypatch):
    """A module numba does not cache (imported under no name in
    sys.modules) has no marker: no helper, no marker written, and its first
    training step and predict run as without the helper."""
    M = generated("mlp", "model")
    monkeypatch.setattr(M, "_rt_ahead_marker", lambda key, Dispatcher: None)
    monkeypatch.setattr(M, "_RT_AHEAD", {"train", "infer"})

    def fork():
        raise AssertionError("forked without a cache")

    monkeypatch.setattr(M.os, "fork", fork)
    xs, ys = random_data(M.Model, 32, np.random.default_rng(0))
    m, ref = M.Model(seed=0), M.Model(seed=0)
    m.train_on_batch(xs, ys)
    m.predict(xs)
    assert not M._RT_AHEAD  # both first passes went through _rt_compile_ahead
    monkeypatch.setattr(M, "_RT_AHEAD", set())
    ref.train_on_batch(xs, ys)
    for a, b in zip(m.get_weights(), ref.get_weights()):
        np.testing.assert_array_equal(a, b)
