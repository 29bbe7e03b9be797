"""Every decision about the generated module, as plain data for the templates:
which kernels, which buffers (with shapes in terms of the batch size n), which
views, one forward and one backward step per layer call, gradient modes
(skip / overwrite / accumulate), and the class tables of the runtime."""
from __future__ import annotations

import hashlib
import itertools
import math
import re
from dataclasses import dataclass

from . import __version__, catalog
from .graph import ModelGraph, Node, Tensor
from .ir import Program
from .parts import Parts, lower_parts

# Kernel files in the order they are pasted into a module.
KERNEL_ORDER = ("activation", "panels", "dense", "embedding", "lstm", "lstm_embedded", "concat", "losses", "metrics", "optimizers")
# Up to this many units an LSTM may run its recurrence row by row with
# h @ recurrent_kernel inline (the backward pass always, the forward pass
# for big batches: templates/kernels/lstm.py); above, one BLAS product per
# step over the whole batch is faster (backward, B 32, T 25, U 128: 1.40
# against 1.86 ms).
LSTM_ROWS_MAX_UNITS = 64
# Layers whose backward kernel can overwrite its weights' gradients (wmode 1)
# rather than add to them; the others' gradients are zeroed before each pass.
_OVERWRITES_GRADS = {"Dense", "LSTM"}
# Forward kernels callable one after another from one compiled function: a
# model made only of these layers gets _forward_small (see SmallForward).
_SMALL_KINDS = {"Dense", "Activation", "Embedding", "Concatenate"}
# A Dense kernel of at least this many values has its rows owned by the
# threads in a training step at a small batch (templates/kernels/dense.py,
# "Owned rows"): below, its update is too short for the invalidations the
# owned split saves to pay for a parallel region.
OWNED_MIN_VALUES = 1 << 14
_KIND_KERNELS = {"Dense": ("activation", "panels", "dense"), "Activation": ("activation",), "Embedding": ("embedding",),
                 "LSTM": ("activation", "panels", "lstm"), "Concatenate": ("concat",)}


@dataclass
class Buffer:
    key: str
    expr: str          # e.g. "np.empty((n, 64), dt)" or a view "b['x'].reshape(-1, 64)"
    comment: str = ""


@dataclass
class Step:
    kind: str          # selects the macro in templates/layers.j2
    where: list[str]   # ["model.py:9  x = Dense(64)(inputs)"]: the source line(s) of the step
    f: dict            # fields the macro substitutes


@dataclass
class SmallForward:
    """The whole forward pass as one compiled function of the layers' serial
    kernels, for batches too small for any parallel kernel: one numba
    dispatch instead of one per layer (mlp predict at batch 1: 5.35 -> 4.97 us).
    Bit-identical to the per-layer path, whose entry points pick the same
    serial kernels at these sizes."""
    params: list[str]   # the function's parameters: "params", then buffers, e.g. "b_dense"
    args: list[str]     # what the call passes for each: "self._params", "b['dense']"
    views: list[tuple[str, str, str]]  # weights as views of params made inside: name,
                        # expression, comment. One argument, not one per weight:
                        # numba's dispatch costs ~60 ns an array (mlp batch 1)
    steps: list[Step]   # kind "SmallCall": f["calls"] = [(kernel, args, comment)]
    test: str           # when the call site takes it: n times the largest Dense /
                        # Activation output per sample below the parallel size; "" always


