"""The runtime (templates/runtime*.py) tested through a hand-written fake
generated module: prelude + kernels + runtime + small numpy models.

Kernel files from templates/kernels/ are used when they define the kernels
needed; otherwise the small fallbacks below stand in (numerics of kernels
are tested elsewhere; these tests are about the API)."""

import importlib.util
import math
import re
import sys
from pathlib import Path

import numpy as np
import pytest

from gen.emit import RUNTIME_FILES

ROOT = Path(__file__).resolve().parents[1]
KERNELS = ROOT / "templates" / "kernels"

PRELUDE = (ROOT / "templates" / "prelude.py").read_text()  # njit and threading, as generated

LOSS_NAMES = ("binary_crossentropy", "categorical_crossentropy",
              "sparse_categorical_crossentropy", "mean_squared_error")

FALLBACK = {
    "losses.py": '''
@njit
def _clip(p):
    return min(max(p, 1e-7), 1.0 - 1e-7)

@njit
def binary_crossentropy_forward(out, y, t):
    for k in range(y.shape[0]):
        s = 0.0
        for j in range(y.shape[1]):
            p = _clip(y[k, j])
            s -= t[k, j] * math.log(p) + (1 - t[k, j]) * math.log(1 - p)
        out[k] = s / y.shape[1]

@njit
def binary_crossentropy_backward(dy, y, t, scale):
    for k in range(y.shape[0]):
        for j in range(y.shape[1]):
            p = _clip(y[k, j])
            dy[k, j] = scale * (p - t[k, j]) / (p * (1 - p)) / y.shape[1]

@njit
def categorical_crossentropy_forward(out, y, t):
    for k in range(y.shape[0]):
        s = y[k].sum()
        out[k] = 0.0
        for j in range(y.shape[1]):
            out[k] -= t[k, j] * math.log(_clip(y[k, j] / s))

@njit
def categorical_crossentropy_backward(dy, y, t, scale):
    for k in range(y.shape[0]):
        s = y[k].sum()
        st = t[k].sum()
        for j in range(y.shape[1]):
            dy[k, j] = scale * (st / s - t[k, j] / y[k, j])

@njit
def sparse_categorical_crossentropy_forward(out, y, t):
    for k in range(y.shape[0]):
        out[k] = -math.log(_clip(y[k, t[k]] / y[k].sum()))

@njit
def sparse_categorical_crossentropy_backward(dy, y, t, scale):
    for k in range(y.shape[0]):
        s = y[k].sum()
        for j in range(y.shape[1]):
            dy[k, j] = scale / s
        dy[k, t[k]] -= scale / y[k, t[k]]

@njit
def mean_squared_error_forward(out, y, t):
    for k in range(y.shape[0]):
        out[k] = ((y[k] - t[k]) ** 2).mean()

@njit
def mean_squared_error_backward(dy, y, t, scale):
    for k in range(y.shape[0]):
        for j in range(y.shape[1]):
            dy[k, j] = scale * 2 * (y[k, j] - t[k, j]) / y.shape[1]
''',
    "metrics.py": '''
@njit
def binary_accuracy(out, y, t):
    for k in range(y.shape[0]):
        s = 0.0
        for j in range(y.shape[1]):
            s += 1.0 if (y[k, j] > 0.5) == (t[k, j] > 0.5) else 0.0
        out[k] = s / y.shape[1]

@njit
def categorical_accuracy(out, y, t):
    for k in range(y.shape[0]):
        out[k] = 1.0 if np.argmax(y[k]) == np.argmax(t[k]) else 0.0

@njit
def sparse_categorical_accuracy(out, y, t):
    for k in range(y.shape[0]):
        out[k] = 1.0 if np.argmax(y[k]) == t[k] else 0.0
''',
    "optimizers.py": '''
@njit
def sgd_update(w, g, m, lr, momentum, nesterov):
    for i in range(w.size):
        if momentum == 0.0:
            w[i] -= lr * g[i]
        else:
            m[i] = momentum * m[i] - lr * g[i]
            w[i] += momentum * m[i] - lr * g[i] if nesterov else m[i]

@njit
def rmsprop_update(w, g, v, m, mg, lr, rho, momentum, epsilon, centered):
    for i in range(w.size):
        v[i] = rho * v[i] + (1 - rho) * g[i] * g[i]
        w[i] -= lr * g[i] / math.sqrt(v[i] + epsilon)

@njit
def adam_update(w, g, m, v, vhat, lr, beta_1, beta_2, epsilon, amsgrad, t):
    alpha = lr * math.sqrt(1 - beta_2 ** t) / (1 - beta_1 ** t)
    for i in range(w.size):
        m[i] += (g[i] - m[i]) * (1 - beta_1)
        v[i] += (g[i] * g[i] - v[i]) * (1 - beta_2)
        w[i] -= alpha * m[i] / (math.sqrt(v[i]) + epsilon)
''',
    "embedding.py": '''
@njit
def embedding_check_ids(ids, input_dim):
    for k in range(ids.shape[0]):
        if ids[k] < 0 or ids[k] >= input_dim:
            return k
    return -1
''',
}

