"""`python -m gen`: exit codes, all-or-nothing writes, diagnostics on stderr."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

GOOD = "from keras.layers import Input, Dense\nfrom keras.models import Model\n" \
       "x = Input(shape=(4,))\nnet = Model(x, Dense(2)(x))\n"
BAD = "from keras.layers import Input, Dense\nfrom keras.models import Model\n" \
      "x = Input(shape=(4,))\ny = Dense(-3, activaton='relu')(x)\nnet = Model(x, y)\n"


def gen(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "gen", *map(str, args)], cwd=cwd, capture_output=True, text=True)


def test_writes_one_module_per_model(tmp_path):
    (tmp_path / "m.py").write_text(GOOD)
    r = gen(tmp_path / "m.py", "-o", tmp_path / "out")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"wrote {tmp_path / 'out' / 'net.py'}"
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["net.py"]


def test_errors_exit_2_report_all_and_write_nothing(tmp_path):
    (tmp_path / "bad.py").write_text(BAD)
    out = tmp_path / "out"
    out.mkdir()
    (out / "net.py").write_text("previous good output\n")
    r = gen(tmp_path / "bad.py", "-o", out)
    assert r.returncode == 2
    assert r.stdout == ""
    err = r.stderr
    assert f"{tmp_path / 'bad.py'}:4:15: error[unknown-keyword]" in err
    assert 'Did you mean "activation"?' in err
    assert "y = Dense(-3, activaton='relu')(x)" in err and "^" in err
    assert "gen: nothing written" in err
    assert (out / "net.py").read_text() == "previous good output\n"
    assert sorted(p.name for p in out.iterdir()) == ["net.py"]  # no temporary files left


def test_negative_units_pinned(tmp_path):
    (tmp_path / "bad.py").write_text(BAD.replace(", activaton='relu'", ""))
    r = gen(tmp_path / "bad.py", "-o", tmp_path / "out")
    assert r.returncode == 2
    assert "bad.py:4:11: error[bad-argument]: Argument `units` of Dense must be a positive integer. Received: units=-3" in r.stderr
    assert not (tmp_path / "out").exists()


def test_one_bad_file_among_several_writes_nothing(tmp_path):
    (tmp_path / "good.py").write_text(GOOD)
    (tmp_path / "bad.py").write_text(BAD)
    r = gen(tmp_path / "good.py", tmp_path / "bad.py", "-o", tmp_path / "out")
    assert r.returncode == 2 and not (tmp_path / "out").exists()


def test_missing_file_and_version(tmp_path):
    r = gen(tmp_path / "nope.py", "-o", tmp_path / "out")
    assert r.returncode == 2 and "nope.py: error[io]: No such file or directory" in r.stderr
    v = gen("--version")
    assert v.returncode == 0 and v.stdout.strip() == "gen 0.1.0"


def test_too_large_model_refused_with_the_figure(tmp_path):
    (tmp_path / "big.py").write_text(GOOD.replace("Dense(2)", "Dense(10**12)"))
    r = gen(tmp_path / "big.py", "-o", tmp_path / "out")
    assert r.returncode == 2 and not (tmp_path / "out").exists()
    assert "error[too-large]: Layer 'dense' would have 5,000,000,000,000 parameters (18,626.5 GiB as float32)" in r.stderr