@dataclass
class ModulePlan:
    module: str
    header: str
    kernels: list[str]
    attrs: list[tuple[str, str]]        # class attribute name, Python literal
    tables: list[tuple[str, str]]       # module-level table name, literal of kernel names
    flags: list[tuple[str, str, str]]   # kernel_flags: name, literal, what makes it True
    buffers: list[Buffer]               # what the forward pass uses (predict allocates only these)
    grad_buffers: list[Buffer]          # what only the backward pass uses
    forward: list[Step]
    backward: list[Step]
    bind_inputs: list[Buffer]           # forward prologue: inputs and their views
    bind_outputs: list[Buffer]          # backward prologue: output gradients and their views
    returns: list[str]
    small: SmallForward | None
    counts_nonfinite: bool              # _forward (and _forward_small) sum what the Dense steps of checked_inputs return
    grad_blocks: bool = False           # _backward reads gb, the runtime's gradient blocks
    owned: SmallForward | None = None   # _forward_owned: _forward_small with the owned-rows Dense kernels
    parts: Parts | None = None          # _forward_part / _train_part: the data-parallel passes (parts.py)


def comment_text(text: str) -> str:
    """Source text safe inside a `#` comment: one line, printable ASCII."""
    line = text.splitlines()[0] if text.splitlines() else ""
    return "".join(c if " " <= c <= "~" else "?" for c in line.strip())[:240]


def _ident(name: str) -> str:
    s = "".join(c if c.isascii() and (c.isalnum() or c == "_") else "_" for c in name)
    return s if s and not s[0].isdigit() else "t_" + s


