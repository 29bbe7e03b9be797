"""From the parsed program to one checked graph per model: Keras's automatic
names, Keras's `model.layers` order, shapes and dtypes, compile and fit
settings resolved against the model's outputs."""
from __future__ import annotations

import keyword
import math
import re

from .diagnostics import Diagnostics, Span
from .ir import CallDecl, LayerDecl, ModelDecl, Program, Ref
from .keras_order import _keras_layer_order, keras_names
from .layers import KINDS, Kind, fmt_shape
from .model_graph import Entity, Layer, ModelGraph, Node, Tensor, TopNode
from .settings import FitSettings, check_names, resolve_compile, resolve_fit


class _Program:
    """Program-wide state: one Layer per layer object, one graph per model."""

    def __init__(self, program: Program, diags: Diagnostics):
        self.program, self.diags = program, diags
        self.names = keras_names(program)
        for kind, decls in (("layer", program.layers), ("model", program.models)):
            for decl in decls:
                arg = decl.args.get("name") if kind == "layer" else decl.name
                if arg is not None and arg.value is not None and (not isinstance(arg.value, str) or "/" in arg.value
                                                                  or not arg.value):
                    diags.error("bad-name", "Argument `name` must be a non-empty string without '/'. "
                                f"Received: name={arg.value!r}", arg.span, "for example name='encoder'")
                    self.names[(kind, decl.id)] = str(arg.value)
        self.kinds: dict[int, Kind] = {}
        for decl in program.layers:
            if decl.cls == "TimeDistributed":
                continue
            if decl.cls not in KINDS:
                diags.error("unsupported-layer", f"{decl.cls} is not supported yet.", decl.span,
                            "supported layers: " + ", ".join(k for k in KINDS if k != "InputLayer") + ", TimeDistributed")
                continue
            self.kinds[decl.id] = KINDS[decl.cls](decl, diags)
        self.layers: dict[int, Layer] = {}
        self.graphs: dict[int, ModelGraph | None] = {}
        self.building: set[int] = set()
        self.next_tensor = max([t for c in program.calls for t in c.outputs], default=0) + 1

    def layer(self, lid: int) -> Layer | None:
        if lid not in self.layers and lid in self.kinds:
            self.layers[lid] = Layer(self.names[("layer", lid)], self.kinds[lid], self.program.layers[lid])
        return self.layers.get(lid)

    def new_id(self) -> int:
        self.next_tensor += 1
        return self.next_tensor

    def graph(self, mid: int) -> ModelGraph | None:
        if mid not in self.graphs:
            if mid in self.building:
                return None
            self.building.add(mid)
            self.graphs[mid] = _build_model(self, self.program.models[mid])
        return self.graphs[mid]


