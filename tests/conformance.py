"""Shared by the test_keras_conformance_*.py modules: the tolerances, every
model of every example as the oracle sees them (MODELS), optimizer variants
of a model file (with_optimizer), a generated module with its Keras model
(load_pair), a random batch, and the comparisons, which record their largest
errors for the run's summary (conftest.CONFORMANCE_ERRORS)."""

import ast

import numpy as np

from conftest import CONFORMANCE_ERRORS, EXAMPLE_FILES
import keras_oracle as ko

BATCH = 8
STEPS = 3
SEED = 1234

# float32: the tolerances of the brief. Gradients and weights are compared
# element-wise with rtol and an atol of min(ATOL, RTOL * max|want|) per array:
# a fixed atol of 1e-5 would accept a 1% error on the LSTM gradients, whose
# largest element is ~8e-4. Measured float32 noise (Keras float32 vs Keras
# float64, twitter, batch 8): gradients max abs error 1.1e-8 (<= 1.5e-5 of
# the array's max), element rel error <= 8e-5 for elements above 1e-3 of the
# max; weights after 3 RMSprop steps max abs error 1.6e-7; predictions 4e-8.
RTOL, ATOL = 1e-4, 1e-5
# float64 on both sides: only summation order differs.
RTOL64, ATOL64 = 1e-9, 1e-12
# Metrics are float32 in Keras even for a float64 model (KERAS-FACTS).
METRIC_RTOL, METRIC_ATOL = 1e-4, 1e-6


# ---------------------------------------------------------------------------
# model-file variants


def _has_compile_call(tree):
    return any(isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
               and n.func.attr == "compile" for n in ast.walk(tree))


def with_optimizer(source: str, optimizer_src: str) -> str | None:
    """``source`` with the optimizer of every ``.compile(...)`` call replaced
    by ``optimizer_src`` (added when the call gives none); ``import keras`` is
    added when ``optimizer_src`` needs it. None if there is no compile call."""
    tree = ast.parse(source)
    data = source.encode("utf-8")  # ast column offsets are UTF-8 byte offsets
    starts = [0]
    for i, b in enumerate(data):
        if b == 0x0A:
            starts.append(i + 1)

    def off(line, col):
        return starts[line - 1] + col

    edits = []
    for call in ast.walk(tree):
        if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute)
                and call.func.attr == "compile"):
            continue
        node = call.args[0] if call.args else next(
            (k.value for k in call.keywords if k.arg == "optimizer"), None)
        if node is not None:
            edits.append((off(node.lineno, node.col_offset),
                          off(node.end_lineno, node.end_col_offset), optimizer_src))
        else:
            close = off(call.end_lineno, call.end_col_offset) - 1  # the ')'
            before = data[:close].rstrip()
            sep = "" if before.endswith(b"(") else (" " if before.endswith(b",") else ", ")
            edits.append((close, close, f"{sep}optimizer={optimizer_src}"))
    if not edits:
        return None
    if optimizer_src.startswith("keras.") and not any(
            isinstance(n, ast.Import) and any(a.name == "keras" and a.asname in (None, "keras")
                                              for a in n.names)
            for n in tree.body):
        futures = [n for n in tree.body
                   if isinstance(n, ast.ImportFrom) and n.module == "__future__"]
        at = starts[futures[-1].end_lineno] if futures else 0
        edits.append((at, at, "import keras\n"))
    for start, end, text in sorted(edits, reverse=True):
        data = data[:start] + text.encode("utf-8") + data[end:]
    return data.decode("utf-8")


def _discover():
    """(example stem, model name, compiled?) for every model of every example,
    as the oracle sees them."""
    found = []
    for path in EXAMPLE_FILES:
        for name, kmodel in ko.build_keras_models(path).items():
            found.append((path.stem, name, ko.captured_compile(kmodel) is not None))
    return found


MODELS = _discover()
MODEL_IDS = [f"{stem}-{name}" for stem, name, _ in MODELS]


def load_pair(gen_modules, path, name, floatx=None):
    """(generated module, Keras model) for model ``name`` of ``path``."""
    modules = gen_modules.modules(path, tag=path.stem)
    kmodels = ko.build_keras_models(path, floatx=floatx)
    assert sorted(modules) == sorted(kmodels), \
        f"gen wrote modules {sorted(modules)}, Keras has models {sorted(kmodels)}"
    return modules[name], kmodels[name]


# ---------------------------------------------------------------------------
# comparison helpers


def as_list(v):
    return list(v) if isinstance(v, (list, tuple)) else [v]


def assert_close(what, got, want, rtol=RTOL, atol=ATOL, scaled=True):
    """Element-wise closeness; with ``scaled`` the atol is at most
    rtol * max|want| (see the tolerance note at the top)."""
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape, f"{what}: shape {got.shape} != Keras {want.shape}"
    assert np.all(np.isfinite(got)), f"{what}: non-finite values"
    scale = float(np.max(np.abs(want))) if want.size else 0.0
    tol_abs = min(atol, rtol * scale) if scaled and scale > 0 else atol
    err = np.abs(got.astype(np.float64) - want.astype(np.float64))
    tol = tol_abs + rtol * np.abs(want)
    bad = err > tol
    if err.size:
        key = f"{what.split('[')[0]} ({got.dtype})"
        prev = CONFORMANCE_ERRORS.get(key, (0.0, 0.0))
        CONFORMANCE_ERRORS[key] = (max(prev[0], float(err.max())),
                                   max(prev[1], float(np.max(err / tol))))
    if bad.any():
        i = np.unravel_index(np.argmax(err - rtol * np.abs(want)), err.shape)
        raise AssertionError(
            f"{what}: {int(bad.sum())}/{bad.size} elements differ; max abs err "
            f"{err.max():.3g} (max|Keras| {scale:.3g}); worst at {i}: got {got[i]!r}, "
            f"Keras {want[i]!r} (rtol {rtol}, atol {tol_abs:.3g})")


def assert_metrics_close(what, got, want):
    assert isinstance(got, dict), f"{what}: expected a dict, got {type(got).__name__}"
    assert sorted(got) == sorted(want), f"{what}: keys {sorted(got)} != Keras {sorted(want)}"
    for k in want:
        assert_close(f"{what}[{k!r}]", float(got[k]), want[k],
                     rtol=METRIC_RTOL, atol=METRIC_ATOL, scaled=False)


def assert_weights_close(what, got, want, rtol=RTOL, atol=ATOL):
    assert len(got) == len(want), f"{what}: {len(got)} arrays != Keras {len(want)}"
    for i, (g, w) in enumerate(zip(got, want)):
        assert_close(f"{what}[{i}]", g, w, rtol, atol)


def assert_layer_grads_close(what, got, want, rtol=RTOL, atol=ATOL):
    got = {k: v for k, v in got.items() if len(v)}
    assert list(got) == list(want), f"{what}: layers {list(got)} != Keras {list(want)}"
    for layer, arrays in want.items():
        assert len(got[layer]) == len(arrays), f"{what}[{layer}]: array count"
        for i, (g, w) in enumerate(zip(got[layer], arrays)):
            assert_close(f"{what}[{layer!r}][{i}]", g, w, rtol, atol)


def _batch(kmodel, floatx=None, n=BATCH):
    x, y = ko.random_batch(kmodel, n, np.random.default_rng(SEED))
    if floatx == "float64":
        cast = lambda a: a.astype(np.float64) if a.dtype == np.float32 else a  # noqa: E731
        x = [cast(a) for a in x] if isinstance(x, list) else cast(x)
        if y is not None:
            y = [cast(a) for a in y] if isinstance(y, list) else cast(y)
    return x, y
