"""From the parsed program to one checked graph per model: Keras's automatic
names, Keras's `model.layers` order, shapes and dtypes, compile and fit
settings resolved against the model's outputs."""
from __future__ import annotations

import collections
import keyword
import re
from dataclasses import dataclass, field

from . import catalog
from .diagnostics import Diagnostics, Span
from .ir import CallDecl, LayerDecl, ModelDecl, Program, Ref
from .layers import KINDS, Kind, Shape, WeightSpec, fmt_shape
from .settings import CompileSettings, FitSettings, resolve_compile, resolve_fit


@dataclass
class Tensor:
    id: int
    shape: Shape
    dtype: str            # "float" | "int"
    node: "Node"
    span: Span


@dataclass
class Layer:
    name: str
    kind: Kind
    decl: LayerDecl
    weights: list[WeightSpec] = field(default_factory=list)
    built: bool = False

    @property
    def cls(self) -> str:
        return self.kind.cls


@dataclass
class Node:
    call: CallDecl
    layer: Layer
    inputs: list[Tensor]
    outputs: list[Tensor]


@dataclass
class ModelGraph:
    decl: ModelDecl
    name: str                 # Keras model name (model.name)
    module: str               # generated file stem
    inputs: list[Tensor]
    outputs: list[Tensor]
    nodes: list[Node]         # topological order (execution order)
    layers: list[Layer]       # Keras model.layers order
    compile: CompileSettings | None
    fit: FitSettings

    @property
    def input_names(self) -> list[str]:
        return [t.node.layer.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.node.layer.name for t in self.outputs]


def keras_names(program: Program) -> dict[tuple[str, int], str]:
    """Names as Keras gives them in a fresh process: explicit `name=`, else
    snake_case(class) made unique by one process-wide counter per prefix,
    advanced in creation order by every unnamed object."""
    counters: collections.Counter = collections.Counter()
    objects = [(d.order, "layer", d.id, d.cls, d.args.get("name")) for d in program.layers]
    objects += [(m.order, "model", m.id, "Functional", m.name) for m in program.models]
    names = {}
    for _, kind, oid, cls, explicit in sorted(objects):
        if explicit is not None and explicit.value is not None:
            names[(kind, oid)] = explicit.value
            continue
        prefix = catalog.snake_case(cls)
        n = counters[prefix]
        counters[prefix] += 1
        names[(kind, oid)] = prefix if n == 0 else f"{prefix}_{n}"
    return names


class _Builder:
    """Builds the graph of one model; shared layer objects are built once."""

    def __init__(self, program: Program, names, diags: Diagnostics, kinds: dict[int, Kind]):
        self.program, self.names, self.diags, self.kinds = program, names, diags, kinds
        self.layers: dict[int, Layer] = {}
        self.tensors: dict[int, Tensor | None] = {}

    def layer(self, lid: int) -> Layer:
        if lid not in self.layers:
            decl = self.program.layers[lid]
            self.layers[lid] = Layer(self.names[("layer", lid)], self.kinds[lid], decl)
        return self.layers[lid]

    def tensor(self, tid: int, model_inputs: set[int], stack: tuple = ()) -> Tensor | None:
        """The tensor with shapes inferred, building its producers first."""
        if tid in self.tensors:
            return self.tensors[tid]
        call, index = self.program.producer(tid)
        if call.callee.kind != "layer":
            self.diags.error("unsupported-call", "Calling a Model like a layer is not supported yet.", call.span,
                             "inline the inner model's layers")
            self.tensors[tid] = None
            return None
        layer = self.layer(call.callee.id)
        refs = _flatten(call.inputs)
        if layer.cls == "InputLayer" and tid not in model_inputs:
            self.diags.error("disconnected", f"Graph disconnected: tensor from Input '{layer.name}' is used but is not among the "
                             "model's inputs.", call.span, "add it to Model(inputs=[...])")
        ins = [self.tensor(r.id, model_inputs) for r in refs]
        if any(t is None for t in ins):
            self.tensors[tid] = None
            return None
        out = layer.kind.output([t.shape for t in ins], [t.dtype for t in ins], call.span) if layer.kind.ok else None
        if out is None:
            self.tensors[tid] = None
            return None
        if not layer.built:
            layer.weights, layer.built = layer.kind.weights([t.shape for t in ins]), True
        node = Node(call, layer, ins, [])
        for j, otid in enumerate(call.outputs):
            t = Tensor(otid, out[0], out[1], node, self.program.tensor_spans.get(otid, call.span))
            node.outputs.append(t)
            self.tensors[otid] = t
        return self.tensors[tid]


def _flatten(struct) -> list[Ref]:
    if isinstance(struct, Ref):
        return [struct]
    if isinstance(struct, dict):
        return list(struct.values())
    return [r for s in struct for r in _flatten(s)]


