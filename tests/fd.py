"""Shared set-up and helpers of the kernel tests (tests/test_kernels_*.py):
the kernels module K, dtypes, activation codes and finite differences, and
the LSTM, loss and optimizer helpers that more than one of those files uses.

The kernel tests: float64 central finite differences of every backward kernel
against its forward, float32 forward checks against numpy references, loss /
metric / optimizer formulas, and (when Keras with the torch backend imports in
a subprocess) cross-checks of LSTM, losses and optimizers against Keras.

Finite differences use L = sum(R * output) with a random R, so every output
element carries a distinct weight.
"""

import numpy as np

try:
    from kernelmod import load_kernels
except ImportError:  # tests/ imported as a package
    from tests.kernelmod import load_kernels

K = load_kernels()

F32 = np.float32
F64 = np.float64
EPS_FD = 1e-6
LINEAR, RELU, SIGMOID, TANH, SOFTMAX = 0, 1, 2, 3, 4


# ---------------------------------------------------------------- helpers

def rng(seed=0):
    return np.random.default_rng(seed)


def numgrad_at(f, a, idx, eps=EPS_FD):
    """Central differences at the flat indices idx only (spot checks of big arrays)."""
    flat = a.reshape(-1)
    out = np.empty(len(idx))
    for n, k in enumerate(idx):
        old = flat[k]
        flat[k] = old + eps
        fp = f()
        flat[k] = old - eps
        fm = f()
        flat[k] = old
        out[n] = (fp - fm) / (2 * eps)
    return out


def numgrad(f, a, eps=EPS_FD):
    """Central-difference gradient of the scalar f() w.r.t. array a (edited in place)."""
    g = np.zeros_like(a, dtype=F64)
    flat = a.reshape(-1)
    gf = g.reshape(-1)
    for k in range(flat.size):
        old = flat[k]
        flat[k] = old + eps
        fp = f()
        flat[k] = old - eps
        fm = f()
        flat[k] = old
        gf[k] = (fp - fm) / (2 * eps)
    return g


def assert_grad(analytic, numeric, rtol=1e-5, atol=1e-7):
    assert analytic.shape == numeric.shape
    np.testing.assert_allclose(analytic, numeric, rtol=rtol, atol=atol)


def np_act(z, act):
    if act == LINEAR:
        return z.copy()
    if act == RELU:
        return np.maximum(z, 0)
    if act == SIGMOID:
        return 1 / (1 + np.exp(-z))
    if act == TANH:
        return np.tanh(z)
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def away_from_zero(a, margin=0.1):
    """Push values away from 0 so relu kinks are never straddled by a FD step."""
    return np.where(np.abs(a) < margin, np.sign(a + 1e-12) * margin, a)


# ------------------------------------------------------------------- lstm

def lstm_ref(x, W, Rk, b, act, ract, return_sequences):
    """Plain numpy Keras LSTM (batch-major, float64)."""
    B, T, _ = x.shape
    U = Rk.shape[0]
    h = np.zeros((B, U))
    c = np.zeros((B, U))
    out = []
    for t in range(T):
        z = x[:, t] @ W + h @ Rk + (b if b.size else 0)
        i = np_act(z[:, :U], ract)
        f = np_act(z[:, U:2 * U], ract)
        g = np_act(z[:, 2 * U:3 * U], act)
        o = np_act(z[:, 3 * U:], ract)
        c = f * c + i * g
        h = o * np_act(c, act)
        out.append(h)
    return np.stack(out, 1) if return_sequences else h[:, None, :]


def lstm_run(x, W, Rk, b, act, ract, rs, per_step=False):
    """lstm_forward with freshly allocated caches; returns (y, caches)."""
    B, T, I = x.shape
    U = Rk.shape[0]
    dt = x.dtype
    nan = lambda *shape: np.full(shape, np.nan, dt)
    y = nan(B, T if rs else 1, U)
    zs, xh, cp, tc = nan(B, T, 4 * U), nan(B, T, I + U + (b.shape[0] > 0)), nan(B, T, U), nan(B, T, U)
    rkt = nan(4 * U, U)  # rows schedule and transposed steps (see _LSTM_FORWARD_TRANSPOSED_MIN_UNITS)
    K.lstm_forward(y, zs, xh, cp, tc, nan(B, U), nan(B, U), nan(B, 4 * U), rkt, x, W, Rk, b, act, ract, rs, per_step)
    return y, (zs, xh, cp, tc)


def stacked(*grads):
    """The layer's gradients as lstm_backward takes them: one (rows, 4U)
    matrix, [dkernel; drkernel; dbias] (adjacent in the model's flat buffer)."""
    return np.concatenate([g.reshape(-1, g.shape[-1]) for g in grads if g.size])