class _Lowering:
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
        return self.raw_buf(key, f"np.empty({self.shape_expr(shape, bmul)}, dt)", comment)

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

    # -- steps --------------------------------------------------------------
    def lower(self) -> tuple[list[Step], list[Step]]:
        embedded = {id(e) for e in self.fused.values()}
        fwd = [self.forward(n) for n in self.g.nodes if id(n) not in embedded]
        self.returns = [self.value(t) for t in self.g.outputs]  # may add views of outputs
        self.n_forward_buffers = len(self.buffers)
        self.buffers += self.caches.values()
        done: set[int] = set(self.output_pos)  # output gradients arrive from the loss
        written: set[int] = set()  # weights whose gradient a kernel has overwritten
        bwd = []
        for node in reversed(self.g.nodes):
            if not any(t.id in self.needs_grad for t in node.outputs):
                continue
            # a layer's first backward call (in backward order) overwrites its
            # weights' gradients, the calls of a shared layer after it add to them
            own = [i for (lid, _w), i in self.weight_index.items() if lid == id(node.layer)]
            self.wmode = 2 if any(i in written for i in own) else 1
            if node.layer.cls in _OVERWRITES_GRADS:
                written.update(own)
            modes = []
            for t in node.inputs:
                t = t.base()
                if t.id not in self.needs_grad:
                    modes.append(0)
                else:
                    modes.append(2 if t.id in done else 1)
                    done.add(t.id)
            if id(node) not in embedded:
                bwd.append(self.backward(node, modes))
        # the rest (tables: a scatter adds into them) are zeroed before each backward pass
        self.grads_zeroed = tuple(i for i in range(len(self.g.params)) if i not in written)
        self.mark_owned(fwd, bwd)
        return fwd, bwd

    def mark_owned(self, fwd: list[Step], bwd: list[Step]) -> None:
        """Give the big Dense calls of a trainable model with a one-call
        forward pass their owned-rows buffers (training only, so after the
        forward buffers) and fields: f["owned"] on the forward step (zp, xp)
        and on its backward step (xp, bad)."""
        self.owned_kernels: tuple[int, ...] = ()
        if self.g.compile is None or not fwd or any(s.kind not in _SMALL_KINDS for s in fwd):
            return
        back = {(s.f["layer"], s.f["y"]): s for s in bwd if s.kind == "Dense"}
        kernels = []
        for s in (s for s in fwd if s.kind == "Dense"):
            i, k = s.f["kernel_index"], s.f["key"]
            K, N = self.g.params[i][1].shape
            if K * N < OWNED_MIN_VALUES or (s.f["layer"], s.f["y"]) not in back:
                continue
            rows = s.f["size"] // N  # rows of the flat (rows, N) output per sample
            j = len(kernels)
            kernels.append(i)
            xp = self.raw_buf(k + "_xp", f"np.empty(n * {rows * K} if p else 0, dt)",
                              f"owned rows: the input by column blocks (n * {rows * K},)")
            zp = self.raw_buf(k + "_zp", f"np.empty((p, {self.shape_expr((None, N), rows)[1:-1]}), dt)",
                              f"owned rows: each part's share of the product (p, n, {N})")
            s.f["owned"] = {"zp": zp, "xp": xp}
            back[(s.f["layer"], s.f["y"])].f["owned"] = {"xp": xp, "bad": f"b['_owned_bad'][{j}]"}
        if kernels:
            self.raw_buf("_owned_bad", f"np.zeros(({len(kernels)}, p), np.int64)",
                         "owned rows: NaN/Inf counts of each owned kernel's parts of its gradient")
            self.owned_kernels = tuple(sorted(set(kernels)))

    def small_forward(self, fwd: list[Step], owned: bool = False) -> SmallForward | None:
        """_forward_small for a model whose every forward step has a serial kernel.
        Activation codes and offsets go in as np.int64(...): as literals, numba
        would compile each kernel once per value (mlp: the Dense kernels
        twice more, for relu and softmax)."""
        if not fwd or any(s.kind not in _SMALL_KINDS for s in fwd) or (owned and not any("owned" in s.f for s in fwd)):
            return None
        names: dict[str, str] = {"self._params": "params"}
        views: dict[str, tuple[str, str, str]] = {}
        ends = list(itertools.accumulate(math.prod(w.shape) for _, w in self.g.params))

        def param(expr: str) -> str:
            m = re.fullmatch(r"b\['(\w+)'\]|w\[(\d+)\]", expr)
            if m.group(2) is not None:  # a weight: a view of the flat parameters, made inside
                i = int(m.group(2))
                layer, w = self.g.params[i]
                lo, hi = (ends[i - 1] if i else 0), ends[i]
                views.setdefault(expr, (f"w{i}", f"params[{lo}:{hi}]" + (f".reshape({w.shape})" if len(w.shape) > 1 else ""),
                                        f"{layer.name}/{w.name} {w.shape}"))
                return views[expr][0]
            return names.setdefault(expr, f"b_{m.group(1)}")

        steps, width = [], 0
        for s in fwd:
            f = s.f
            if s.kind == "Dense" and owned and "owned" in f:
                calls = [(f["into"] + "_dense_forward_owned", [f["y"], f["owned"]["zp"], f["owned"]["xp"], f["x"], f["kernel"], f["bias"]],
                          f["act"], f["act_name"])]
            elif s.kind == "Dense":
                calls = [(f["into"] + "_dense_forward_serial", [f["y"], f["x"], f["kernel"], f["bias"]], f["act"], f["act_name"])]
            elif s.kind == "Activation":
                calls = [("_activation_forward_serial", [f["y"], f["x"]], f["act"], f["act_name"])]
            elif s.kind == "Embedding":
                calls = [("embedding_forward", [f["y"], f["ids"], f["table"]], None, "")]
            else:
                calls = [("concat_forward", [f["y"], x], off, "") for x, off in f["parts"]]
            if s.kind in ("Dense", "Activation"):
                width = max(width, f["size"])
            steps.append(Step("SmallCall", s.where, {"calls": [
                (k, ", ".join([param(a) for a in args] + ([] if c is None else [f"np.int64({c})"])), note)
                for k, args, c, note in calls]}))
        test = f"xs[0].shape[0] * {width} < _ACTIVATION_PARALLEL_MIN" if width else ""
        return SmallForward(list(names.values()), list(names), list(views.values()), steps, test)

    def forward(self, node: Node) -> Step:
        cls, cfg, t = node.layer.cls, node.layer.kind.cfg, node.outputs[0]
        f: dict = {"layer": node.layer.name}
        if cls == "Dense":
            f.update(y=self.flat(t), x=self.flat(node.inputs[0]), kernel=self.weight(node, "kernel"), key=self.key(t),
                     kernel_index=self.weight_index[(id(node.layer), "kernel")],
                     bias=self.weight(node, "bias"), act=catalog.ACTIVATIONS[cfg["activation"]], act_name=cfg["activation"],
                     size=t.bmul * math.prod(t.shape[1:]),
                     into="nonfinite += " if self.input_pos.get(node.inputs[0].base().id) in self.checked_inputs else "")
        elif cls == "Activation":
            f.update(y=self.flat(t), x=self.flat(node.inputs[0]), act=catalog.ACTIVATIONS[cfg["activation"]], act_name=cfg["activation"],
                     size=t.bmul * math.prod(t.shape[1:]))
        elif cls == "Embedding":
            x = node.inputs[0]
            f.update(y=self.value(t, (None, t.shape[-1])), ids=self.value(x, (-1,)), table=self.weight(node, "embeddings"))
        elif cls == "LSTM":
            f.update(self._lstm_fields(node))
            if id(node) in self.fused:
                f.update(self._embedded_fields(node))
                return Step("EmbeddedLSTM", self._embedded_where(node), f)
        elif cls == "Concatenate":
            f.update(y=self.value(t, self._concat_view(t.shape, cfg["axis"])),
                     parts=[(self.value(x, self._concat_view(x.shape, cfg["axis"])), off)
                            for x, off in zip(node.inputs, self._offsets(node))])
        return Step(cls, [self.where(node)], f)

    def backward(self, node: Node, modes: list[int]) -> Step:
        cls, cfg, t = node.layer.cls, node.layer.kind.cfg, node.outputs[0]
        f: dict = {"layer": node.layer.name}
        x = node.inputs[0]
        dx = (lambda shape=None: "b['_e2']" if modes[0] == 0 else (self.flat(x, True) if shape is None else self.value(x, shape, True)))
        if cls == "Dense":
            f.update(dy=self.flat(t, True), y=self.flat(t), x=self.flat(x), dx=dx(), mode=modes[0], wmode=self.wmode,
                     kernel=self.weight(node, "kernel"), dkernel=self.weight(node, "kernel", True),
                     dbias=self.weight(node, "bias", True), act=catalog.ACTIVATIONS[cfg["activation"]])
        elif cls == "Activation":
            f.update(dy=self.flat(t, True), y=self.flat(t), dx=dx(), mode=modes[0], act=catalog.ACTIVATIONS[cfg["activation"]])
        elif cls == "Embedding":
            f.update(dy=self.value(t, (None, t.shape[-1]), True), ids=self.value(x, (-1,)),
                     dtable=self.weight(node, "embeddings", True))
        elif cls == "LSTM":
            fused = id(node) in self.fused  # then no input gradient buffer: the kernel writes the table's
            f.update(self._lstm_fields(node), mode=modes[0], wmode=self.wmode,
                     dx="b['_e3']" if modes[0] == 0 or fused else self.value(x, None, True),
                     dy=self._lstm_y(t, True), dw=self.grad_block(node))
            k, T, U = self.key(t), x.shape[1], cfg["units"]
            rows = not f["per_step"]
            f.update(dzs=self.buf(k + "_dzs", (None, T, 4 * U), "d loss / d gate pre-activations (n, T, 4u)", x.bmul),
                     dh=self.buf(k + "_dh", (None, U), "d loss / d h carried backward in time (n, u)", x.bmul),
                     dc=self.buf(k + "_dc", (None, U), "d loss / d c carried backward in time (n, u)", x.bmul),
                     dzt="b['_e2']" if rows else self.buf(k + "_dzt", (None, 4 * U), "one step of dzs (n, 4u)", x.bmul))
            if id(node) in self.fused:
                f.update(self._embedded_fields(node))  # the table's gradient: runtime._table_grad
                return Step("EmbeddedLSTM", self._embedded_where(node), f)
        elif cls == "Concatenate":
            f.update(dy=self.value(t, self._concat_view(t.shape, cfg["axis"]), True),
                     parts=[("b['_e2']" if m == 0 else self.value(xi, self._concat_view(xi.shape, cfg["axis"]), True), off, m)
                            for xi, off, m in zip(node.inputs, self._offsets(node), modes)])
        return Step(cls, [self.where(node)], f)

    def _embedded_fields(self, node: Node) -> dict:
        """Buffers of lstm_embedded_forward / _backward (see _embedded_lstms)."""
        emb, x, U = self.fused[id(node)], node.inputs[0], node.layer.kind.cfg["units"]
        k, T, I, V = self.key(node.outputs[0]), x.shape[1], x.shape[2], emb.layer.kind.cfg["input_dim"]
        steps, distinct = f"n * {T * x.bmul}", f"min(n * {T * x.bmul}, {V})"
        return dict(
            ids=self.value(emb.inputs[0], (-1,)), table=self.weight(emb, "embeddings"),
            table_index=self.weight_index[(id(emb.layer), "embeddings")],
            kernel_index=self.weight_index[(id(node.layer), "kernel")],
            uniq=self.raw_buf(k + "_uniq", f"np.empty({steps}, np.int64)", "distinct ids of the batch (n * T,)"),
            inv=self.raw_buf(k + "_inv", f"np.empty({steps}, np.int64)", "index in uniq of each step's id (n * T,)"),
            slot=self.raw_buf(k + "_slot", f"np.full({V}, -1, np.int64)", "scratch: id -> index in uniq, -1 between calls"),
            nu=self.raw_buf(k + "_nu", "np.zeros(1, np.int64)", "number of distinct ids"),
            xu=self.raw_buf(k + "_xu", f"np.empty(({distinct}, {I}), dt)", "embedding rows of the distinct ids (<= n * T, in)"),
            pu=self.raw_buf(k + "_pu", f"np.empty(({distinct}, {4 * U}), dt)", "their projections, then their gate gradients (<= n * T, 4u)"))

    def _embedded_where(self, node: Node) -> list[str]:
        return [self.where(self.fused[id(node)]), self.where(node)]

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
            self.caches[key] = Buffer(key, f"np.empty({self.shape_expr(shape, bmul)}, dt)", comment)
        return f"b[{key!r}]"

    def _lstm_y(self, t: Tensor, grad: bool) -> str:
        return self.value(t, None, grad) if len(t.shape) == 3 else self.value(t, (None, 1, t.shape[-1]), grad)

    def _lstm_xh(self, node: Node, k: str, T: int, U: int) -> str:
        """The cache of rows [x_t | h_{t-1} | 1] (no x for a fused Embedding,
        no 1 without a bias): see lstm.py."""
        I = 0 if id(node) in self.fused else node.inputs[0].shape[2]
        nb = 1 if node.layer.kind.cfg["use_bias"] else 0
        cols = [("x_t", "i")] * bool(I) + [("h_{t-1}", "u")] + [("1", "1")] * nb  # (what, its width)
        width = " + ".join(w for _, w in cols)
        return self._cache(k + "_xh", (None, T, I + U + nb), f"rows [{' | '.join(c for c, _ in cols)}], h_{{-1}} = 0 (n, T, {width})",
                           node.inputs[0].bmul, width)

    def _lstm_fields(self, node: Node) -> dict:
        x, t, cfg = node.inputs[0], node.outputs[0], node.layer.kind.cfg
        k, T, U = self.key(t), x.shape[1], cfg["units"]
        per_step = U > LSTM_ROWS_MAX_UNITS
        return dict(
            y=self._lstm_y(t, False), x=None if id(node) in self.fused else self.value(x),
            zs=self.buf(k + "_zs", (None, T, 4 * U), "gate values i f g o after activation (n, T, 4u)", x.bmul),
            xh=self._lstm_xh(node, k, T, U),
            cp=self._cache(k + "_cp", (None, T, U), "c_{t-1}, cp[:, 0] = 0 (n, T, u)", x.bmul),
            tc=self._cache(k + "_tc", (None, T, U), "activation(c_t) (n, T, u)", x.bmul),
            hc=self.buf(k + "_hc", (None, U), "current h (n, u)", x.bmul),
            cc=self.buf(k + "_cc", (None, U), "current c (n, u)", x.bmul),
            rec=self.buf(k + "_rec", (None, 4 * U), "h_{t-1} @ recurrent_kernel (n, 4u)", x.bmul),
            rkt=self.buf(k + "_rkt", (4 * U, U), "recurrent_kernel transposed (4u, u), or its packed panels (blocks schedule)"),
            kernel=self.weight(node, "kernel"), rkernel=self.weight(node, "recurrent_kernel"), bias=self.weight(node, "bias"),
            act=catalog.ACTIVATIONS[cfg["activation"]], ract=catalog.ACTIVATIONS[cfg["recurrent_activation"]],
            return_sequences=cfg["return_sequences"], per_step=per_step)

    @staticmethod
    def _concat_view(shape: tuple, axis: int) -> tuple:
        """Concatenation along `axis` is a column-block copy once every tensor
        is viewed as (n * prod(shape[1:axis]), prod(shape[axis:]))."""
        return (None, math.prod(shape[axis:]))

    @staticmethod
    def _offsets(node: Node) -> list[int]:
        axis = node.layer.kind.cfg["axis"]
        offs, o = [], 0
        for x in node.inputs:
            offs.append(o)
            o += math.prod(x.shape[axis:])
        return offs


