"""The data-parallel forward pass and training step of a model whose every
layer works on each sample's row alone (templates/kernels/dense.py, "One
part"; runtime: _parts_for).

Each of P threads takes a block of the batch's rows and runs the whole pass
on it: a training step gathers its rows of the inputs and targets, runs the
forward pass, the loss gradient and the backward pass, and writes the
gradients of its rows to its own row of G (P, weights); the runtime sums
them. One parallel region a step, no thread waits for another inside it,
and every product runs on the thread's own core (panels.py), where the
per-layer passes hand each product to OpenBLAS's two threads and the
optimizer then writes weights the other core holds. mlp.py on the 2-core
Zen 4, one process alternating: fit at batch 256 ~383k -> ~507k samples/s,
predict at batch 1024 1.32M -> 1.66M (docs/DESIGN.md, "Parts").
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

# Layers whose kernels work row by row on (n, features) tensors, with a
# one-thread kernel each way.
PART_KINDS = {"Dense", "Activation", "Concatenate"}


@dataclass
class Parts:
    """What templates/module.py.j2 needs for _forward_part / _train_part."""
    params: list[str]                   # buffer parameters after the fixed ones, e.g. "b_dense"
    fwd_params: list[str]               # _forward_part's: the first of them
    fwd_args: list[str]                 # what _forward passes for those: "b['dense']"
    train_args: list[str]               # what _train_in_parts passes for params: "b.xb[0]", "B['dense']", "b.dy[0]"
    sources: list[tuple[str, str]]      # (parameter, argument): the whole inputs, then targets
    targets: list[tuple[str, str]]      # (parameter, argument): the batch's targets, "tb0", "b.tb[0]"
    gathers: list[tuple[str, str, str]]  # (kernel, batch buffer, source): a part's rows gathered
    views: list[tuple[str, str, str]]   # weights as views of params: name, expression, comment
    gviews: list[tuple[str, str, str]]  # gradients as views of g, the part's row of G
    forward: list[tuple[list[str], list[tuple[str, str, str]]]]   # (where, [(kernel, args, note)])
    losses: list[tuple[str, str]]       # (kernel, args) of each output's loss gradient
    backward: list[tuple[list[str], list[tuple[str, str, str]]]]
    returns: list[str]                  # the outputs' parameters, e.g. "b_dense_2"
    macs: int                           # multiply-adds of the Dense products a sample

    @property
    def train_params(self) -> list[str]:
        """_train_part's parameters after (p, P, idx, params, G)."""
        return [p for p, _ in self.sources + self.targets] + self.params

    @property
    def train_call(self) -> list[str]:
        """_train_in_parts's arguments for _train_part's sources, targets and buffers."""
        return [a for _, a in self.sources + self.targets] + self.train_args