def unstack(dw, *grads):
    """Copy the rows of dw back into the separate gradients."""
    o = 0
    for g in grads:
        n = g.size // g.shape[-1] if g.size else 0
        g[...] = dw[o:o + n].reshape(g.shape)
        o += n


def lstm_grads(x, W, Rk, b, R, caches, act, ract, rs, per_step, mode, dx=None, dW=None, dR=None, db=None, wmode=2):
    """lstm_backward with fresh NaN scratch; accumulates into the given
    gradients (wmode 2) or overwrites them (wmode 1)."""
    B, T, I = x.shape
    U = Rk.shape[0]
    G = 4 * U
    dt = x.dtype
    nan = lambda *shape: np.full(shape, np.nan, dt)
    dzt = nan(B, G) if per_step else np.zeros((0, 0), dt)
    if dx is None:
        dx = np.zeros((0, 0, 0), dt)
    dw = stacked(dW, dR, db)
    K.lstm_backward(dx, dw, nan(B, T, G), nan(B, U), nan(B, U), dzt,
                    R, x, *caches, W, Rk, nan(G, U), act, ract, rs, per_step, mode, wmode)
    unstack(dw, dW, dR, db)


ACT_PAIRS = [(TANH, SIGMOID), (RELU, TANH), (SIGMOID, SIGMOID), (LINEAR, TANH)]


# ----------------------------------------------------------------- losses

LOSSES = ["binary_crossentropy", "categorical_crossentropy",
          "sparse_categorical_crossentropy", "mean_squared_error"]


def loss_fns(name):
    return getattr(K, name + "_forward"), getattr(K, name + "_backward")


def loss_data(name, r, n=6, c=4, dtype=F64):
    """Predictions well inside (lo, hi) and matching targets."""
    if name == "binary_crossentropy":
        y = r.uniform(0.05, 0.95, (n, c))
        t = r.uniform(0, 1, (n, c))
        t[0, :2] = [0, 1]  # hard targets too
    elif name == "mean_squared_error":
        y = r.standard_normal((n, c))
        t = r.standard_normal((n, c))
    else:
        y = r.uniform(0.1, 1.0, (n, c))  # not normalised: the loss divides by the row sum
        ids = r.integers(0, c, n)
        if name == "sparse_categorical_crossentropy":
            t = ids.astype(np.int64)
        else:
            t = np.eye(c)[ids]
            t[1] = r.uniform(0, 1, c)  # soft target row
    return y.astype(dtype), (t if t.dtype.kind == "i" else t.astype(dtype))


# ------------------------------------------------------------- optimizers

OPT_CONFIGS = [
    ("sgd", dict(learning_rate=0.01, momentum=0.0, nesterov=False)),
    ("sgd", dict(learning_rate=0.05, momentum=0.9, nesterov=False)),
    ("sgd", dict(learning_rate=0.05, momentum=0.9, nesterov=True)),
    ("rmsprop", dict(learning_rate=0.001, rho=0.9, momentum=0.0, epsilon=1e-7, centered=False)),
    ("rmsprop", dict(learning_rate=0.01, rho=0.8, momentum=0.5, epsilon=1e-7, centered=False)),
    ("rmsprop", dict(learning_rate=0.01, rho=0.9, momentum=0.0, epsilon=1e-7, centered=True)),
    ("rmsprop", dict(learning_rate=0.01, rho=0.9, momentum=0.3, epsilon=1e-3, centered=True)),
    ("adam", dict(learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7, amsgrad=False)),
    ("adam", dict(learning_rate=0.01, beta_1=0.8, beta_2=0.99, epsilon=1e-7, amsgrad=True)),
]


def run_ours(kind, cfg, w0, grads):
    """Apply our update kernel once per gradient in grads; returns w."""
    dt = w0.dtype
    P = w0.size
    w = w0.copy()
    z = lambda used: np.zeros(P if used else 0, dt)  # noqa: E731
    if kind == "sgd":
        m = z(cfg["momentum"] != 0)
        for g in grads:
            K.sgd_update(w, g, m, cfg["learning_rate"], cfg["momentum"], cfg["nesterov"])
    elif kind == "rmsprop":
        v, m, mg = z(True), z(cfg["momentum"] > 0), z(cfg["centered"])
        for g in grads:
            K.rmsprop_update(w, g, v, m, mg, cfg["learning_rate"], cfg["rho"],
                             cfg["momentum"], cfg["epsilon"], cfg["centered"])
    else:
        m, v, vhat = z(True), z(True), z(cfg["amsgrad"])
        for it, g in enumerate(grads):
            K.adam_update(w, g, m, v, vhat, cfg["learning_rate"], cfg["beta_1"],
                          cfg["beta_2"], cfg["epsilon"], cfg["amsgrad"], it + 1)
    return w
