"""`compile(...)` and `fit(...)` settings resolved against a model's outputs,
with Keras 3's defaults and the seed document's Keras 2 spellings."""
from __future__ import annotations

from dataclasses import dataclass, field

from . import catalog
from .diagnostics import Diagnostics, did_you_mean
from .ir import Arg, CompileDecl, FitDecl


@dataclass
class CompileSettings:
    optimizer: str                          # "rmsprop" | "sgd" | "adam"
    optimizer_args: dict[str, object]       # every hyper-parameter, Keras defaults filled in
    losses: list[str]                       # canonical loss name per output (output order)
    loss_weights: list[float]
    accuracy: list[bool]                    # per output: 'accuracy' requested


@dataclass
class FitSettings:
    defaults: dict[str, object] = field(default_factory=lambda: {
        "epochs": 1, "batch_size": 32, "shuffle": True, "validation_split": 0.0})


def _per_output(arg: Arg, names: list[str], what: str, diags: Diagnostics, single_ok) -> list | None:
    """A str/number for all outputs, a list in output order or a dict by output name."""
    v = arg.value
    if isinstance(v, tuple):
        if len(v) != len(names):
            diags.error("bad-structure", f"`{what}` must have one entry per output ({len(names)}: {', '.join(names)}). "
                        f"Received: {len(v)} entries", arg.span, f"use a dict keyed by output name, e.g. {{'{names[0]}': ...}}")
            return None
        return list(v)
    if isinstance(v, dict):
        unknown = [k for k in v if k not in names]
        for k in unknown:
            span = arg.items[list(v).index(k)] if arg.items else arg.span
            diags.error("unknown-output", f"`{what}` names an output the model does not have. Received: {k!r}.{did_you_mean(k, names)}",
                        span, "outputs: " + ", ".join(names))
        missing = [n for n in names if n not in v]
        if missing and not unknown:
            diags.error("bad-structure", f"`{what}` has no entry for output(s) {', '.join(missing)}.", arg.span,
                        "give every output an entry")
        return None if unknown or missing else [v[n] for n in names]
    if single_ok(v):
        return [v] * len(names)
    diags.error("bad-argument", f"`{what}` must be a value, a list in output order or a dict by output name. Received: {v!r}", arg.span)
    return None


def resolve_compile(c: CompileDecl, g, diags: Diagnostics) -> CompileSettings | None:
    names = g.output_names
    ok = True
    # optimizer: Keras defaults, then what the file gave
    alias, defaults = catalog.OPTIMIZERS[c.optimizer]
    opt = dict(defaults)
    for key, arg in c.optimizer_args.items():
        want = type(defaults[key])
        v = arg.value
        if want is float and isinstance(v, int) and not isinstance(v, bool):
            v = float(v)
        if not isinstance(v, want) or (want is float and v < 0):
            diags.error("bad-argument", f"Optimizer argument `{key}` must be a non-negative {want.__name__}. Received: {key}={arg.value!r}",
                        arg.span)
            ok = False
        opt[key] = v
    # losses
    losses = None
    if c.loss is None:
        diags.error("missing-loss", "compile() needs a loss to train the model.", c.span,
                    "losses: " + ", ".join(sorted(set(catalog.LOSSES.values()))))
    else:
        losses = _per_output(c.loss, names, "loss", diags, lambda v: isinstance(v, str))
        if losses is not None:
            if isinstance(c.loss.value, str) and len(names) > 1:
                diags.warning("keras2-loss", f"One loss for a model with {len(names)} outputs: applied to every output "
                              "(Keras 2 meaning; Keras 3 wants one per output).", c.loss.span,
                              f"write loss={{{', '.join(repr(n) + ': ' + repr(c.loss.value) for n in names)}}}")
            for k, loss in enumerate(losses):
                if loss not in catalog.LOSSES:
                    diags.error("unknown-loss", f"Unknown loss. Received: loss={loss!r}.{did_you_mean(loss, catalog.LOSSES)}",
                                c.loss.items[k] if isinstance(c.loss.value, (tuple, dict)) and c.loss.items else c.loss.span,
                                "supported losses: " + ", ".join(catalog.LOSSES))
                    ok = False
            losses = [catalog.LOSSES.get(x, x) for x in losses]
    # loss weights
    weights = [1.0] * len(names)
    if c.loss_weights is not None:
        def number(v):
            return isinstance(v, (int, float)) and not isinstance(v, bool)
        got = _per_output(c.loss_weights, names, "loss_weights", diags, lambda v: number(v) and len(names) == 1)
        if got is None:
            ok = False
        elif not all(number(w) for w in got):
            diags.error("bad-argument", f"`loss_weights` must be numbers. Received: {c.loss_weights.value!r}", c.loss_weights.span)
            ok = False
        else:
            weights = [float(w) for w in got]
    accuracy = _resolve_metrics(c.metrics, names, diags)
    if losses is None or accuracy is None or not ok:
        return None
    return CompileSettings(alias, opt, losses, weights, accuracy)