NEEDED = {
    "losses.py": [f"{n}_{d}" for n in LOSS_NAMES for d in ("forward", "backward")],
    "metrics.py": ["binary_accuracy", "categorical_accuracy", "sparse_categorical_accuracy"],
    "optimizers.py": ["sgd_update", "rmsprop_update", "adam_update"],
    "embedding.py": ["embedding_check_ids"],
}

TABLES = '''
_LOSS_KERNELS = {n: (globals()[n + "_forward"], globals()[n + "_backward"]) for n in %r}
_ACCURACY_KERNELS = {"binary": binary_accuracy, "categorical": categorical_accuracy,
                     "sparse_categorical": sparse_categorical_accuracy}
_OPTIMIZER_KERNELS = {"sgd": sgd_update, "rmsprop": rmsprop_update, "adam": adam_update}
''' % (LOSS_NAMES,)

# Hand-written "generated" models: numpy forward/backward, runtime metadata.
MODELS = '''

def _softmax(z):
    z -= z.max(axis=-1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=-1, keepdims=True)


class Model(_Runtime):
    """One Dense(3, softmax) layer on the last axis of a (4,) input."""
    name = "dense1"
    input_names = ("x",)
    output_names = ("dense",)
    _inputs = (("x", (4,), "float", None),)
    _outputs = (("dense", (3,), "categorical_crossentropy", 1.0, True),)
    _layers = (("x", "InputLayer", ()),
               ("dense", "Dense", (("kernel", (4, 3)), ("bias", (3,)))))
    _inits = (("glorot_uniform", 4, 3), ("zeros",))
    _optimizer = ("sgd", {"learning_rate": 0.1})
    _fit_defaults = {"epochs": 2, "batch_size": 4, "shuffle": False, "validation_split": 0.0}
    activation = "softmax"
    alloc_calls = None

    def _alloc(self, n):
        if self.alloc_calls is None:
            self.alloc_calls = []
        self.alloc_calls.append(n)
        return {"x": None, "y": np.empty((n,) + self._outputs[0][1], self.dtype)}

    def _alloc_grads(self, n, b):
        pass  # this backward pass needs no buffers of its own

    def _forward(self, bufs, xs, training):
        x = xs[0].reshape(-1, 4)
        bufs["x"] = x
        y = bufs["y"].reshape(-1, 3)
        np.matmul(x, self._w[0], out=y)
        y += self._w[1]
        if self.activation == "softmax":
            _softmax(y)
        return [bufs["y"]]

    def _backward(self, bufs, douts):
        y, dy = bufs["y"].reshape(-1, 3), douts[0].reshape(-1, 3)
        dz = y * (dy - (dy * y).sum(axis=1, keepdims=True)) if self.activation == "softmax" else dy
        self._g[0] += bufs["x"].T @ dz
        self._g[1] += dz.sum(axis=0)


class Sparse(Model):
    _outputs = (("dense", (3,), "sparse_categorical_crossentropy", 1.0, True),)


class Seq(Model):
    """Dense on a (2, 4) sequence: a (2, 3) output, sparse targets (n, 2)."""
    _inputs = (("x", (2, 4), "float", None),)
    _outputs = (("dense", (2, 3), "sparse_categorical_crossentropy", 1.0, True),)


class Linear(Model):
    _outputs = (("dense", (3,), "mean_squared_error", 1.0, False),)
    activation = "linear"


class TwoOut(_Runtime):
    """ids (3,) -> embedding summed over positions, concatenated with aux (2,);
    o1 = Dense(1, sigmoid), o2 = Dense(3, softmax)."""
    name = "two_out"
    input_names = ("ids", "aux")
    output_names = ("o1", "o2")
    _inputs = (("ids", (3,), "int", 10), ("aux", (2,), "float", None))
    _outputs = (("o1", (1,), "binary_crossentropy", 1.0, True),
                ("o2", (3,), "sparse_categorical_crossentropy", 0.5, True))
    _layers = (("ids", "InputLayer", ()),
               ("embedding", "Embedding", (("embeddings", (10, 2)),)),
               ("aux", "InputLayer", ()),
               ("o1", "Dense", (("kernel", (4, 1)), ("bias", (1,)))),
               ("o2", "Dense", (("kernel", (4, 3)), ("bias", (3,)))))
    _inits = (("uniform", -0.5, 0.5), ("glorot_uniform", 4, 1), ("zeros",),
              ("glorot_uniform", 4, 3), ("zeros",))
    _optimizer = ("adam", {"learning_rate": 0.01})
    _fit_defaults = {"epochs": 1, "batch_size": 8, "shuffle": True, "validation_split": 0.0}
    _output_shapes = {"embedding": (None, 3, 2), "o1": (None, 1)}

    def _alloc(self, n):
        return {"h": np.empty((n, 4), self.dtype), "y1": np.empty((n, 1), self.dtype),
                "y2": np.empty((n, 3), self.dtype), "ids": None}

    def _alloc_grads(self, n, b):
        pass

    def _forward(self, bufs, xs, training):
        ids, aux = xs
        bufs["ids"] = ids
        h = bufs["h"]
        h[:, :2] = self._w[0][ids].sum(axis=1)
        h[:, 2:] = aux
        y1, y2 = bufs["y1"], bufs["y2"]
        np.matmul(h, self._w[1], out=y1)
        y1 += self._w[2]
        y1[...] = 1 / (1 + np.exp(-y1))
        np.matmul(h, self._w[3], out=y2)
        y2 += self._w[4]
        _softmax(y2)
        return [y1, y2]

    def _backward(self, bufs, douts):
        h, y1, y2 = bufs["h"], bufs["y1"], bufs["y2"]
        dz1 = douts[0] * y1 * (1 - y1)
        dz2 = y2 * (douts[1] - (douts[1] * y2).sum(axis=1, keepdims=True))
        self._g[1] += h.T @ dz1
        self._g[2] += dz1.sum(axis=0)
        self._g[3] += h.T @ dz2
        self._g[4] += dz2.sum(axis=0)
        dh = dz1 @ self._w[1].T + dz2 @ self._w[3].T
        ids = bufs["ids"]
        np.add.at(self._g[0], ids, np.broadcast_to(dh[:, None, :2], ids.shape + (2,)))


class Inits(_Runtime):
    """Only weights: every initialiser kind."""
    name = "inits"
    _layers = (("inp", "InputLayer", ()),
               ("embedding", "Embedding", (("embeddings", (50, 8)),)),
               ("lstm", "LSTM", (("kernel", (8, 64)), ("recurrent_kernel", (16, 64)),
                                 ("bias", (64,)))))
    _inits = (("uniform", -0.05, 0.05), ("glorot_uniform", 8, 64), ("orthogonal",),
              ("lstm_bias", 16))
    _optimizer = ("rmsprop", {})
'''


