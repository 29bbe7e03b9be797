"""The plan of one generated module, as plain data for the templates: its
buffers, its steps, the one-call forward pass, and the ModulePlan itself;
and comment_text, which makes source text safe in a generated comment."""
from __future__ import annotations

from dataclasses import dataclass

from .parts import Parts


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
