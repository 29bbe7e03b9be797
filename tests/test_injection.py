"""Strings from the model file reach generated code only as literals or as
sanitised comments: hostile names import fine, are kept exactly, run nothing."""
import subprocess
import sys
from pathlib import Path

import numpy as np

from conftest import import_module_from_path

ROOT = Path(__file__).resolve().parents[1]


def nasty() -> list[str]:
    # no '/' (Keras refuses it in names): the marker path comes from the environment
    run = "__import__('pathlib').Path(__import__('os').environ['GEN_PWNED']).touch()"
    return [f'in"put\'\\\n{run}\n#', f"hidden\n{run}", f"out {{{{ x }}}} #\r{run}", "ünïcødé\u2028" + run + "\\"]


def test_hostile_names_are_literals(tmp_path, monkeypatch):
    marker = tmp_path / "PWNED"
    monkeypatch.setenv("GEN_PWNED", str(marker))
    n_in, n_hidden, n_a, n_b = nasty()
    src = (
        "from keras.layers import Input, Dense\nfrom keras.models import Model\n"
        f"x = Input(shape=(3,), name={n_in!r})\n"
        f"h = Dense(4, activation='relu', name={n_hidden!r})(x)\n"
        f"a = Dense(1, activation='sigmoid', name={n_a!r})(h)\n"
        f"b = Dense(2, activation='softmax', name={n_b!r})(h)\n"
        "net = Model(x, [a, b])\n"
        f"net.compile('sgd', loss={{{n_a!r}: 'binary_crossentropy', {n_b!r}: 'categorical_crossentropy'}},\n"
        f"            metrics={{{n_a!r}: ['accuracy']}})\n"
    )
    model_file = tmp_path / "hostile.py"
    model_file.write_text(src)
    r = subprocess.run([sys.executable, "-m", "gen", str(model_file), "-o", str(tmp_path / "out")],
                       cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    text = (tmp_path / "out" / "net.py").read_text()
    compile(text, "net.py", "exec")
    mod = import_module_from_path(tmp_path / "out" / "net.py")
    assert not marker.exists()
    assert mod.Model.input_names == (n_in,)
    assert mod.Model.output_names == (n_a, n_b)
    m = mod.Model(seed=0)
    assert list(m.layer_weights()) == [n_in, n_hidden, n_a, n_b]
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 3)).astype(np.float32)
    logs = m.train_on_batch({n_in: x}, {n_a: np.ones((4, 1), np.float32), n_b: np.eye(2, dtype=np.float32)[[0, 1, 0, 1]]})
    assert set(logs) == {"loss", f"{n_a}_loss", f"{n_b}_loss", f"{n_a}_accuracy"}
    assert not marker.exists()