def lower_parts(low, fwd, bwd) -> Parts | None:
    """Parts for a model of PART_KINDS layers on 2-D tensors only, else None.
    low: the lower._Lowering that made the steps fwd and bwd."""
    g = low.g
    if not fwd or any(s.kind not in PART_KINDS for s in fwd):
        return None
    tensors = [t for n in g.nodes for t in (*n.inputs, *n.outputs)]
    if any(len(t.shape) != 2 or t.bmul != 1 or len(t.base().shape) != 2 for t in tensors):
        return None
    if any(not re.fullmatch(r"xs\[\d+\]", b.expr) for b in low.bind_inputs):
        return None
    if any(not re.fullmatch(r"douts\[\d+\]\.reshape\(-1, \d+\)", b.expr) for b in low.bind_outputs):
        return None  # an output twice, or a view of one
    ends = [0]
    for _, w in g.params:
        ends.append(ends[-1] + math.prod(w.shape))
    names: dict[str, str] = {}
    train_args: list[str] = []
    views: dict[str, tuple[str, str, str]] = {}
    in_pos = {low.key(t.base()): i for i, t in enumerate(g.inputs)}          # input buffer -> xs index
    out_pos = {"d_" + low.key(t.base()): k for k, t in enumerate(g.outputs)}  # output gradient -> douts index

    def buf(expr: str) -> str:
        """A buffer's parameter, sliced to the part's rows (the empty
        stand-ins whole); a weight's or gradient's view."""
        m = re.fullmatch(r"b\['(\w+)'\]|(w|g)\[(\d+)\]", expr)
        if m.group(2):
            i = int(m.group(3))
            layer, w = g.params[i]
            shape = f".reshape({w.shape})" if len(w.shape) > 1 else ""
            src = "params" if m.group(2) == "w" else "g"
            views.setdefault(expr, (f"{m.group(2)}{i}", f"{src}[{ends[i]}:{ends[i + 1]}]{shape}",
                                    f"{layer.name}/{w.name} {w.shape}" + (" gradient" if src == "g" else "")))
            return views[expr][0]
        if expr not in names:
            key = m.group(1)
            names[expr] = f"b_{key}"
            if key in in_pos:  # an input: its batch rows, gathered by the parts
                train_args.append(f"b.xb[{in_pos[key]}]")
            elif key in out_pos:  # an output's gradient: the loss gradient's buffer
                train_args.append(f"b.dy[{out_pos[key]}]")
            else:
                train_args.append(f"B[{key!r}]")
        return names[expr] + ("" if m.group(1).startswith("_e") else "[r0:r1]")

    def whole(expr: str) -> str:
        return buf(expr).removesuffix("[r0:r1]")

    forward, macs = [], 0
    for s in fwd:
        f = s.f
        if s.kind == "Dense":
            calls = [("_dense_forward_one", [buf(f["y"]), buf(f["x"]), buf(f["kernel"]), buf(f["bias"]),
                                             f"np.int64({f['act']})"], f["act_name"])]
            if f["into"]:
                calls[0] = ("nonfinite += _dense_forward_one",) + calls[0][1:]
            macs += math.prod(g.params[f["kernel_index"]][1].shape)
        elif s.kind == "Activation":
            calls = [("_activation_forward_serial", [buf(f["y"]), buf(f["x"]), f"np.int64({f['act']})"], f["act_name"])]
        else:
            calls = [("concat_forward", [buf(f["y"]), buf(x), f"np.int64({off})"], "") for x, off in f["parts"]]
        forward.append((s.where, [(k, ", ".join(a), note) for k, a, note in calls]))
    returns = [whole(r) for r in low.returns]
    n_fwd = len(names)  # _forward_part's buffers: the first n_fwd

    c, losses = g.compile, []
    backward = []
    if c is not None:
        for k, t in enumerate(g.outputs):
            dy = buf(f"b['d_{low.key(t)}']")
            losses.append((f"{c.losses[k]}_backward", f"{dy}, {buf(low.returns[k])}, tb{k}[r0:r1], {c.loss_weights[k]!r} / n"))
        for s in bwd:
            f = s.f
            if s.kind == "Dense":
                calls = [("_dense_backward_one", [buf(f["dx"]), buf(f["dkernel"]), buf(f["dbias"]), buf(f["dy"]),
                                                  buf(f["y"]), buf(f["x"]), buf(f["kernel"]), f"np.int64({f['act']})",
                                                  f"np.int64({f['mode']})", f"np.int64({f['wmode']})"])]
            elif s.kind == "Activation":
                calls = [("_activation_backward_serial", [buf(f["dx"]), buf(f["dy"]), buf(f["y"]), f"np.int64({f['act']})",
                                                          f"np.int64({f['mode']})"])] if f["mode"] else []
            else:
                calls = [("concat_backward", [buf(dx), buf(f["dy"]), f"np.int64({off})", f"np.int64({mode})"])
                         for dx, off, mode in f["parts"] if mode]
            backward.append((s.where, [(k, ", ".join(a), "") for k, a in calls]))
    inputs = [(names[f"b[{b.key!r}]"], in_pos[b.key]) for b in low.bind_inputs]
    sources = [(f"x{i}", f"xs[{i}]") for _, i in inputs] + [(f"t{k}", f"ts[{k}]") for k in range(len(losses))]
    gathers = ([("_rt_gather_rows", p, f"x{i}") for p, i in inputs]
               + [("_rt_gather_values" if c.losses[k] == "sparse_categorical_crossentropy" else "_rt_gather_rows",
                   f"tb{k}", f"t{k}") for k in range(len(losses))])
    params = list(names.values())
    targets = [(f"tb{k}", f"b.tb[{k}]") for k in range(len(losses))]
    return Parts(params, params[:n_fwd], list(names)[:n_fwd], train_args, sources, targets, gathers,
                 [v for e, v in views.items() if e.startswith("w")], [v for e, v in views.items() if e.startswith("g")],
                 forward, losses, backward, returns, macs)
