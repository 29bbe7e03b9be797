"""Names and buffers for the lowering of one graph: a key per tensor, the
buffers and views (shapes in terms of the batch size n), the forward
caches only the backward pass reads, the weights' indices and gradient
blocks, and which tensors need gradients (BufferAllocator, the base of
lower._Lowering)."""
from __future__ import annotations

import math

from .graph import ModelGraph, Node, Tensor
from .ir import Program
from .plan import Buffer, comment_text


def _ident(name: str) -> str:
    s = "".join(c if c.isascii() and (c.isalnum() or c == "_") else "_" for c in name)
    return s if s and not s[0].isdigit() else "t_" + s


class BufferAllocator:
    """The buffers, views and bindings a lowering allocates, under keys made
    from the layers' names; _Lowering adds the steps that use them."""

    def __init__(self, g: ModelGraph, program: Program):
        self.g, self.program = g, program
        self.lines = program.source.splitlines()
        self.fname = program.path.rsplit("/", 1)[-1]
        self.buffers: list[Buffer] = [Buffer("_e1", "np.empty(0, dt)", "stands in for an absent bias"),
                                      Buffer("_e2", "np.empty((0, 0), dt)", "stands in for a gradient nobody needs"),
                                      Buffer("_e3", "np.empty((0, 0, 0), dt)", "the same, for a sequence")]
        self.bind_inputs: list[Buffer] = []
        self.bind_outputs: list[Buffer] = []
        self.keys: dict[int, str] = {}
        self.used: set[str] = {"_e1", "_e2", "_e3"}
        self.views: dict[tuple[int, str, tuple], str] = {}
        self.caches: dict[str, Buffer] = {}  # forward caches of the backward pass (see _cache)
        self.weight_index: dict[tuple[int, str], int] = {}
        self.grad_blocks: list[tuple[int, int, int]] = []  # (first weight, rows, columns): see grad_block
        self.input_pos = {t.id: i for i, t in enumerate(g.inputs)}
        self.output_pos: dict[int, list[int]] = {}
        for k, t in enumerate(g.outputs):
            self.output_pos.setdefault(t.base().id, []).append(k)
        for i, (layer, w) in enumerate(g.params):
            self.weight_index[(id(layer), w.name)] = i
        self.needs_grad = self._needs_grad()
        self.fused = self._embedded_lstms()
        self.checked_inputs = self._checked_by_dense()

    # -- names and buffers ------------------------------------------------
    def _needs_grad(self) -> set[int]:
        need = set()
        for node in self.g.nodes:
            if node.layer.weights or any(t.base().id in need for t in node.inputs):
                need.update(t.id for t in node.outputs)
        return need

    def _checked_by_dense(self) -> dict[int, tuple[int, ...]]:
        """Input index -> weight indices of the Dense kernels of every layer
        call that reads it, for float inputs that only Dense calls read (and
        that are not outputs): predict may check such an input for NaN/Inf
        through those calls, which return nonzero when a pre-activation is
        NaN/Inf (runtime: _defers_check)."""
        checked = {}
        for i, t in enumerate(self.g.inputs):
            readers = [n for n in self.g.nodes if any(x.base().id == t.id for x in n.inputs)]
            if (t.dtype == "float" and t.id not in self.output_pos and readers
                    and all(n.layer.cls == "Dense" for n in readers)):
                checked[i] = tuple(sorted({self.weight_index[(id(n.layer), "kernel")] for n in readers}))
        return checked

    def _embedded_lstms(self) -> dict[int, Node]:
        """LSTM node id -> the Embedding node whose output is its input and is
        used nowhere else (not an output, not aliased): that pair lowers to one
        kernel that never materializes the embedded sequence."""
        uses: dict[int, int] = {}
        for n in self.g.nodes:
            for x in n.inputs:
                uses[x.base().id] = uses.get(x.base().id, 0) + 1
        aliased = {t.alias_of.base().id for n in self.g.nodes for t in n.inputs if t.alias_of is not None}
        fused = {}
        for n in self.g.nodes:
            x = n.inputs[0] if n.inputs else None
            if (n.layer.cls == "LSTM" and x.alias_of is None and x.node is not None
                    and x.node.layer.cls == "Embedding" and uses[x.id] == 1
                    and x.id not in self.output_pos and x.id not in aliased):
                fused[id(n)] = x.node
        return fused

    def key(self, t: Tensor) -> str:
        t = t.base()
        if t.id not in self.keys:
            node = t.node
            calls = [n for n in self.g.nodes if n.layer is node.layer]
            base = _ident(node.layer.name)
            if len(calls) > 1:
                base += f"_call{calls.index(node)}"
            if len(node.outputs) > 1:
                base += f"_out{node.outputs.index(t)}"
            while base in self.used:
                base += "_"
            self.used.add(base)
            self.keys[t.id] = base
        return self.keys[t.id]

    def shape_expr(self, shape: tuple, bmul: int = 1) -> str:
        dims = [("n" if bmul == 1 else f"n * {bmul}") if d is None else str(d) for d in shape]
        return "(" + ", ".join(dims) + ("," if len(dims) == 1 else "") + ")"

    def buf(self, key: str, shape: tuple, comment: str, bmul: int = 1) -> str:
        return self.raw_buf(key, f"_rt_empty({self.shape_expr(shape, bmul)}, dt)", comment)

    def value(self, t: Tensor, shape: tuple | None = None, grad: bool = False) -> str:
        """Expression for a tensor's value (or gradient) buffer: b['key']."""
        return f"b[{self.buffer_key(t, shape, grad)!r}]"

    def buffer_key(self, t: Tensor, shape: tuple | None = None, grad: bool = False) -> str:
        """The key of a tensor's value (or gradient) buffer, optionally a view of
        another shape, registering the buffer or view on first use. Aliases
        (TimeDistributed, model calls) are views of their base tensor's buffer."""
        if shape is None and t.alias_of is not None:
            shape = t.shape
        t = t.base()
        key = ("d_" if grad else "") + self.key(t)
        if not grad and t.id in self.input_pos and not any(b.key == key for b in self.bind_inputs):
            self.bind_inputs.append(Buffer(key, f"xs[{self.input_pos[t.id]}]", f"input {self.shape_expr(t.shape)}"))
        if grad and t.id in self.output_pos and not any(b.key == key for b in self.bind_outputs):
            ks = self.output_pos[t.id]
            rows = ", ".join(["-1"] + [str(d) for d in t.shape[1:]])
            self.bind_outputs.append(Buffer(key, f"douts[{ks[0]}].reshape({rows})", f"d loss / d output {self.shape_expr(t.shape, t.bmul)}"))
            self.bind_outputs += [Buffer(key, f"b[{key!r}] + douts[{k}].reshape({rows})", "the same tensor is output twice")
                                  for k in ks[1:]]
        elif not (not grad and t.id in self.input_pos) and not any(b.key == key for b in self.buffers):
            self.buf(key, t.shape, ("d loss / d " if grad else "") + f"{t.node.layer.name} {self.shape_expr(t.shape, t.bmul)}", t.bmul)
        if shape is None or (shape[0] is None and tuple(shape[1:]) == tuple(t.shape[1:])):
            return key
        vkey = key + "_" + "x".join("n" if d is None else str(d) for d in shape).replace("-1", "m")
        if (t.id, key, tuple(shape)) not in self.views:
            self.views[(t.id, key, tuple(shape))] = vkey
            view = Buffer(vkey, f"b[{key!r}].reshape({', '.join('-1' if d is None else str(d) for d in shape)})",
                          f"view {self.shape_expr(shape)}")
            if not grad and t.id in self.input_pos:
                self.bind_inputs.append(view)
            elif grad and t.id in self.output_pos:
                self.bind_outputs.append(view)
            else:
                self.buffers.append(view)
        return vkey

    def flat(self, t: Tensor, grad: bool = False) -> str:
        """The tensor as (rows, last axis)."""
        return self.value(t, (None, t.shape[-1]), grad)

    def weight(self, node: Node, name: str, grad: bool = False) -> str:
        i = self.weight_index.get((id(node.layer), name))
        if i is None:
            return "b['_e1']"
        return f"{'g' if grad else 'w'}[{i}]"

    def grad_block(self, node: Node) -> str:
        """The layer's gradients as one (rows, columns) matrix, a view of the
        flat gradient buffer: an LSTM's [dkernel; drkernel; dbias] (Keras's
        weight order keeps them side by side, each 4u wide), written by
        one product."""
        idx = sorted(i for (lid, _w), i in self.weight_index.items() if lid == id(node.layer))
        shapes = [self.g.params[i][1].shape for i in idx]
        if idx != list(range(idx[0], idx[0] + len(idx))) or len({s[-1] for s in shapes}) != 1:
            raise AssertionError(f"weights of {node.layer.name} are not one block: {shapes}")
        block = (idx[0], sum(math.prod(s[:-1]) for s in shapes), shapes[0][-1])
        if block not in self.grad_blocks:
            self.grad_blocks.append(block)
        return f"gb[{self.grad_blocks.index(block)}]"

    def where(self, node: Node) -> str:
        def at(span):
            text = self.lines[span.line - 1] if 0 < span.line <= len(self.lines) else ""
            return f"{self.fname}:{span.line}  {comment_text(text)}"
        return at(node.call.span) + (f"  (via {at(node.via)})" if node.via and node.via != node.call.span else "")

    def raw_buf(self, key: str, expr: str, comment: str) -> str:
        """A buffer with its own allocation expression (int arrays, bounded sizes)."""
        if not any(b.key == key for b in self.buffers):
            self.used.add(key)
            self.buffers.append(Buffer(key, expr, comment))
        return f"b[{key!r}]"

    def _cache(self, key: str, shape: tuple, comment: str, bmul: int, width: str = "u") -> str:
        """A (n, T, u) cache only the backward pass reads: the forward buffers
        hold a (n, 1, u) scratch under its key (predict needs no more), and
        the backward buffers replace it with the whole cache."""
        if key not in self.caches:
            self.buf(key, (shape[0], 1) + tuple(shape[2:]), f"scratch, the cache without a backward pass (n, 1, {width})", bmul)
            self.caches[key] = Buffer(key, f"_rt_empty({self.shape_expr(shape, bmul)}, dt)", comment)
        return f"b[{key!r}]"
