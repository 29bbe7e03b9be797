"""Every decision about the generated module, as plain data for the templates:
which kernels, which buffers (with shapes in terms of the batch size n), which
views, one forward and one backward step per layer call, gradient modes
(skip / overwrite / accumulate), and the class tables of the runtime."""
from __future__ import annotations

import hashlib
import itertools
import math
import re

from . import __version__, catalog
from .buffers import BufferAllocator
from .graph import ModelGraph, Node, Tensor
from .ir import Program
from .parts import lower_parts
from .plan import ModulePlan, SmallForward, Step, comment_text

# Kernel files in the order they are pasted into a module.
KERNEL_ORDER = ("activation", "panels", "dense", "embedding", "lstm", "lstm_schedules", "lstm_blocks",
                "lstm_passes", "lstm_embedded", "concat", "losses", "metrics", "optimizers")
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
                 "LSTM": ("activation", "panels", "lstm", "lstm_schedules", "lstm_blocks", "lstm_passes"),
                 "Concatenate": ("concat",)}


class _Lowering(BufferAllocator):
    """The steps of one graph: forward and backward, the one-call forward
    pass and the owned rows, over the buffers of BufferAllocator."""

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
            xp = self.raw_buf(k + "_xp", f"_rt_empty(n * {rows * K} if p else 0, dt)",
                              f"owned rows: the input by column blocks (n * {rows * K},)")
            zp = self.raw_buf(k + "_zp", f"_rt_empty((p, {self.shape_expr((None, N), rows)[1:-1]}), dt)",
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
            xu=self.raw_buf(k + "_xu", f"_rt_empty(({distinct}, {I}), dt)", "embedding rows of the distinct ids (<= n * T, in)"),
            pu=self.raw_buf(k + "_pu", f"_rt_empty(({distinct}, {4 * U}), dt)", "their projections, then their gate gradients (<= n * T, 4u)"))

    def _embedded_where(self, node: Node) -> list[str]:
        return [self.where(self.fused[id(node)]), self.where(node)]

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
