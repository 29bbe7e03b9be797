"""The checked graph of one model as data: tensors, layers, the entries of
Keras's model.layers, primitive and top-level nodes, and ModelGraph."""
from __future__ import annotations

from dataclasses import dataclass, field

from .diagnostics import Span
from .ir import CallDecl, LayerDecl, ModelDecl
from .layers import Kind, Shape, WeightSpec
from .settings import CompileSettings, FitSettings


@dataclass
class Tensor:
    """A symbolic tensor. `shape` is Keras's per-sample shape (None first);
    its buffer holds n * bmul rows, bmul > 1 inside TimeDistributed.
    An alias shares the buffer (and gradient buffer) of `alias_of`."""

    id: int
    shape: Shape
    dtype: str            # "float" | "int"
    node: "Node | None"   # the primitive node that computes it (None for aliases and inputs of instances)
    span: Span
    top: "TopNode | None" = None
    bmul: int = 1
    alias_of: "Tensor | None" = None

    def base(self) -> "Tensor":
        return self.alias_of.base() if self.alias_of is not None else self


@dataclass
class Layer:
    """A layer object of the file; shared by every call site and every model."""

    name: str
    kind: Kind
    decl: LayerDecl
    weights: list[WeightSpec] = field(default_factory=list)
    built: bool = False

    @property
    def cls(self) -> str:
        return self.kind.cls

    @property
    def params(self) -> list[tuple["Layer", WeightSpec]]:
        return [(self, w) for w in self.weights]


@dataclass
class Entity:
    """An entry of Keras's model.layers that is not a plain layer: a nested
    model or a TimeDistributed wrapper. Its weights are those it wraps."""

    name: str
    cls: str              # "Functional" | "TimeDistributed"
    params: list[tuple[Layer, WeightSpec]]
    decl_span: Span


@dataclass
class Node:
    """One primitive layer application, in execution order."""

    call: CallDecl
    layer: Layer
    inputs: list[Tensor]
    outputs: list[Tensor]
    via: Span | None = None   # the model call or TimeDistributed call this came through


@dataclass
class TopNode:
    """One call at the model's own level (what Keras's map_graph sees)."""

    entity: "Layer | Entity"
    inputs: list[Tensor]
    outputs: list[Tensor]


@dataclass
class ModelGraph:
    decl: ModelDecl
    name: str                 # Keras model name (model.name)
    module: str               # generated file stem
    inputs: list[Tensor]
    outputs: list[Tensor]
    nodes: list[Node]         # primitive nodes, execution order
    layers: list              # Keras model.layers order: Layer | Entity
    compile: CompileSettings | None
    fit: FitSettings
    shapes: dict = field(default_factory=dict)   # layer name -> output shape (summary)

    @property
    def input_names(self) -> list[str]:
        return [t.top.entity.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.top.entity.name for t in self.outputs]

    @property
    def params(self) -> list[tuple[Layer, WeightSpec]]:
        """Every weight once, in Keras get_weights() order."""
        seen, out = set(), []
        for entity in self.layers:
            for layer, w in entity.params:
                if (id(layer), w.name) not in seen:
                    seen.add((id(layer), w.name))
                    out.append((layer, w))
        return out