class _Builder:
    """Builds one model's graph: tensors with shapes, primitive nodes in
    execution order, and the top-level nodes Keras orders its layers by."""

    def __init__(self, ctx: _Program, model_inputs: set[int]):
        self.ctx, self.diags, self.program = ctx, ctx.diags, ctx.program
        self.model_inputs = model_inputs
        self.tensors: dict[int, Tensor | None] = {}
        self.nodes: list[Node] = []
        self.entities: dict[tuple[str, int], Entity] = {}

    def entity(self, key: tuple[str, int], name: str, cls: str, params, span: Span) -> Entity:
        """One Entity per nested model / TimeDistributed object, however often it is called."""
        if key not in self.entities:
            self.entities[key] = Entity(name, cls, params, span)
        return self.entities[key]

    def tensor(self, tid: int) -> Tensor | None:
        """The file's tensor `tid`, building what produces it first."""
        if tid in self.tensors:
            return self.tensors[tid]
        self.tensors[tid] = None  # a cycle or a failure leaves None
        call, _ = self.program.producer(tid)
        ins = [self.tensor(r.id) for r in _flatten(call.inputs)]
        if any(t is None for t in ins):
            return None
        if call.callee.kind == "model":
            outs = self.model_call(call, ins)
        else:
            decl = self.program.layers[call.callee.id]
            if decl.cls == "TimeDistributed":
                outs = self.time_distributed(call, decl, ins)
            else:
                layer = self.ctx.layer(call.callee.id)
                if layer is None:
                    return None
                if layer.cls == "InputLayer" and tid not in self.model_inputs:
                    self.diags.error("disconnected", f"Graph disconnected: the Input '{layer.name}' is used but is not among "
                                     "the model's inputs.", call.span, "add it to Model(inputs=[...])")
                    return None
                outs = self.apply(layer, call, ins, [call.outputs[0]])
                if outs is not None:
                    top = TopNode(layer, ins, outs)
                    for t in outs:
                        t.top = top
        if outs is None:
            return None
        for tid_, t in zip(call.outputs, outs):
            self.tensors[tid_] = t
        return self.tensors[tid]

    def apply(self, layer: Layer, call: CallDecl, ins: list[Tensor], out_ids: list[int], via: Span | None = None,
              bmul: int = 1) -> list[Tensor] | None:
        """One primitive node: infer the output, build weights on the first call."""
        if not layer.kind.ok:
            return None
        out = layer.kind.output([t.shape for t in ins], [t.dtype for t in ins], via or call.span)
        if out is None:
            return None
        weights = layer.kind.weights([t.shape for t in ins])
        if not layer.built:
            layer.weights, layer.built = weights, True
        elif [w.shape for w in weights] != [w.shape for w in layer.weights]:
            self.diags.error("bad-shape", f"Layer '{layer.name}' is called on an input it was not built for. Received: "
                             f"shapes={', '.join(fmt_shape(t.shape) for t in ins)}, weights built for "
                             f"{', '.join(fmt_shape(w.shape) for w in layer.weights)}", via or call.span,
                             "a shared layer needs inputs of the same feature size at every call")
            return None
        node = Node(call, layer, ins, [], via)
        node.outputs = [Tensor(i, out[0], out[1], node, via or call.span, bmul=bmul) for i in out_ids]
        self.nodes.append(node)
        return node.outputs

    def instantiate(self, inner: "ModelGraph", args: list[Tensor], via: Span, bmul: int) -> list[Tensor] | None:
        """The inner model's primitive nodes applied to new tensors, weights shared."""
        if len(args) != len(inner.inputs):
            self.diags.error("bad-input", f"Model '{inner.name}' expects {len(inner.inputs)} input(s). Received: {len(args)}", via)
            return None
        mapping: dict[int, Tensor] = {}
        for formal, actual in zip(inner.inputs, args):
            if formal.shape[1:] != actual.shape[1:] or formal.dtype != actual.dtype:
                self.diags.error("bad-shape", f"Input '{formal.top.entity.name}' of model '{inner.name}' is incompatible with the "
                                 f"layer: expected shape={fmt_shape(formal.shape)}, found shape={fmt_shape(actual.shape)}", via)
                return None
            mapping[formal.id] = actual
        def mapped(t: Tensor) -> Tensor:
            # an alias of the inner graph (a nested model call's output, a
            # TimeDistributed view) becomes the same view of the mapped tensor
            if t.id not in mapping:
                mapping[t.id] = Tensor(self.ctx.new_id(), t.shape, t.dtype, None, via, bmul=bmul * t.bmul,
                                       alias_of=mapped(t.alias_of))
            return mapping[t.id]

        for node in inner.nodes:
            outs = self.apply(node.layer, node.call, [mapped(t) for t in node.inputs],
                              [self.ctx.new_id() for _ in node.outputs], via, bmul * node.outputs[0].bmul)
            if outs is None:
                return None
            mapping.update({o.id: n for o, n in zip(node.outputs, outs)})
        return [mapped(t) for t in inner.outputs]

    def model_call(self, call: CallDecl, ins: list[Tensor]) -> list[Tensor] | None:
        inner = self.ctx.graph(call.callee.id)
        if inner is None:
            return None
        outs = self.instantiate(inner, ins, call.span, ins[0].bmul)
        if outs is None:
            return None
        # a fresh tensor per output, aliasing the instance's, so the call has outputs of its own
        outs = [Tensor(self.ctx.new_id(), t.shape, t.dtype, None, call.span, bmul=t.bmul, alias_of=t) for t in outs]
        top = TopNode(self.entity(("model", call.callee.id), inner.name, "Functional", inner.params, call.span), ins, outs)
        for t in outs:
            t.top = top
        return outs

    def time_distributed(self, call: CallDecl, decl: LayerDecl, ins: list[Tensor]) -> list[Tensor] | None:
        """TimeDistributed: the wrapped layer/model on (n * T, ...) rows, viewed back as (n, T, ...)."""
        name = self.ctx.names[("layer", decl.id)]
        if len(ins) != 1 or len(ins[0].shape) < 3:
            self.diags.error("bad-shape", "TimeDistributed expects one input of rank 3 or more (batch, time, ...). Received: "
                             f"shape={', '.join(fmt_shape(t.shape) for t in ins)}", call.span)
            return None
        x = ins[0]
        steps = x.shape[1]
        rows = Tensor(self.ctx.new_id(), (None, *x.shape[2:]), x.dtype, None, call.span, bmul=x.bmul * steps, alias_of=x)
        if decl.inner.kind == "model":
            inner = self.ctx.graph(decl.inner.id)
            if inner is None:
                return None
            outs, params = self.instantiate(inner, [rows], call.span, rows.bmul), inner.params
        else:
            layer = self.ctx.layer(decl.inner.id)
            if layer is None:
                return None
            outs = self.apply(layer, call, [rows], [self.ctx.new_id()], call.span, rows.bmul)
            params = layer.params
        if outs is None:
            return None
        if len(outs) != 1:
            self.diags.error("bad-output", "TimeDistributed needs a layer or model with one output.", call.span)
            return None
        y = outs[0]
        out = Tensor(self.ctx.new_id(), (None, steps, *y.shape[1:]), y.dtype, None, call.span, bmul=x.bmul, alias_of=y)
        out.top = TopNode(self.entity(("layer", decl.id), name, "TimeDistributed", params, decl.span), ins, [out])
        return [out]


