"""What gen understands of Keras: callables and their parameters, activations,
losses, optimizers and metrics, with Keras 3 defaults. One table per kind so the
parser, the graph and the diagnostics agree on the supported surface."""
from __future__ import annotations

from dataclasses import dataclass

_NO_DEFAULT = object()


@dataclass(frozen=True)
class Param:
    name: str
    default: object = _NO_DEFAULT
    positional: bool = True  # may be given positionally (in table order)

    @property
    def required(self) -> bool:
        return self.default is _NO_DEFAULT


@dataclass(frozen=True)
class Signature:
    """A Keras callable as gen supports it. `kind` is what it creates."""

    name: str
    kind: str  # "layer" (constructor), "input", "function" (creates a layer and applies it), "model"
    params: tuple[Param, ...]
    layer_class: str = ""  # the Keras class created (auto-name prefix source)

    def param(self, name: str) -> Param | None:
        return next((p for p in self.params if p.name == name), None)

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.params]


_NAME = Param("name", None, positional=False)

# Keys are the public Keras names; the parser maps every import spelling to them.
CALLABLES: dict[str, Signature] = {
    "Input": Signature("Input", "input", (
        Param("shape", None), Param("batch_size", None), Param("dtype", None), Param("sparse", None),
        Param("batch_shape", None), Param("name", None)), "InputLayer"),
    "Dense": Signature("Dense", "layer", (
        Param("units"), Param("activation", None), Param("use_bias", True), _NAME), "Dense"),
    "Embedding": Signature("Embedding", "layer", (
        Param("input_dim"), Param("output_dim"), Param("input_length", None, positional=False), _NAME), "Embedding"),
    "LSTM": Signature("LSTM", "layer", (
        Param("units"), Param("activation", "tanh"), Param("recurrent_activation", "sigmoid"),
        Param("use_bias", True), Param("unit_forget_bias", True, positional=False),
        Param("return_sequences", False, positional=False), _NAME), "LSTM"),
    "Concatenate": Signature("Concatenate", "layer", (Param("axis", -1), _NAME), "Concatenate"),
    "concatenate": Signature("concatenate", "function", (Param("inputs"), Param("axis", -1), _NAME), "Concatenate"),
    "Activation": Signature("Activation", "layer", (Param("activation"), _NAME), "Activation"),
    "TimeDistributed": Signature("TimeDistributed", "layer", (Param("layer"), _NAME), "TimeDistributed"),
    "Model": Signature("Model", "model", (Param("inputs"), Param("outputs"), _NAME), "Functional"),
}

# Methods called on a model object.
METHODS: dict[str, Signature] = {
    "compile": Signature("compile", "method", (
        Param("optimizer", "rmsprop"), Param("loss", None), Param("loss_weights", None), Param("metrics", None))),
    "fit": Signature("fit", "method", (
        Param("x", None), Param("y", None), Param("batch_size", None), Param("epochs", 1), Param("verbose", "auto"),
        Param("callbacks", None), Param("validation_split", 0.0), Param("validation_data", None),
        Param("shuffle", True))),
    "summary": Signature("summary", "method", ()),
}

# Keras 2 spellings the seed document uses: accepted with a warning.
RENAMED_KEYWORDS = {("compile", "loss_weight"): "loss_weights"}

ACTIVATIONS = {"linear": 0, "relu": 1, "sigmoid": 2, "tanh": 3, "softmax": 4}

LOSSES = {
    "binary_crossentropy": "binary_crossentropy",
    "categorical_crossentropy": "categorical_crossentropy",
    "sparse_categorical_crossentropy": "sparse_categorical_crossentropy",
    "mean_squared_error": "mean_squared_error",
    "mse": "mean_squared_error",
}

METRICS = ("accuracy",)

# Optimizers: Keras class name -> (string alias, Keras 3 defaults, in signature order).
OPTIMIZERS: dict[str, tuple[str, dict[str, object]]] = {
    "SGD": ("sgd", {"learning_rate": 0.01, "momentum": 0.0, "nesterov": False}),
    "RMSprop": ("rmsprop", {"learning_rate": 0.001, "rho": 0.9, "momentum": 0.0, "epsilon": 1e-07, "centered": False}),
    "Adam": ("adam", {"learning_rate": 0.001, "beta_1": 0.9, "beta_2": 0.999, "epsilon": 1e-07, "amsgrad": False}),
}
OPTIMIZER_ALIASES = {alias: cls for cls, (alias, _) in OPTIMIZERS.items()}

INPUT_DTYPES = {"float32": "float", "int32": "int", "int64": "int"}


def snake_case(class_name: str) -> str:
    """Keras's to_snake_case: 'TimeDistributed' -> 'time_distributed', 'LSTM' -> 'lstm'."""
    import re

    s = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", class_name)
    return re.sub(r"([a-z])([A-Z])", r"\1_\2", s).lower()