def kernel_source(fname):
    """The real kernel file when it defines what we need, else the fallback."""
    path = KERNELS / fname
    if path.exists():
        text = path.read_text()
        if all(re.search(rf"^def {n}\(", text, re.M) for n in NEEDED[fname]):
            return text
    return FALLBACK[fname]


@pytest.fixture(scope="module")
def mod(tmp_path_factory):
    texts = [(ROOT / "templates" / f).read_text() for f in RUNTIME_FILES]
    for f, text in zip(RUNTIME_FILES, texts):
        assert not re.search(r"\{\{|\{%|\{#", text), f"{f} must hold no Jinja syntax"
    runtime = "\n\n".join(texts)
    parts = [PRELUDE] + [kernel_source(f) for f in NEEDED] + [TABLES, runtime, MODELS]
    path = tmp_path_factory.mktemp("fake") / "fake_generated.py"
    path.write_text("\n\n".join(parts))
    spec = importlib.util.spec_from_file_location("fake_generated", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["fake_generated"] = module
    spec.loader.exec_module(module)
    yield module
    del sys.modules["fake_generated"]


def data(n=10, seed=1):
    rng = np.random.default_rng(seed)
    x = rng.random((n, 4)).astype(np.float32)
    y = np.eye(3, dtype=np.float32)[rng.integers(0, 3, n)]
    return x, y


def two_data(n=10, seed=2):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, 10, (n, 3)).astype(np.int32)
    aux = rng.random((n, 2)).astype(np.float32)
    return [ids, aux], [rng.integers(0, 2, (n, 1)), rng.integers(0, 3, n)]