def _flatten(struct) -> list[Ref]:
    if isinstance(struct, Ref):
        return [struct]
    if isinstance(struct, dict):
        return list(struct.values())
    return [r for s in struct for r in _flatten(s)]


_MODULE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def build(program: Program, diags: Diagnostics) -> list[ModelGraph]:
    """One graph per Model(...) in the file, in file order; errors go to diags."""
    ctx = _Program(program, diags)
    graphs, modules = [], {}
    for m in program.models:
        g = ctx.graph(m.id)
        if g is None:
            if m.compile is not None:
                check_names(m.compile, diags)
            continue
        if g.module in modules:
            diags.error("duplicate-output", f"Two models would write the same file '{g.module}.py'.", m.span,
                        f"give one of them another name=; the first is at line {modules[g.module].line}")
            continue
        modules[g.module] = m.span
        graphs.append(g)
    if not program.models and not diags.has_errors:  # a Model(...) that failed was reported already
        diags.error("no-model", "No Model(...) found in the file; there is nothing to generate.",
                    Span(program.path, 1, 1, 1, 1), "build one with Model(inputs=..., outputs=...)")
    return graphs


def _build_model(ctx: _Program, m: ModelDecl) -> ModelGraph | None:
    diags = ctx.diags
    name = ctx.names[("model", m.id)]
    module = m.name.value if m.name is not None else (m.var or name)
    span = m.name.span if m.name is not None else m.span
    if not isinstance(module, str) or "/" in module or not module:
        return None  # reported with the other names
    if not _MODULE_NAME.match(module) or keyword.iskeyword(module):
        diags.error("bad-name", f"The model name must be a valid Python identifier to name its module. Received: {module!r}",
                    span, "use letters, digits and underscores, e.g. name='my_model'")
        return None
    in_refs, out_refs = _flatten(m.inputs), _flatten(m.outputs)
    if not in_refs or not out_refs:
        diags.error("bad-model", "A Model needs at least one input and one output tensor.", m.span,
                    "Model(inputs=input_tensor, outputs=output_tensor)")
        return None
    if any(r.kind != "tensor" for r in in_refs + out_refs):
        diags.error("not-a-tensor", "Model inputs and outputs must be tensors.", m.span)
        return None
    b = _Builder(ctx, {r.id for r in in_refs})
    inputs = [b.tensor(r.id) for r in in_refs]
    if any(t is None for t in inputs):
        return None
    for t in inputs:
        if t.top.entity.cls != "InputLayer":
            diags.error("bad-model", "Model inputs must come from Input(...).", t.span, "pass the Input tensors as inputs")
            return None
    outputs = [b.tensor(r.id) for r in out_refs]
    if any(t is None for t in outputs):
        return None
    layers, tops = _keras_layer_order(inputs, outputs)
    seen = {}
    for layer in layers:
        if layer.name in seen:
            diags.error("duplicate-name", f"The name \"{layer.name}\" is used 2 times in the model. All operation names should be unique.",
                        getattr(layer, "decl_span", None) or layer.decl.span, "give each layer its own name=")
            return None
        seen[layer.name] = layer
    owner: dict[tuple[int, str], object] = {}
    for entity in layers:  # Keras lists such a weight under both entries; the runtime stores each entry's own
        for layer, w in entity.params:
            first = owner.setdefault((id(layer), w.name), entity)
            if first is not entity:
                diags.error("unsupported-sharing", f"Layer '{layer.name}' is used by two entries of model '{name}'.layers "
                            f"('{first.name}' and '{entity.name}'); gen does not support one weight under two entries yet.",
                            getattr(entity, "decl_span", None) or entity.decl.span,
                            "call the layer (or model) through one nested model or TimeDistributed only")
                return None
    nodes = [n for n in b.nodes if n.layer.cls != "InputLayer"]
    if not _fits_in_memory(nodes, diags):
        return None
    g = ModelGraph(m, name, module, inputs, outputs, nodes, layers, None, FitSettings())
    for top in tops:
        g.shapes.setdefault(top.entity.name, top.outputs[0].shape)
    g.compile = resolve_compile(m.compile, g, diags) if m.compile else None
    g.fit = resolve_fit(m.fit, g, diags)
    return g