# Module constants the kernels branch on: numba prunes a branch on a global
# constant before it types the code, so a module never compiles the
# activations none of its layers use (twitter.py, no softmax and no general
# LSTM cell: its first train_on_batch with numba's cache cold took 15.3 ->
# 11.6 s, 3 alternating processes each).
def kernel_flags(nodes=None) -> list[tuple[str, str, str]]:
    """(name, literal, comment) of each constant for these graph nodes; None:
    every branch on (the kernel tests load the kernels on their own)."""
    cfgs = [(n.layer.cls, n.layer.kind.cfg) for n in nodes or ()]
    if nodes is None:
        acts, default_lstms = set(catalog.ACTIVATIONS.values()), False
    else:
        acts = {catalog.ACTIVATIONS[cfg["activation"]] for cls, cfg in cfgs if cls in ("Dense", "Activation")}
        default_lstms = all((cfg["activation"], cfg["recurrent_activation"]) == ("tanh", "sigmoid")
                            for cls, cfg in cfgs if cls == "LSTM")
    flags = [(f"_USES_{name.upper()}", repr(code in acts), f"a Dense or Activation layer uses {name}")
             for name, code in catalog.ACTIVATIONS.items() if code != 0]
    return flags + [("_LSTM_TANH_SIGMOID_ONLY", repr(default_lstms),
                     "every LSTM has activation tanh and recurrent_activation sigmoid")]


