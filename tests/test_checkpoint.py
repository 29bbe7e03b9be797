"""fit(checkpoint=..., resume=True): a run killed mid-training and resumed
ends with the same weights, bit for bit, as a run never interrupted."""
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from genmods import GENERATED

TRAIN = textwrap.dedent("""
    import sys
    import numpy as np
    sys.path.insert(0, sys.argv[1])
    import model
    ckpt, out, resume = sys.argv[2], sys.argv[3], sys.argv[4] == "resume"
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4096, 784)).astype(np.float32)
    y = np.eye(10, dtype=np.float32)[rng.integers(0, 10, 4096)]
    m = model.Model(seed=0)
    m.fit(x, y, epochs=8, batch_size=32, verbose=0, checkpoint=ckpt, resume=resume, validation_split=0.1)
    m.save_weights(out)
""")


def _run(tmp, ckpt, out, mode, **kw):
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")  # same thread count in every run
    return subprocess.Popen([sys.executable, "-c", TRAIN, str(tmp), str(ckpt), str(out), mode], env=env, **kw)


def _epoch(path):
    try:
        with np.load(path) as f:
            return int(f["__epoch__"])
    except (OSError, KeyError, ValueError):
        return 0


def test_killed_and_resumed_run_equals_uninterrupted(tmp_path):
    (tmp_path / "model.py").write_text((GENERATED / "mlp" / "model.py").read_text())
    straight = _run(tmp_path, tmp_path / "a.npz", tmp_path / "a_final.npz", "fresh")
    assert straight.wait(timeout=600) == 0
    victim = _run(tmp_path, tmp_path / "b.npz", tmp_path / "b_final.npz", "fresh")
    deadline = time.time() + 600
    while _epoch(tmp_path / "b.npz") < 3 and victim.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    killed_at = _epoch(tmp_path / "b.npz")
    if not 1 <= killed_at < 8 or victim.returncode != -signal.SIGKILL:
        pytest.fail(f"the run was not killed mid-training (epoch {killed_at}, exit {victim.returncode})")
    assert not (tmp_path / "b_final.npz").exists()
    resumed = _run(tmp_path, tmp_path / "b.npz", tmp_path / "b_final.npz", "resume")
    assert resumed.wait(timeout=600) == 0
    with np.load(tmp_path / "a_final.npz") as a, np.load(tmp_path / "b_final.npz") as b:
        names = [k for k in a.files if k.startswith("w")]
        assert names
        for k in names:
            assert np.array_equal(a[k], b[k]), k
    with np.load(tmp_path / "a.npz") as a, np.load(tmp_path / "b.npz") as b:
        assert int(a["__iterations__"]) == int(b["__iterations__"]) == 8 * 116
        assert str(a["__history__"]) == str(b["__history__"])
