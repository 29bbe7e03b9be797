"""The fake generated module of the runtime tests (tests/test_runtime*.py):
prelude + kernels + runtime + small numpy models, built by
fake_generated_module (the session fixture `fake_mod`), and their data.

Kernel files from templates/kernels/ are used when they define the kernels
needed; otherwise the small fallbacks below stand in (numerics of kernels
are tested elsewhere; these tests are about the API)."""

import importlib.util
import re
import sys
from pathlib import Path

import numpy as np

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


def fake_generated_module(tmp_path_factory):
    """The body of the session fixture `fake_mod` (conftest.py): yields the module."""
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