def _keras_layer_order(inputs: list[Tensor], outputs: list[Tensor]) -> tuple[list[Node], list[Layer]]:
    """Keras's map_graph: nodes by DFS post-order from the outputs; depth = longest
    path to an output, lifted to a layer's largest depth; layers by decreasing
    depth, ties by first visit (pre-order)."""
    input_ids = {t.id for t in inputs}
    post: list[Node] = []
    done: set[int] = set()
    visit_index: dict[int, int] = {}
    layer_of: dict[int, Layer] = {}

    def walk(t: Tensor) -> None:
        node = t.node
        if id(node) in done:
            return
        layer_of.setdefault(id(node.layer), node.layer)
        visit_index.setdefault(id(node.layer), len(visit_index))
        if node.layer.cls != "InputLayer" and t.id not in input_ids:
            for x in node.inputs:
                walk(x)
        done.add(id(node))
        post.append(node)

    for t in outputs:
        walk(t)
    node_depth: dict[int, int] = {}
    layer_depth: dict[int, int] = {}
    in_graph = {id(n) for n in post}
    for node in reversed(post):
        depth = max(node_depth.setdefault(id(node), 0), layer_depth.get(id(node.layer), 0))
        layer_depth[id(node.layer)] = depth
        node_depth[id(node)] = depth
        for x in node.inputs:
            if id(x.node) in in_graph:
                node_depth[id(x.node)] = max(depth + 1, node_depth.get(id(x.node), 0))
    for t in inputs:  # inputs not connected to any output still count as layers
        if id(t.node.layer) not in layer_depth:
            layer_depth[id(t.node.layer)] = 0
            visit_index[id(t.node.layer)] = -1
            layer_of[id(t.node.layer)] = t.node.layer
    order = sorted(layer_depth, key=lambda k: (-layer_depth[k], visit_index[k]))
    return post, [layer_of[k] for k in order]


_MODULE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def build(program: Program, diags: Diagnostics) -> list[ModelGraph]:
    """One graph per Model(...) in the file, in file order; errors go to diags."""
    names = keras_names(program)
    kinds = {}
    for decl in program.layers:
        if decl.cls not in KINDS:
            diags.error("unsupported-layer", f"{decl.cls} is not supported yet.", decl.span,
                        "supported layers: " + ", ".join(k for k in KINDS if k != "InputLayer"))
        kinds[decl.id] = KINDS.get(decl.cls, KINDS["Activation"])(decl, diags)
    graphs, modules = [], {}
    for m in program.models:
        g = _build_model(program, m, names, diags, kinds)
        if g is None:
            continue
        if g.module in modules:
            diags.error("duplicate-output", f"Two models would write the same file '{g.module}.py'.", m.span,
                        f"give one of them another name=; the first is at line {modules[g.module].line}")
            continue
        modules[g.module] = m.span
        graphs.append(g)
    if not program.models:
        diags.error("no-model", "No Model(...) found in the file; there is nothing to generate.",
                    Span(program.path, 1, 1, 1, 1), "build one with Model(inputs=..., outputs=...)")
    return graphs


def _build_model(program, m: ModelDecl, names, diags, kinds) -> ModelGraph | None:
    name = names[("model", m.id)]
    module = m.name.value if m.name is not None else (m.var or name)
    span = m.name.span if m.name is not None else m.span
    if not isinstance(module, str) or not _MODULE_NAME.match(module) or keyword.iskeyword(module):
        diags.error("bad-name", f"The model name must be a valid Python identifier to name its module. Received: {module!r}",
                    span, "use letters, digits and underscores, e.g. name='my_model'")
        return None
    b = _Builder(program, names, diags, kinds)
    in_refs, out_refs = _flatten(m.inputs), _flatten(m.outputs)
    if not in_refs or not out_refs:
        diags.error("bad-model", "A Model needs at least one input and one output tensor.", m.span,
                    "Model(inputs=input_tensor, outputs=output_tensor)")
        return None
    if any(r.kind != "tensor" for r in in_refs + out_refs):
        diags.error("not-a-tensor", "Model inputs and outputs must be tensors.", m.span)
        return None
    in_ids = {r.id for r in in_refs}
    inputs = [b.tensor(r.id, in_ids) for r in in_refs]
    for r, t in zip(in_refs, inputs):
        if t is not None and t.node.layer.cls != "InputLayer":
            diags.error("bad-model", "Model inputs must come from Input(...).", t.span, "pass the Input tensors as inputs")
            return None
    outputs = [b.tensor(r.id, in_ids) for r in out_refs]
    if any(t is None for t in inputs + outputs):
        return None
    post, layers = _keras_layer_order(inputs, outputs)
    seen = {}
    for layer in layers:
        if layer.name in seen:
            diags.error("duplicate-name", f"The name \"{layer.name}\" is used 2 times in the model. All operation names should be unique.",
                        layer.decl.span, "give each layer its own name=")
            return None
        seen[layer.name] = layer
    nodes = [n for n in post if n.layer.cls != "InputLayer"]
    g = ModelGraph(m, name, module, inputs, outputs, nodes, layers, None, FitSettings())
    g.compile = resolve_compile(m.compile, g, diags) if m.compile else None
    g.fit = resolve_fit(m.fit, g, diags)
    return g


def describe(g: ModelGraph) -> str:
    """A short text form for tests and debugging."""
    lines = [f"model {g.name} -> {g.module}.py"]
    for layer in g.layers:
        lines.append(f"  {layer.name} ({layer.cls}) " + " ".join(f"{w.name}{fmt_shape(w.shape)}" for w in layer.weights))
    return "\n".join(lines)
