"""The benchmark's models as data, for the runners (frameworks.py), the worker
and the scripts: the seed models' names, the scaling sweep's model (its sizes
from a spec, its Keras file as gen reads it), and every model's pre-made
training data."""
import numpy as np

MODELS = ("mlp", "twitter")
SWEEP_FEATURES = 32  # input features per timestep of the sweep model


def sweep_dims(spec):
    """(seq_len, units, features) of the sweep model described by `spec`."""
    return (int(spec["seq_len"]), int(spec["units"]),
            int(spec.get("features", SWEEP_FEATURES)))


def sweep_model_source(seq_len, units, features=SWEEP_FEATURES):
    """The Keras model file of one sweep point, as gen reads it."""
    return (
        "from keras.layers import Input, LSTM, Dense\n"
        "from keras.models import Model\n"
        "\n"
        f"inputs = Input(shape=({seq_len}, {features}))\n"
        f"x = LSTM({units})(inputs)\n"
        "out = Dense(1, activation='sigmoid')(x)\n"
        "model = Model(inputs, outputs=out)\n"
        "model.compile(optimizer='rmsprop', loss='binary_crossentropy')\n")


def make_data(model, n, seed=0, spec=None):
    """Pre-generated training data: (xs, ys) as lists of numpy arrays."""
    rng = np.random.default_rng(seed)
    if model == "sweep":
        seq_len, _, features = sweep_dims(spec)
        x = rng.random((n, seq_len, features), dtype=np.float32)
        lab = rng.integers(0, 2, (n, 1)).astype(np.float32)
        return [x], [lab]
    if model == "mlp":
        x = rng.random((n, 784), dtype=np.float32)
        y = np.eye(10, dtype=np.float32)[rng.integers(0, 10, n)]
        return [x], [y]
    if model == "twitter":
        ids = rng.integers(0, 10000, (n, 100)).astype(np.int32)
        aux = rng.random((n, 5), dtype=np.float32)
        lab = rng.integers(0, 2, (n, 1)).astype(np.float32)
        return [ids, aux], [lab, lab.copy()]
    raise ValueError(model)