# -- construction and initialisers ------------------------------------------

def test_flat_buffers_and_views(mod):
    m = mod.Model(seed=0)
    assert m._params.dtype == np.float32 and m._params.size == 15
    for w, g in zip(m._w, m._g):
        assert np.shares_memory(w, m._params) and np.shares_memory(g, m._grads)
    assert [w.shape for w in m.get_weights()] == [(4, 3), (3,)]
    assert m.iterations == 0
    assert mod.Model(dtype=np.float64)._params.dtype == np.float64
    with pytest.raises(ValueError):
        mod.Model(dtype=np.int32)


def test_initialisers(mod):
    m = mod.Inits(seed=3)
    emb, kernel, rec, bias = m.get_weights()
    assert np.abs(emb).max() <= 0.05 and emb.std() > 0.01
    limit = math.sqrt(6 / (8 + 64))
    assert np.abs(kernel).max() <= limit and np.abs(kernel).max() > 0.9 * limit
    np.testing.assert_allclose(rec @ rec.T, np.eye(16), atol=1e-5)  # rows orthonormal
    np.testing.assert_array_equal(bias, np.r_[np.zeros(16), np.ones(16), np.zeros(32)])
    again = mod.Inits(seed=3).get_weights()
    assert all(np.array_equal(a, b) for a, b in zip(m.get_weights(), again))
    assert not np.array_equal(mod.Inits(seed=4).get_weights()[0], emb)
    assert m._opt_state and len(m._opt_state) == 3  # rmsprop: v, m, mg
    # without momentum or centering only v is read: m and mg take no memory
    assert [st.size for st in m._opt_state] == [m._params.size, 0, 0]


def test_zero_biases(mod):
    m = mod.TwoOut(seed=0)
    assert not m._w[2].any() and not m._w[4].any()


# -- predict and input structure ---------------------------------------------

def test_predict_single_and_multi(mod):
    m = mod.Model(seed=0)
    x, _ = data(70)
    p = m.predict(x)
    assert isinstance(p, np.ndarray) and p.shape == (70, 3)
    np.testing.assert_allclose(p.sum(axis=1), 1, rtol=1e-5)
    np.testing.assert_array_equal(p, m.predict(x, batch_size=7))
    np.testing.assert_array_equal(p, m.predict([x]))
    np.testing.assert_array_equal(p, m.predict({"x": x}))
    np.testing.assert_allclose(p, m.predict(x.astype(np.float64)), rtol=1e-6)
    t = mod.TwoOut(seed=0)
    xs, _ = two_data()
    out = t.predict(xs)
    assert isinstance(out, list) and [o.shape for o in out] == [(10, 1), (10, 3)]
    by_name = t.predict({"aux": xs[1], "ids": xs[0]})
    assert all(np.array_equal(a, b) for a, b in zip(out, by_name))
    assert t.input_names == ("ids", "aux") and t.output_names == ("o1", "o2")


def test_predict_ints_cast_for_float_input(mod):
    m = mod.Model(seed=0)
    xi = np.arange(8).reshape(2, 4)
    np.testing.assert_allclose(m.predict(xi), m.predict(xi.astype(np.float32)))


@pytest.mark.parametrize("bad, words", [
    (lambda x: x[0], ["'ids'", "'aux'", "single array"]),
    (lambda x: [x[0]], ["2 inputs", "1 arrays"]),
    (lambda x: {"ids": x[0]}, ["Missing", "'aux'"]),
    (lambda x: {"ids": x[0], "aux": x[1], "extra": x[1]}, ["Unknown", "'extra'"]),
    (lambda x: [x[0], x[1][:, :1]], ["'aux'", "(None, 2)", "shape=(10, 1)"]),
    (lambda x: [x[0], x[1][:, :, None]], ["'aux'", "(None, 2)", "shape=(10, 2, 1)"]),
    (lambda x: [x[0].astype(np.float32), x[1]], ["'ids'", "(None, 3)", "float32"]),
    (lambda x: [x[0][:5], x[1]], ["cardinality", "'ids' has 5", "'aux' has 10"]),
    (lambda x: [x[0], np.full((10, 2), "a")], ["'aux'", "(None, 2)"]),
])
def test_bad_inputs(mod, bad, words):
    t = mod.TwoOut(seed=0)
    xs, _ = two_data()
    with pytest.raises(ValueError) as err:
        t.predict(bad(xs))
    for w in words:
        assert w in str(err.value), (w, str(err.value))


