"""The five contestants of the benchmark, each behind one small interface.

Imported only inside a benchmark worker process (benchmarks/worker.py), one
framework per process, so that JAX's, torch's and numba's thread pools never
share a process.  Every runner offers:

    r = RUNNERS[framework](model_name, spec)
    r.fit(xs, ys, batch_size, epochs)      # a Keras-fit-like pass: shuffle, batches, step
    r.train_step(xs, ys)                   # one optimizer step on the whole of xs, ys
    r.predict(xs)                          # forward pass, no gradients, outputs to numpy
    r.info()                               # dict of facts worth printing (threads, graphs...)

`xs`, `ys` are lists of numpy arrays in the model's input/output order, made
by `make_data` (workloads.py).  The models are the seed examples, written out by hand for
each framework: examples/mlp.py and examples/twitter.py; and "sweep", the
scaling sweep's family (benchmarks/sweep.py): Input (seq_len, features) ->
LSTM(units) -> Dense(1, sigmoid), binary crossentropy, RMSprop, whose sizes
come from the spec (`seq_len`, `units`, `features`).
"""
import importlib.util
import math
import os
import sys

from workloads import sweep_dims

# Keras's float32 clip bound for probabilities (keras.config.epsilon()).
EPS = 1e-7
# Keras RMSprop: v = rho v + (1 - rho) g^2 ;  w -= lr g / sqrt(v + 1e-7).
# torch RMSprop:  v = alpha v + (1 - alpha) g^2 ;  w -= lr g / (sqrt(v) + eps).
# With eps = sqrt(1e-7) both denominators have the same floor (3.16e-4 at v=0)
# and agree for large v; they differ by at most a factor sqrt(2) (at v = 1e-7).
# The cost per element is the same either way.
TORCH_RMSPROP_EPS = math.sqrt(1e-7)


# --------------------------------------------------------------------- gen

