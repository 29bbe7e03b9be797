"""What the parser found in a model file: layer objects, their calls, models and
their compile/fit settings. Frozen dataclasses; every node carries its Span.

Values of arguments are evaluated literals (int, float, str, bool, None, tuple
for lists/tuples, dict for dicts) or references (`Ref`) to objects and tensors
of the file. Nothing here knows shapes or names: `graph.py` derives them."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Union

from .diagnostics import Span


@dataclass(frozen=True)
class Ref:
    """A reference to something the file created: kind is 'layer', 'model' or 'tensor'."""

    kind: str
    id: int


@dataclass(frozen=True)
class Arg:
    """An argument as written: its evaluated value and where it is.

    `items` holds the spans of the elements of a list/tuple (in order) or of
    the values of a dict (in key order), so diagnostics can point at one entry."""

    value: object
    span: Span
    items: tuple[Span, ...] = ()


# Structure of a model's inputs/outputs or of fit data, as written:
#   Ref('tensor', i)                      a single tensor
#   tuple[Ref, ...]                       a list/tuple of tensors
#   dict[str, Ref]                        a dict keyed by name
Struct = Union[Ref, tuple, dict]


@dataclass(frozen=True)
class LayerDecl:
    """One layer object: a constructor call (or the layer that `Input(...)` or
    `concatenate(...)` creates). `order` is its place in the file's global
    creation order, shared with models (Keras's auto-name counters follow it)."""

    id: int
    order: int
    cls: str                     # Keras class: InputLayer, Dense, Embedding, LSTM, Concatenate, Activation, TimeDistributed
    args: Mapping[str, Arg]      # every supported parameter given, by name (positional ones mapped)
    span: Span                   # the constructor call
    var: str | None = None       # the variable it was first bound to, if any
    inner: Ref | None = None     # TimeDistributed: the wrapped layer or model


@dataclass(frozen=True)
class CallDecl:
    """One application of a layer or model to tensors (a Keras node).

    `Input(...)` is a call of its InputLayer with no inputs. `inputs` keeps the
    structure as written (a single Ref or a tuple of Refs for a list)."""

    id: int
    callee: Ref                   # Ref('layer', i) or Ref('model', i)
    inputs: Struct
    outputs: tuple[int, ...]      # tensor ids produced, in order
    span: Span


@dataclass(frozen=True)
class CompileDecl:
    optimizer: str                       # Keras class name: 'RMSprop', 'SGD', 'Adam'
    optimizer_args: Mapping[str, Arg]    # only those given explicitly
    optimizer_span: Span
    loss: Arg | None                     # str | tuple[str] | dict[str, str]
    loss_weights: Arg | None             # float | tuple[float] | dict[str, float]
    metrics: Arg | None                  # tuple[str] | dict[str, str | tuple[str]] | tuple[tuple[str]]
    span: Span


@dataclass(frozen=True)
class FitDecl:
    """`model.fit(...)`: keyword settings, and the shape of x/y as written.

    x/y are None when absent, 'opaque' for an expression gen cannot see into,
    a tuple of 'opaque' for a list literal, or a dict {key: 'opaque'}."""

    args: Mapping[str, Arg]              # epochs, batch_size, shuffle, validation_split (as given)
    x: object
    y: object
    x_span: Span | None
    y_span: Span | None
    span: Span


@dataclass(frozen=True)
class ModelDecl:
    id: int
    order: int
    var: str | None                      # variable it is assigned to
    name: Arg | None                     # explicit name=
    inputs: Struct
    outputs: Struct
    span: Span
    compile: CompileDecl | None = None
    fit: FitDecl | None = None


@dataclass(frozen=True)
class Program:
    path: str
    source: str
    layers: tuple[LayerDecl, ...]
    calls: tuple[CallDecl, ...]
    models: tuple[ModelDecl, ...]
    tensor_spans: Mapping[int, Span] = field(default_factory=dict)   # where each tensor was made

    def producer(self, tensor: int) -> tuple[CallDecl, int]:
        """The call that produced a tensor and the tensor's index among its outputs."""
        for call in self.calls:
            if tensor in call.outputs:
                return call, call.outputs.index(tensor)
        raise KeyError(tensor)