def _weight_name(entity, layer, w) -> str:
    """Unique within its entry of model.layers: a wrapped layer's weights carry its name."""
    return w.name if entity is layer else f"{layer.name}/{w.name}"


def lower(g: ModelGraph, program: Program) -> ModulePlan:
    low = _Lowering(g, program)
    fwd, bwd = low.lower()
    kinds = {k for n in g.nodes for k in _KIND_KERNELS[n.layer.cls]}
    if low.fused:
        kinds.add("lstm_embedded")
    c = g.compile
    if c is not None:
        kinds |= {"losses", "optimizers"} | ({"metrics"} if any(c.accuracy) else set())
    digest = hashlib.sha256(program.source.encode()).hexdigest()
    header = f"# Generated by gen {__version__} from {comment_text(low.fname)} (sha256 {digest[:16]}). DO NOT EDIT."
    inputs = []
    for t in g.inputs:
        bound = next((n.layer.kind.cfg["input_dim"] for n in g.nodes
                      if n.layer.cls == "Embedding" and n.inputs[0].base() is t), None)
        inputs.append((t.top.entity.name, tuple(t.shape[1:]), t.dtype, bound))
    outputs = [(name, tuple(t.shape[1:]), c.losses[k] if c else None, c.loss_weights[k] if c else 1.0,
                c.accuracy[k] if c else False) for k, (name, t) in enumerate(zip(g.output_names, g.outputs))]
    layers = tuple((e.name, e.cls, tuple((_weight_name(e, layer, w), w.shape) for layer, w in e.params)) for e in g.layers)
    shapes = dict(sorted(g.shapes.items()))
    # Embedding tables updated only where a batch's ids point (runtime decides
    # whether the optimizer allows it exactly): (weight index, ids buffer key, ...)
    # ... and, when the table feeds a fused LSTM, the keys of the distinct ids
    # that kernel already found and of its row gradients: (uniq key, count
    # key, rows key), else None
    sparse = []
    into = {id(e): lstm for lstm_id, e in low.fused.items() for lstm in g.nodes if id(lstm) == lstm_id}
    for n in g.nodes:
        if n.layer.cls == "Embedding" and sum(m.layer is n.layer for m in g.nodes) == 1:
            k = low.key(into[id(n)].outputs[0]) if id(n) in into else None
            sparse.append((low.weight_index[(id(n.layer), "embeddings")], low.buffer_key(n.inputs[0], (-1,)),
                           (k + "_uniq", k + "_nu", k + "_xu") if k else None))
    attrs = [("name", repr(g.name)), ("input_names", repr(tuple(g.input_names))), ("output_names", repr(tuple(g.output_names))),
             ("_inputs", repr(tuple(inputs))), ("_outputs", repr(tuple(outputs))), ("_layers", repr(layers)),
             ("_inits", repr(tuple(w.init for _, w in g.params))),
             ("_output_shapes", repr(shapes)),
             ("_optimizer", repr((c.optimizer, c.optimizer_args) if c else None)),
             ("_fit_defaults", repr(g.fit.defaults)),
             ("_sparse_tables", repr(tuple(sparse))),
             ("_checked_inputs", repr(low.checked_inputs)),
             ("_grads_zeroed", repr(low.grads_zeroed))]
    if low.owned_kernels:
        attrs.append(("_owned_kernels", repr(low.owned_kernels)))
    if low.grad_blocks:
        attrs.append(("_grad_blocks", repr(tuple(low.grad_blocks))))
    parts = lower_parts(low, fwd, bwd)
    if parts:
        attrs += [("_parts", "True"), ("_parts_macs", repr(parts.macs))]
    tables = []
    if c is not None:
        losses = sorted(set(c.losses))
        tables.append(("_LOSS_KERNELS", "{" + ", ".join(f"{l!r}: ({l}_forward, {l}_backward)" for l in losses) + "}"))
        tables.append(("_OPTIMIZER_KERNELS", f"{{{c.optimizer!r}: {c.optimizer}_update}}"))
        if low.owned_kernels:
            tables.append(("_OPTIMIZER_OWNED_KERNELS", f"{{{c.optimizer!r}: _{c.optimizer}_owned}}"))
        if any(c.accuracy):
            tables.append(("_ACCURACY_KERNELS", "{'binary': binary_accuracy, 'categorical': categorical_accuracy, "
                                                "'sparse_categorical': sparse_categorical_accuracy}"))
    else:
        tables += [("_LOSS_KERNELS", "{}"), ("_OPTIMIZER_KERNELS", "{}")]
    nf = low.n_forward_buffers
    return ModulePlan(g.module, header, [k for k in KERNEL_ORDER if k in kinds], attrs, tables, kernel_flags(g.nodes),
                      low.buffers[:nf], low.buffers[nf:], fwd, bwd,
                      low.bind_inputs, low.bind_outputs, low.returns, low.small_forward(fwd), bool(low.checked_inputs),
                      bool(low.grad_blocks), low.small_forward(fwd, owned=True), parts)