def test_ids_out_of_range_checked_before_kernels(mod):
    t = mod.TwoOut(seed=0)
    calls = []
    real = t._forward
    t._forward = lambda *a: calls.append(1) or real(*a)
    xs, ys = two_data()
    for bad in (10, -1):
        ids = xs[0].copy()
        ids[4, 2] = bad
        for call in (lambda: t.predict([ids, xs[1]]), lambda: t.fit([ids, xs[1]], ys, verbose=0),
                     lambda: t.evaluate([ids, xs[1]], ys)):
            with pytest.raises(ValueError, match=rf"'ids'.*{bad}.*\(4, 2\).*\[0, 10\)"):
                call()
    assert calls == []
    t.predict(xs)
    assert calls


def test_non_finite_inputs(mod):
    m = mod.Model(seed=0)
    x, y = data()
    x[3, 1] = np.nan
    with pytest.raises(ValueError, match=r"'x'.*\(None, 4\).*nan.*\(3, 1\)"):
        m.predict(x)
    y2 = y.copy()
    y2[0, 0] = np.inf
    with pytest.raises(ValueError, match="Target 'dense'"):
        m.evaluate(data()[0], y2)
    m.check_finite = False
    assert np.isnan(m.predict(x)[3]).all()
    assert np.isfinite(mod.Model(check_finite=False).predict(data()[0])).all()


