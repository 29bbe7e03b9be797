"""Keras conformance, the oracle on its own: the Keras side
(tests/keras_oracle.py) checked by itself, so that a conformance failure
means gen is wrong, not the oracle; and the suite's own tools checked too:
the optimizer variants of a model file (conformance.with_optimizer) and
genmods.share_kernels. Generated code vs Keras:
test_keras_conformance_examples.py and test_keras_conformance_schedules.py."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from conftest import EXAMPLE_FILES, EXAMPLES, ROOT
import keras
import keras_oracle as ko
from genmods import share_kernels

from conformance import BATCH, MODELS, SEED, assert_close, with_optimizer


# ---------------------------------------------------------------------------
# the oracle on its own


def test_oracle_layer_names_match_keras_facts():
    models = ko.build_keras_models(EXAMPLES / "twitter_named.py")
    assert list(models) == ["model"]
    m = models["model"]
    assert [l.name for l in m.layers] == [
        "main_input", "embedding", "lstm", "aux_input", "concatenate",
        "dense", "dense_1", "dense_2", "main_output", "aux_output"]
    assert ko.input_layer_names(m) == ["main_input", "aux_input"]
    assert m.output_names == ["main_output", "aux_output"]

    models = ko.build_keras_models(EXAMPLES / "mlp.py")
    assert [l.name for l in models["model"].layers] == [
        "input_layer", "dense", "dense_1", "dense_2"]

    models = ko.build_keras_models(EXAMPLES / "reuse.py")
    assert list(models) == ["model", "reused", "video_model"]
    assert [l.name for l in models["reused"].layers] == ["input_layer_1", "functional"]
    assert [l.name for l in models["video_model"].layers] == [
        "input_layer_2", "time_distributed"]


_FRESH_PROCESS_SCRIPT = textwrap.dedent("""
    # Run each model file as a plain script in a fresh process, independently
    # of the oracle: fit/compile disabled, free names bound to None. Each
    # file in a child forked after keras's import, before anything is built
    # (Keras's naming counters as a new process has them; one import of
    # keras and torch, not one a file: ~35 s less of the test suite).
    import ast, builtins, json, os, runpy, sys
    import keras
    keras.Model.fit = lambda *a, **k: None
    keras.Model.compile = lambda *a, **k: None

    def names(path):
        tree = ast.parse(open(path).read())
        stored = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)
                  and not isinstance(n.ctx, ast.Load)}
        stored |= {a.asname or a.name.split('.')[0] for n in ast.walk(tree)
                   if isinstance(n, (ast.Import, ast.ImportFrom)) for a in n.names}
        free = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)} - stored
        free = {n for n in free if not hasattr(builtins, n)}
        ns = runpy.run_path(path, init_globals=dict.fromkeys(free), run_name='__main__')
        out = {}
        for var, m in ns.items():
            if isinstance(m, keras.Model):
                out[var] = {'name': m.name, 'layers': [l.name for l in m.layers],
                            'outputs': list(m.output_names),
                            'inputs': [t._keras_history.operation.name for t in m.inputs]}
        return out

    for path in sys.argv[1:]:
        sys.stdout.flush()
        pid = os.fork()
        if pid == 0:
            try:
                print(json.dumps([path, names(path)]), flush=True)
            except BaseException:
                import traceback
                traceback.print_exc()
                sys.stderr.flush()
                os._exit(1)
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        assert status == 0, (path, status)
""")


def test_oracle_names_as_in_a_fresh_process():
    """clear_session() resets Keras's naming counters: after building every
    example in this process, names equal those of a fresh process."""
    proc = subprocess.Popen([sys.executable, "-c", _FRESH_PROCESS_SCRIPT, *map(str, EXAMPLE_FILES)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=ROOT, env={**os.environ, "KERAS_BACKEND": "torch"})
    for path in EXAMPLE_FILES:  # dirty the counters
        ko.build_keras_models(path)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    fresh_all = dict(json.loads(line) for line in stdout.splitlines() if line.startswith('["'))
    assert sorted(fresh_all) == sorted(map(str, EXAMPLE_FILES))
    for path in EXAMPLE_FILES:
        fresh = fresh_all[str(path)]
        here = ko.build_keras_models(path)
        by_var = {}
        for key, m in here.items():
            by_var[key] = {"name": m.name, "layers": [l.name for l in m.layers],
                           "outputs": list(m.output_names),
                           "inputs": ko.input_layer_names(m)}
        # the examples name no model explicitly: keys are the variable names
        assert by_var == fresh, path.name


def test_oracle_recompile_kwargs_normalisation():
    m = ko.build_keras_models(EXAMPLES / "twitter.py")["model"]
    assert ko.captured_compile(m) == {
        "optimizer": "rmsprop", "loss": "binary_crossentropy", "loss_weight": [1.0, 0.2]}
    assert ko.recompile_kwargs(m) == {
        "optimizer": "rmsprop", "loss": ["binary_crossentropy"] * 2,
        "loss_weights": [1.0, 0.2]}
    mlp = ko.build_keras_models(EXAMPLES / "mlp.py")["model"]
    assert ko.recompile_kwargs(mlp) == {
        "optimizer": "rmsprop", "loss": "categorical_crossentropy", "metrics": ["accuracy"]}
    reuse = ko.build_keras_models(EXAMPLES / "reuse.py")
    assert ko.recompile_kwargs(reuse["model"]) is None


def test_oracle_random_batch():
    m = ko.build_keras_models(EXAMPLES / "twitter.py")["model"]
    (ids, aux), (main_t, aux_t) = ko.random_batch(m, 5, np.random.default_rng(0))
    assert ids.shape == (5, 100) and ids.dtype == np.int32
    assert ids.min() >= 0 and ids.max() < 10000
    assert aux.shape == (5, 5) and aux.dtype == np.float32
    for t in (main_t, aux_t):
        assert t.shape == (5, 1) and set(np.unique(t)) <= {0.0, 1.0}
    video = ko.build_keras_models(EXAMPLES / "reuse.py")["video_model"]
    x, y = ko.random_batch(video, 3, np.random.default_rng(0))
    assert x.shape == (3, 20, 784) and y.shape == (3, 20, 10)
    np.testing.assert_array_equal(y.sum(-1), 1.0)
    x, y = ko.random_batch(video, 3, np.random.default_rng(0),
                           losses="sparse_categorical_crossentropy")
    assert y.shape == (3, 20) and y.dtype == np.int32 and y.max() < 10


@pytest.mark.parametrize("stem,name", [(s, n) for s, n, c in MODELS if c],
                         ids=[f"{s}-{n}" for s, n, c in MODELS if c])
def test_oracle_gradients_agree_with_keras_training(stem, name):
    """One plain SGD step of Keras's own train_on_batch moves every weight by
    -lr * (the oracle's gradient); evaluate() reports the oracle's total."""
    kmodel = ko.build_keras_models(EXAMPLES / f"{stem}.py")[name]
    x, y = ko.random_batch(kmodel, BATCH, np.random.default_rng(SEED))
    kw = ko.recompile_kwargs(kmodel)
    lr = 0.5
    kw["optimizer"] = keras.optimizers.SGD(learning_rate=lr)
    w0 = kmodel.get_weights()
    res = ko.keras_step_results(kmodel, kw, x, y, steps=1)
    assert all(np.array_equal(a, b) for a, b in zip(kmodel.get_weights(), w0)), \
        "keras_step_results mutated the model"
    for i, (w, g, w1) in enumerate(zip(w0, res["grads"], res["weights"])):
        assert_close(f"oracle SGD step[{i}]", w1, w - lr * g, rtol=1e-5, atol=1e-7)
    assert any(np.abs(g).max() > 0 for g in res["grads"])

    clone = ko.clone_with_weights(kmodel)
    clone.compile(**ko.recompile_kwargs(kmodel))
    ev = clone.evaluate(x, y, batch_size=BATCH, return_dict=True, verbose=0)
    assert ev["loss"] == pytest.approx(res["loss"], rel=1e-6)
    assert ev["loss"] == pytest.approx(res["metrics"][0]["loss"], rel=1e-6)
    names = list(kmodel.output_names)
    if len(names) > 1:
        for n in names:
            assert ev[f"{n}_loss"] == pytest.approx(res["losses"][n], rel=1e-6)


def test_oracle_metric_names():
    """The keys train_on_batch returns (as KERAS-FACTS describes them)."""
    mlp = ko.build_keras_models(EXAMPLES / "mlp.py")["model"]
    x, y = ko.random_batch(mlp, 4, np.random.default_rng(0))
    res = ko.keras_step_results(mlp, ko.recompile_kwargs(mlp), x, y, steps=1)
    assert sorted(res["metrics"][0]) == ["accuracy", "loss"]
    tw = ko.build_keras_models(EXAMPLES / "twitter.py")["model"]
    x, y = ko.random_batch(tw, 4, np.random.default_rng(0))
    kw = ko.recompile_kwargs(tw)
    kw["metrics"] = {"main_output": "accuracy", "aux_output": "accuracy"}
    res = ko.keras_step_results(tw, kw, x, y, steps=1)
    assert sorted(res["metrics"][0]) == [
        "aux_output_accuracy", "aux_output_loss", "loss",
        "main_output_accuracy", "main_output_loss"]


def test_with_optimizer_variants():
    src = "import keras\nm.compile('rmsprop', 'mse')\n"
    assert with_optimizer(src, "'adam'") == "import keras\nm.compile('adam', 'mse')\n"
    src = "from keras.models import Model\nm.compile(loss='mse',)\n"
    assert with_optimizer(src, "keras.optimizers.SGD()") == (
        "import keras\nfrom keras.models import Model\n"
        "m.compile(loss='mse', optimizer=keras.optimizers.SGD())\n")
    assert with_optimizer("m.compile()\n", "'sgd'") == "m.compile(optimizer='sgd')\n"
    assert with_optimizer("x = 1\n", "'sgd'") is None


SHARE_BASE = """\
import numba
import numpy as np
K, T = 2, np.arange(3)
@numba.njit
def same(x):
    return x + 1
@numba.njit
def calls_same(x):
    return same(x) * 2
@numba.njit
def reads_k(x):
    return x * K
@numba.njit
def reads_t(x):
    return T[x]
@numba.njit
def edited(x):
    return x - 1
@numba.njit
def calls_edited(x):
    return edited(x)
@numba.njit
def with_default(x, k=K):
    return x + k
TABLE = {"a": same, "b": (edited, calls_same)}
"""


def test_share_kernels_shares_only_the_same_code(tmp_path):
    """A variant's kernel runs the base module's compiled copy only if its
    syntax (comments aside), the constants it reads and the kernels it calls
    are the same; kernels in the module's tables are swapped too."""
    from conftest import import_module_from_path

    (tmp_path / "base.py").write_text(SHARE_BASE)
    (tmp_path / "variant.py").write_text(
        SHARE_BASE.replace("    return x + 1", "    return x + 1  # another comment")
        .replace("K, T = 2,", "K, T = 3,").replace("x - 1", "x - 2"))
    base = import_module_from_path(tmp_path / "base.py")
    mod = import_module_from_path(tmp_path / "variant.py")
    own = {k: getattr(mod, k) for k in ("reads_k", "edited", "calls_edited", "with_default")}
    assert share_kernels(mod, base) == {"same", "calls_same", "reads_t"}
    assert mod.same is base.same and mod.calls_same is base.calls_same and mod.reads_t is base.reads_t
    assert all(getattr(mod, k) is v for k, v in own.items())
    assert mod.TABLE == {"a": base.same, "b": (own["edited"], base.calls_same)}
    assert (mod.reads_k(1), mod.calls_edited(1), mod.calls_same(1), mod.with_default(1)) == (3, -1, 4, 4)