def _resolve_metrics(arg: Arg | None, names: list[str], diags: Diagnostics) -> list[bool] | None:
    """Per output: whether 'accuracy' was asked for (a list for one output,
    a dict by output name, or a list of lists in output order)."""
    if arg is None:
        return [False] * len(names)
    v = (arg.value,) if isinstance(arg.value, str) else arg.value
    if isinstance(v, dict):
        for k in v:
            if k not in names:
                diags.error("unknown-output", f"`metrics` names an output the model does not have. Received: {k!r}.{did_you_mean(k, names)}",
                            arg.span, "outputs: " + ", ".join(names))
                return None
        entries = [v.get(n, ()) for n in names]
    elif isinstance(v, tuple) and v and all(isinstance(x, tuple) for x in v) and len(v) == len(names):
        entries = list(v)
    elif isinstance(v, tuple) and (len(names) == 1 or not v):
        entries = [v] * len(names)
    else:
        diags.error("bad-structure", "For a model with several outputs, `metrics` must be a dict by output name or a list of lists. "
                    f"Received: metrics={arg.value!r}", arg.span, f"metrics={{'{names[0]}': ['accuracy']}}")
        return None
    out = []
    for entry in entries:
        entry = (entry,) if isinstance(entry, str) else entry
        for m in entry:
            if m not in catalog.METRICS:
                diags.error("unknown-metric", f"Unknown metric. Received: {m!r}.{did_you_mean(m, catalog.METRICS)}", arg.span,
                            "supported metrics: " + ", ".join(catalog.METRICS))
                return None
        out.append(bool(entry))
    return out


def resolve_fit(f: FitDecl | None, g, diags: Diagnostics) -> FitSettings:
    s = FitSettings()
    if f is None:
        return s
    checks = {"epochs": lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1,
              "batch_size": lambda v: v is None or (isinstance(v, int) and not isinstance(v, bool) and v >= 1),
              "shuffle": lambda v: isinstance(v, bool),
              "validation_split": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v < 1}
    for key, arg in f.args.items():
        if key in checks:
            if not checks[key](arg.value):
                diags.error("bad-argument", f"Invalid value for fit `{key}`. Received: {key}={arg.value!r}", arg.span)
            elif arg.value is not None:
                s.defaults[key] = float(arg.value) if key == "validation_split" else arg.value
    for data, span, names, what in ((f.x, f.x_span, g.input_names, "inputs"), (f.y, f.y_span, g.output_names, "outputs")):
        if isinstance(data, tuple) and len(data) != len(names):
            diags.error("bad-structure", f"fit() data has {len(data)} arrays but the model has {len(names)} {what} "
                        f"({', '.join(names)}).", span, f"pass one array per {what[:-1]}, in order")
        elif isinstance(data, dict):
            for k in data:
                if k not in names:
                    diags.error("unknown-name", f"fit() data names an unknown {what[:-1]}. Received: {k!r}.{did_you_mean(k, names)}",
                                span, f"{what}: " + ", ".join(names))
    return s


def check_names(c: CompileDecl, diags: Diagnostics) -> None:
    """For a model whose graph failed: still report unknown loss and metric
    names, which need no shapes, so one run shows every problem."""
    def strings(v):
        if isinstance(v, str):
            yield v
        elif isinstance(v, (tuple, list)):
            for x in v:
                yield from strings(x)
        elif isinstance(v, dict):
            for x in v.values():
                yield from strings(x)
    for arg, known, code, what in ((c.loss, catalog.LOSSES, "unknown-loss", "loss"),
                                   (c.metrics, catalog.METRICS, "unknown-metric", "metric")):
        for name in strings(arg.value if arg is not None else None):
            if name not in known:
                diags.error(code, f"Unknown {what}. Received: {name!r}.{did_you_mean(name, known)}", arg.span,
                            f"supported {what}s: " + ", ".join(known))