def test_non_finite_inputs_big(mod):
    """From _RT_CHECK_PARALLEL_MIN values the check runs on every thread: it
    still finds a NaN or Inf anywhere, and reports the first."""
    m = mod.Model(seed=0)
    n = mod._RT_CHECK_PARALLEL_MIN // 4 + 3
    x = np.zeros((n, 4), np.float32)
    assert x.size >= mod._RT_CHECK_PARALLEL_MIN
    assert not mod._rt_has_nonfinite(x.reshape(-1))
    for at, v in (((n - 1, 3), np.inf), ((n // 2, 0), np.nan)):
        x[at] = v
        with pytest.raises(ValueError, match=rf"'x'.*{v}.*\({at[0]}, {at[1]}\)"):
            m.predict(x, batch_size=n)
    x[7, 2] = -np.inf
    with pytest.raises(ValueError, match=r"-inf.*\(7, 2\)"):  # the first of three
        m.predict(x, batch_size=n)


# -- targets, losses, metrics ---------------------------------------------

def test_metric_keys_single_and_multi(mod):
    m = mod.Model(seed=0)
    x, y = data()
    assert list(m.evaluate(x, y)) == ["accuracy", "loss"]
    t = mod.TwoOut(seed=0)
    xs, ys = two_data()
    logs = t.evaluate(xs, ys)
    assert list(logs) == ["loss", "o1_accuracy", "o1_loss", "o2_accuracy", "o2_loss"]
    assert all(type(v) is float for v in logs.values())
    assert logs["loss"] == pytest.approx(logs["o1_loss"] + 0.5 * logs["o2_loss"], rel=1e-6)
    assert list(mod.Linear(seed=0).evaluate(x, y)) == ["loss"]


def test_loss_is_batch_mean(mod):
    m = mod.Model(seed=0, dtype=np.float64)
    x, y = data(13)
    p = m.predict(x)
    want = -np.mean(np.sum(y * np.log(p), axis=1))
    assert m.evaluate(x, y, batch_size=5)["loss"] == pytest.approx(want, rel=1e-9)
    acc = np.mean(p.argmax(1) == y.argmax(1))
    assert m.evaluate(x, y, batch_size=13)["accuracy"] == pytest.approx(acc)


def test_target_structures(mod):
    t = mod.TwoOut(seed=0)
    xs, ys = two_data()
    ref = t.evaluate(xs, ys)
    variants = [
        {"o2": ys[1], "o1": ys[0]},
        (ys[0], ys[1]),
        [ys[0][:, 0], ys[1][:, None]],          # (n,) for a (1,) output; sparse (n, 1) squeezed
        [ys[0].astype(np.float64), ys[1].astype(np.float32)],  # integral float class ids
    ]
    for v in variants:
        assert t.evaluate(xs, v) == ref
    with pytest.raises(ValueError, match=r"Target 'o2'.*\[0, 3\)"):
        t.evaluate(xs, [ys[0], ys[1] + 3])
    with pytest.raises(ValueError, match=r"Target 'o1' expected shape \(None, 1\)"):
        t.evaluate(xs, [np.zeros((10, 2)), ys[1]])
    with pytest.raises(ValueError, match="Missing data for target 'o2'"):
        t.evaluate(xs, {"o1": ys[0]})
    with pytest.raises(ValueError, match="cardinality"):
        t.evaluate(xs, [ys[0][:9], ys[1][:9]])


def test_accuracy_kind_from_shapes(mod):
    k = mod._Runtime._accuracy_kind
    assert k((1,), (5, 1)) == "binary"
    assert k((4,), (5,)) == "sparse_categorical"
    assert k((4,), (5, 1)) == "sparse_categorical"
    assert k((4,), (5, 4)) == "categorical"
    assert k((7, 4), (5, 7)) == "sparse_categorical"


def test_sequence_output_flattened(mod):
    m = mod.Seq(seed=0, dtype=np.float64)
    rng = np.random.default_rng(0)
    x = rng.random((6, 2, 4))
    t = rng.integers(0, 3, (6, 2))
    p = m.predict(x)
    assert p.shape == (6, 2, 3)
    picked = np.take_along_axis(p, t[..., None], axis=-1)
    logs = m.evaluate(x, t)
    assert logs["loss"] == pytest.approx(-np.log(picked).mean(), rel=1e-9)
    assert logs["accuracy"] == pytest.approx(np.mean(p.argmax(-1) == t))
    assert m.evaluate(x, t[..., None]) == logs


# -- gradients and steps ------------------------------------------------------

def test_compute_gradients_matches_finite_differences(mod):
    t = mod.TwoOut(seed=0, dtype=np.float64)
    xs, ys = two_data(6)
    before = t.get_weights()
    logs, grads = t.compute_gradients(xs, ys)
    assert list(grads) == ["ids", "embedding", "aux", "o1", "o2"]
    assert grads["ids"] == [] and [g.shape for g in grads["o2"]] == [(4, 3), (3,)]
    assert logs == t.evaluate(xs, ys, batch_size=6)
    assert all(np.array_equal(a, b) for a, b in zip(before, t.get_weights()))
    assert t.iterations == 0
    flat = np.concatenate([g.ravel() for name in grads for g in grads[name]])
    eps, num = 1e-6, np.empty_like(t._params)
    for i in range(t._params.size):
        keep = t._params[i]
        t._params[i] = keep + eps
        up = t.evaluate(xs, ys, batch_size=6)["loss"]
        t._params[i] = keep - eps
        down = t.evaluate(xs, ys, batch_size=6)["loss"]
        t._params[i] = keep
        num[i] = (up - down) / (2 * eps)
    np.testing.assert_allclose(flat, num, rtol=1e-5, atol=1e-8)


def test_train_on_batch_metrics_before_update(mod):
    m = mod.Model(seed=0)
    x, y = data()
    ref = m.evaluate(x, y, batch_size=10)
    _, grads = m.compute_gradients(x, y)
    w0 = m.get_weights()
    logs = m.train_on_batch(x, y)
    assert logs == pytest.approx(ref)
    assert m.iterations == 1
    for w, before, g in zip(m.get_weights(), w0, grads["dense"]):  # sgd, lr 0.1
        np.testing.assert_allclose(w, before - 0.1 * g, rtol=1e-5, atol=1e-7)


def test_adam_first_step(mod):
    t = mod.TwoOut(seed=0, dtype=np.float64)
    xs, ys = two_data()
    _, grads = t.compute_gradients(xs, ys)
    g = np.concatenate([a.ravel() for v in grads.values() for a in v])
    before = t._params.copy()
    t.train_on_batch(xs, ys)
    # Adam's first step: lr * g / (|g| + eps / sqrt(1 - beta_2)) ~ lr * sign(g)
    np.testing.assert_allclose(before - t._params, 0.01 * g / (np.abs(g) + 1e-7 / math.sqrt(1e-3)),
                               rtol=1e-6, atol=1e-12)
    assert t.iterations == 1


def test_fit_history_is_weighted_mean_of_pre_update_batches(mod):
    x, y = data(10)
    m = mod.Model(seed=0)
    hist = m.fit(x, y, verbose=0)  # defaults: 2 epochs, batch 4, no shuffle
    assert list(hist) == ["accuracy", "loss"] and len(hist["loss"]) == 2
    assert hist.history is hist and m.iterations == 6
    ref = mod.Model(seed=0)
    for epoch in range(2):
        sums = {"accuracy": 0.0, "loss": 0.0}
        for s in range(0, 10, 4):
            logs = ref.train_on_batch(x[s:s + 4], y[s:s + 4])
            for k in sums:
                sums[k] += logs[k] * len(x[s:s + 4])
        for k in sums:
            assert hist[k][epoch] == pytest.approx(sums[k] / 10, rel=1e-6)
    assert all(np.array_equal(a, b) for a, b in zip(m.get_weights(), ref.get_weights()))


def test_fit_arguments_override_defaults(mod):
    x, y = data(10)
    m = mod.Model(seed=0)
    hist = m.fit(x, y, epochs=3, batch_size=10, verbose=0)
    assert len(hist["loss"]) == 3 and m.iterations == 3
    with pytest.raises(ValueError, match="batch_size"):
        m.fit(x, y, batch_size=0, verbose=0)


def test_validation_split_takes_last_fraction(mod):
    x, y = data(10)

    class Frozen(mod.Model):
        _optimizer = ("sgd", {"learning_rate": 0.0})

    m = Frozen(seed=0)
    hist = m.fit(x, y, epochs=2, batch_size=3, validation_split=0.3, shuffle=True, verbose=0)
    assert list(hist) == ["accuracy", "loss", "val_accuracy", "val_loss"]
    val = m.evaluate(x[7:], y[7:])
    train = m.evaluate(x[:7], y[:7])
    assert hist["val_loss"][1] == pytest.approx(val["loss"], rel=1e-6)
    assert hist["val_accuracy"][0] == pytest.approx(val["accuracy"])
    assert hist["loss"][0] == pytest.approx(train["loss"], rel=1e-6)
    assert m.iterations == 6  # 7 training samples, batch 3 -> 3 steps per epoch
    with pytest.raises(ValueError, match="not sufficient"):
        m.fit(x[:1], y[:1], validation_split=0.5, verbose=0)


def test_validation_data_multi_output(mod):
    t = mod.TwoOut(seed=0)
    xs, ys = two_data(20)
    vx, vy = two_data(5, seed=9)
    hist = t.fit(xs, ys, epochs=2, validation_data=(vx, vy), verbose=0)
    assert list(hist) == ["loss", "o1_accuracy", "o1_loss", "o2_accuracy", "o2_loss",
                          "val_loss", "val_o1_accuracy", "val_o1_loss", "val_o2_accuracy",
                          "val_o2_loss"]
    assert hist["val_loss"][-1] == pytest.approx(t.evaluate(vx, vy)["loss"], rel=1e-6)


def test_fit_deterministic_and_shuffles(mod):
    xs, ys = two_data(30)
    a, b = mod.TwoOut(seed=5), mod.TwoOut(seed=5)
    ha, hb = a.fit(xs, ys, epochs=3, verbose=0), b.fit(xs, ys, epochs=3, verbose=0)
    assert ha == hb
    assert all(np.array_equal(p, q) for p, q in zip(a.get_weights(), b.get_weights()))
    c = mod.TwoOut(seed=5)
    c.fit(xs, ys, epochs=3, shuffle=False, verbose=0)
    assert not np.array_equal(c._params, a._params)


def test_buffers_allocated_once_per_batch_size(mod):
    x, y = data(10)
    m = mod.Model(seed=0)
    m.fit(x, y, epochs=3, batch_size=4, verbose=0)
    m.fit(x, y, epochs=2, batch_size=4, shuffle=True, verbose=0)
    m.evaluate(x, y, batch_size=4)
    assert m.alloc_calls == [4, 2]


def test_verbose_prints_one_line_per_epoch(mod, capsys):
    x, y = data(10)
    mod.Model(seed=0).fit(x, y, epochs=2, verbose=1)
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and lines[1].startswith("Epoch 2/2") and "loss: " in lines[1]


def test_non_finite_loss_stops_fit_and_keeps_weights(mod):
    x, y = data(10)
    m = mod.Model(seed=0)
    huge = [np.full((4, 3), 3e38, np.float32), np.zeros(3, np.float32)]
    huge[0][:, 0] = -3e38
    m.set_weights(huge)
    with np.errstate(all="ignore"):
        with pytest.raises(FloatingPointError, match="epoch 1, batch 1: Non-finite loss.*last finite"):
            m.fit(x, y, verbose=0)
        with pytest.raises(FloatingPointError, match="Non-finite loss"):
            m.train_on_batch(x, y)
    assert m.iterations == 0
    assert all(np.array_equal(a, b) for a, b in zip(m.get_weights(), huge))


def test_divergence_stops_with_finite_weights(mod):
    x, y = data(10)

    class Wild(mod.Linear):
        _optimizer = ("sgd", {"learning_rate": 50.0})

    m = Wild(seed=0)
    with np.errstate(all="ignore"), pytest.raises(FloatingPointError, match="Non-finite"):
        m.fit(x * 100, y, epochs=50, batch_size=10, verbose=0)
    assert 0 < m.iterations < 50
    assert np.isfinite(m._params).all()


# -- weights API --------------------------------------------------------------

def test_set_weights_checks_everything_first(mod):
    m = mod.Model(seed=0)
    w0 = m.get_weights()
    new = [np.ones((4, 3)), np.ones(3)]
    with pytest.raises(ValueError, match="expected 2 arrays, Received: 1"):
        m.set_weights(new[:1])
    with pytest.raises(ValueError, match=r"weight 1 \('dense/bias'\) expected shape \(3,\)"):
        m.set_weights([new[0], np.ones(4)])
    assert all(np.array_equal(a, b) for a, b in zip(m.get_weights(), w0))
    m.set_weights(new)
    assert all((w == 1).all() for w in m.get_weights())
    assert np.shares_memory(m._w[0], m._params)  # views stay valid
    m.get_weights()[0][...] = 7  # copies, not views
    assert (m._w[0] == 1).all()


def test_layer_weights_round_trip(mod):
    t, u = mod.TwoOut(seed=0), mod.TwoOut(seed=1)
    lw = t.layer_weights()
    assert list(lw) == ["ids", "embedding", "aux", "o1", "o2"] and lw["aux"] == []
    u.set_layer_weights(lw)
    assert all(np.array_equal(a, b) for a, b in zip(t.get_weights(), u.get_weights()))
    v = mod.TwoOut(seed=2)
    before = v.get_weights()
    v.set_layer_weights({"o1": lw["o1"]})  # a subset
    after = v.get_weights()
    assert np.array_equal(after[1], lw["o1"][0]) and np.array_equal(after[0], before[0])
    with pytest.raises(ValueError, match="Unknown layer 'nope'"):
        v.set_layer_weights({"o2": lw["o2"], "nope": []})
    with pytest.raises(ValueError, match=r"o2.*kernel.*\(4, 3\)"):
        v.set_layer_weights({"o1": [np.zeros((4, 1)), np.zeros(1)],  # valid, but not applied
                             "o2": [np.zeros((3, 4)), np.zeros(3)]})
    assert all(np.array_equal(a, b) for a, b in zip(v.get_weights(), after))


def test_save_load_weights(mod, tmp_path):
    t = mod.TwoOut(seed=0)
    path = tmp_path / "w.npz"
    t.save_weights(path)
    assert [p.name for p in tmp_path.iterdir()] == ["w.npz"]  # no temp file left
    u = mod.TwoOut(seed=1, dtype=np.float64)
    u.load_weights(path)
    assert all(np.allclose(a, b) for a, b in zip(t.get_weights(), u.get_weights()))
    t.save_weights(str(path))  # overwrite in place
    m = mod.Model(seed=0)
    w0 = m.get_weights()
    with pytest.raises(ValueError, match=r"weight 0 is 'embedding/embeddings' in the file, "
                                         r"'dense/kernel' in the model"):
        m.load_weights(path)
    assert all(np.array_equal(a, b) for a, b in zip(m.get_weights(), w0))


def test_load_weights_shape_mismatch(mod, tmp_path):
    class Wide(mod.Model):
        _layers = (("x", "InputLayer", ()),
                   ("dense", "Dense", (("kernel", (4, 3)), ("bias", (5,)))))

    path = tmp_path / "wide.npz"
    Wide(seed=0).save_weights(path)
    m = mod.Model(seed=0)
    w0 = m.get_weights()
    with pytest.raises(ValueError, match=r"weight 1 \('dense/bias'\) expected shape \(3,\)"):
        m.load_weights(path)
    assert all(np.array_equal(a, b) for a, b in zip(m.get_weights(), w0))


def test_summary(mod, capsys):
    mod.TwoOut(seed=0).summary()
    out = capsys.readouterr().out
    assert 'Model: "two_out"' in out
    for text in ("Layer (type)", "Output Shape", "Param #", "embedding (Embedding)",
                 "(None, 3, 2)", "ids (InputLayer)", "(None, 3)", "o2 (Dense)", "15",
                 "Total params: 40 (160.00 B)", "Trainable params: 40"):
        assert text in out, text