# Weights and optimizer state live in memory as float32 or float64: refuse a
# model that cannot, instead of failing (or swapping) at run time.
MAX_PARAMS = 2**30           # 4 GiB of float32 weights; state and gradients triple it
MAX_ROW_ELEMENTS = 2**28     # one sample's activations in one buffer


def _fits_in_memory(nodes: list[Node], diags: Diagnostics) -> bool:
    ok = True
    seen, total = set(), 0
    for node in nodes:
        if id(node.layer) not in seen:
            seen.add(id(node.layer))
            count = sum(math.prod(w.shape) for w in node.layer.weights)
            total += count
            if count > MAX_PARAMS:
                diags.error("too-large", f"Layer '{node.layer.name}' would have {count:,} parameters "
                            f"({count * 4 / 2**30:,.1f} GiB as float32); gen refuses more than {MAX_PARAMS:,} per model.",
                            node.layer.decl.span, "use fewer units or a smaller vocabulary")
                ok = False
        for t in node.outputs:
            row = math.prod(t.shape[1:]) * t.bmul
            if row > MAX_ROW_ELEMENTS:
                diags.error("too-large", f"The output of '{node.layer.name}' would hold {row:,} values per sample; "
                            f"gen refuses more than {MAX_ROW_ELEMENTS:,}.", node.via or node.call.span,
                            "use smaller shapes")
                ok = False
    if ok and total > MAX_PARAMS:
        diags.error("too-large", f"The model would have {total:,} parameters ({total * 4 / 2**30:,.1f} GiB as float32); "
                    f"gen refuses more than {MAX_PARAMS:,}.", nodes[0].call.span, "use fewer units or a smaller vocabulary")
        ok = False
    return ok