def load_generated(path, modname):
    """Import a generated module from its file under a stable module name.

    The name must be the same in every process that shares a numba cache
    directory: numba pickles the module name into cached entries."""
    spec = importlib.util.spec_from_file_location(modname, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[modname] = mod
    spec.loader.exec_module(mod)
    return mod


class GenRunner:
    def __init__(self, model, spec):
        # the sweep names each point's module (one file per seq_len x units); a
        # module already imported from the same file is reused, so its compiled
        # kernels are too
        name = spec.get("gen_module", f"genbench_{model}")
        mod = sys.modules.get(name)
        if mod is None or os.path.abspath(getattr(mod, "__file__", "")) != \
                os.path.abspath(spec["gen_path"]):
            mod = load_generated(spec["gen_path"], name)
        self.mod = mod
        self.m = self.mod.Model(seed=0)
        self.single = len(self.m.output_names) == 1

    def _x(self, xs):
        return xs[0] if len(xs) == 1 else list(xs)

    def fit(self, xs, ys, batch_size, epochs):
        self.m.fit(self._x(xs), self._x(ys), epochs=epochs, batch_size=batch_size,
                   shuffle=True, verbose=0)

    def train_step(self, xs, ys):
        self.m.train_on_batch(self._x(xs), self._x(ys))

    def predict(self, xs):
        return self.m.predict(self._x(xs), batch_size=xs[0].shape[0])

    def info(self):
        import numba
        return {"numba": numba.__version__, "numba_threads": numba.get_num_threads(),
                "threading_layer": _numba_layer()}


def _numba_layer():
    import numba
    try:
        return numba.threading_layer()
    except ValueError:  # no parallel kernel ran yet
        return "not initialised"


# ------------------------------------------------------------------- keras

def keras_model(model, spec=None):
    import keras
    from keras import layers
    if model == "sweep":
        seq_len, units, features = sweep_dims(spec)
        inputs = keras.Input(shape=(seq_len, features))
        x = layers.LSTM(units)(inputs)
        out = layers.Dense(1, activation="sigmoid")(x)
        m = keras.Model(inputs, outputs=out)
        m.compile(optimizer="rmsprop", loss="binary_crossentropy")
        return m
    if model == "mlp":
        inputs = keras.Input(shape=(784,))
        x = layers.Dense(64, activation="relu")(inputs)
        x = layers.Dense(64, activation="relu")(x)
        predictions = layers.Dense(10, activation="softmax")(x)
        m = keras.Model(inputs=inputs, outputs=predictions)
        m.compile("rmsprop", "categorical_crossentropy", metrics=["accuracy"])
        return m
    main_input = keras.Input(shape=(100,), dtype="int32", name="main_input")
    x = layers.Embedding(output_dim=512, input_dim=10000)(main_input)
    lstm_out = layers.LSTM(32)(x)
    auxiliary_output = layers.Dense(1, activation="sigmoid", name="aux_output")(lstm_out)
    auxiliary_input = keras.Input(shape=(5,), name="aux_input")
    x = layers.concatenate([lstm_out, auxiliary_input])
    x = layers.Dense(64, activation="relu")(x)
    x = layers.Dense(64, activation="relu")(x)
    x = layers.Dense(64, activation="relu")(x)
    main_output = layers.Dense(1, activation="sigmoid", name="main_output")(x)
    m = keras.Model(inputs=[main_input, auxiliary_input], outputs=[main_output, auxiliary_output])
    # the seed file gives one loss string for both outputs (Keras 2); Keras 3 wants one per output
    m.compile(optimizer="rmsprop", loss=["binary_crossentropy", "binary_crossentropy"],
              loss_weights=[1.0, 0.2])
    return m


class KerasRunner:
    def __init__(self, model, spec):
        import keras
        keras.utils.set_random_seed(0)
        self.keras = keras
        self.m = keras_model(model, spec)

    def _x(self, xs):
        return xs[0] if len(xs) == 1 else list(xs)

    def fit(self, xs, ys, batch_size, epochs):
        self.m.fit(self._x(xs), self._x(ys), batch_size=batch_size, epochs=epochs,
                   shuffle=True, verbose=0)

    def train_step(self, xs, ys):
        self.m.train_on_batch(self._x(xs), self._x(ys))

    def predict(self, xs):
        # predict_on_batch: Keras's lowest-overhead inference call (model.predict
        # adds a data adapter and callbacks per call, ~ms at batch 1).
        return self.m.predict_on_batch(self._x(xs))

    def info(self):
        d = {"keras": self.keras.__version__, "backend": self.keras.backend.backend()}
        if d["backend"] == "jax":
            import jax
            d["jax"] = jax.__version__
            d["jax_devices"] = str(jax.devices())
        else:
            import torch
            d["torch"] = torch.__version__
            d["torch_threads"] = torch.get_num_threads()
        return d


# ------------------------------------------------------------------- torch

def torch_model(model, spec=None):
    import torch
    from torch import nn
    import torch.nn.functional as F

    class MLP(nn.Module):
        def __init__(self):
            super().__init__()
            self.dense = nn.Linear(784, 64)
            self.dense_1 = nn.Linear(64, 64)
            self.dense_2 = nn.Linear(64, 10)

        def forward(self, x):
            x = F.relu(self.dense(x))
            x = F.relu(self.dense_1(x))
            return (F.softmax(self.dense_2(x), dim=-1),)

    class Twitter(nn.Module):
        def __init__(self):
            super().__init__()
            self.embedding = nn.Embedding(10000, 512)  # dense gradient, as Keras
            self.lstm = nn.LSTM(512, 32, batch_first=True)  # gates i f g o, as Keras
            self.aux_output = nn.Linear(32, 1)
            self.dense = nn.Linear(37, 64)
            self.dense_1 = nn.Linear(64, 64)
            self.dense_2 = nn.Linear(64, 64)
            self.main_output = nn.Linear(64, 1)

        def forward(self, ids, aux):
            _, (h, _) = self.lstm(self.embedding(ids))
            lstm_out = h[-1]
            aux_out = torch.sigmoid(self.aux_output(lstm_out))
            x = torch.cat([lstm_out, aux], dim=1)
            x = F.relu(self.dense(x))
            x = F.relu(self.dense_1(x))
            x = F.relu(self.dense_2(x))
            return torch.sigmoid(self.main_output(x)), aux_out

    class Sweep(nn.Module):
        def __init__(self, seq_len, units, features):
            super().__init__()
            self.lstm = nn.LSTM(features, units, batch_first=True)  # gates i f g o, as Keras
            self.dense = nn.Linear(units, 1)

        def forward(self, x):
            _, (h, _) = self.lstm(x)
            return (torch.sigmoid(self.dense(h[-1])),)

    if model == "sweep":
        return Sweep(*sweep_dims(spec))
    return MLP() if model == "mlp" else Twitter()


def torch_loss(model):
    """Keras's losses on probabilities (clip to [eps, 1 - eps]), loss weights."""
    import torch
    import torch.nn.functional as F

    if model == "sweep":
        def loss(outs, ts):
            return F.binary_cross_entropy(outs[0].clamp(EPS, 1 - EPS), ts[0])
        return loss

    if model == "mlp":
        def loss(outs, ts):
            p = outs[0] / outs[0].sum(dim=-1, keepdim=True)
            p = p.clamp(EPS, 1 - EPS)
            return -(ts[0] * torch.log(p)).sum(dim=-1).mean()
        return loss

    def loss(outs, ts):
        main = F.binary_cross_entropy(outs[0].clamp(EPS, 1 - EPS), ts[0])
        aux = F.binary_cross_entropy(outs[1].clamp(EPS, 1 - EPS), ts[1])
        return main + 0.2 * aux
    return loss


class TorchRunner:
    compiled = False

    def __init__(self, model, spec):
        import torch
        torch.manual_seed(0)
        self.torch = torch
        self.model_name = model
        self.net = torch_model(model, spec)
        self.loss = torch_loss(model)
        self.opt = torch.optim.RMSprop(self.net.parameters(), lr=0.001, alpha=0.9,
                                       eps=TORCH_RMSPROP_EPS)
        self.fwd = self._wrap(self.net)
        self.int_inputs = model == "twitter"

    def _wrap(self, net):
        return net

    def _t(self, arrays):
        # from_numpy: no copy; int32 ids become int64 once (nn.Embedding's index type)
        out = []
        for a in arrays:
            t = self.torch.from_numpy(a)
            out.append(t.long() if a.dtype.kind in "iu" else t)
        return out

    def _step(self, xb, yb):
        self.opt.zero_grad(set_to_none=True)
        outs = self.fwd(*xb)
        loss = self.loss(outs, yb)
        loss.backward()
        self.opt.step()
        return loss.detach(), outs

    def fit(self, xs, ys, batch_size, epochs):
        torch = self.torch
        xs, ys = self._t(xs), self._t(ys)
        n = xs[0].shape[0]
        self.net.train()
        for _ in range(epochs):
            perm = torch.randperm(n)
            total = torch.zeros(())
            correct = torch.zeros(())
            for s in range(0, n, batch_size):
                idx = perm[s:s + batch_size]
                xb = [x[idx] for x in xs]
                yb = [y[idx] for y in ys]
                loss, outs = self._step(xb, yb)
                total += loss * idx.shape[0]
                if self.model_name == "mlp":  # Keras computes accuracy for this one
                    with torch.no_grad():
                        correct += (outs[0].argmax(-1) == yb[0].argmax(-1)).sum()
            float(total), float(correct)  # the epoch's logs, as fit reports them

    def train_step(self, xs, ys):
        self.net.train()
        loss, _ = self._step(self._t(xs), self._t(ys))
        float(loss)

    def predict(self, xs):
        with self.torch.no_grad():
            outs = self.fwd(*self._t(xs))
        return [o.numpy() for o in outs]

    def info(self):
        import torch
        return {"torch": torch.__version__, "torch_threads": torch.get_num_threads(),
                "torch_interop_threads": torch.get_num_interop_threads(),
                "rmsprop_eps": TORCH_RMSPROP_EPS}


class TorchCompileRunner(TorchRunner):
    compiled = True

    def _wrap(self, net):
        return self.torch.compile(net)

    def info(self):
        d = super().info()
        try:
            from torch._dynamo.utils import counters
            d["dynamo_unique_graphs"] = int(counters["stats"].get("unique_graphs", 0))
            d["dynamo_calls_captured"] = int(counters["stats"].get("calls_captured", 0))
            breaks = {str(k).splitlines()[0][:120]: int(v)
                      for k, v in counters["graph_break"].items()}
            # what dynamo refused (e.g. nn.LSTM: "Attempted to wrap RNN, GRU, or LSTM")
            breaks.update({str(k).splitlines()[0][:120]: int(v)
                           for k, v in counters["unimplemented"].items()})
            d["dynamo_graph_breaks"] = breaks
            d["dynamo_frames"] = int(counters["frames"].get("total", 0))
        except Exception as err:  # private API: report, never fail the run
            d["dynamo_counters_error"] = repr(err)
        return d


RUNNERS = {
    "gen": GenRunner,
    "gen-1t": GenRunner,  # diagnostic: gen with one numba thread and one BLAS thread
    "keras-jax": KerasRunner,
    "keras-torch": KerasRunner,
    "torch": TorchRunner,
    "torch-compile": TorchCompileRunner,
}

# the environment each framework's process needs on top of the cleaned one
FRAMEWORK_ENV = {
    "gen": {},
    "gen-1t": {"NUMBA_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"},
    "keras-jax": {"KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"},
    "keras-torch": {"KERAS_BACKEND": "torch"},
    "torch": {},
    "torch-compile": {},
}


def blas_info():
    """Which BLAS / OpenMP libraries are loaded in this process (threadpoolctl)."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return [{"error": "threadpoolctl not installed"}]
    keep = ("user_api", "internal_api", "version", "architecture", "num_threads",
            "threading_layer", "prefix")
    out = []
    for d in threadpool_info():
        e = {k: d.get(k) for k in keep if d.get(k) is not None}
        e["file"] = os.path.basename(d.get("filepath", ""))
        if "scipy.libs" in d.get("filepath", ""):
            e["used_by"] = "numba np.dot (scipy.linalg.cython_blas)"
        out.append(e)
    return out
