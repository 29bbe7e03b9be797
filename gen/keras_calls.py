"""Keras calls in a model file: binding arguments to catalog signatures,
constructing layers, Input, Model and optimizers, calling layers and models
on tensors, and the model methods compile, fit and summary."""
from __future__ import annotations

import dataclasses

import libcst as cst

from . import catalog, ir
from .catalog import Param, Signature
from .diagnostics import did_you_mean
from .expressions import (_OPTIMIZER_HINT, _POISON, ExpressionEvaluator, _Builtin, _dotted, _has_poison, _Import,
                          _Keras, _Optimizer, _OptimizerClass, _Result)

_OPTIMIZER_LOOKUP = {**{a: c for a, c in catalog.OPTIMIZER_ALIASES.items()},
                     **{c.lower(): c for c in catalog.OPTIMIZERS}}
_CALL_SIG = Signature("__call__", "method", (Param("inputs"),))
_KEYWORD_HINTS = {"lr": "Keras 3 spells it learning_rate"}
_FIT_DATA = ("x", "y", "validation_data")


def _flatten(struct) -> list:
    if isinstance(struct, tuple):
        return list(struct)
    if isinstance(struct, dict):
        return list(struct.values())
    return [struct]


class KerasCalls(ExpressionEvaluator):
    """Keras layers, models and optimizers: construction, calls and model methods."""

    # ---- calls -----------------------------------------------------------
    def eval_Call(self, node: cst.Call):
        parts = _dotted(node.func)
        if parts is not None:
            callee = self.chain(node.func, parts)
        elif isinstance(node.func, cst.Call):
            callee = self.eval(node.func)
        else:
            callee = None
        if isinstance(callee, _Keras):
            return self.construct(catalog.CALLABLES[callee.key], node)
        if isinstance(callee, _OptimizerClass):
            return self.optimizer(callee.cls, node)
        if isinstance(callee, ir.Ref) and callee.kind in ("layer", "model"):
            return self.apply(callee, node)
        if callee is _POISON:  # still look inside the arguments for more problems (not into fit data)
            method = isinstance(node.func, cst.Attribute) and node.func.attr.value in catalog.METHODS
            for arg in () if method else node.args:
                self.eval(arg.value)
            return _POISON
        if callee is None or isinstance(callee, (_Builtin, _Import)):
            return self.unsupported(node, f"the call {self.code(node)}")
        return self.unsupported(node, f"a call of {self.describe(callee)}, which is not callable")

    def bind_args(self, sig: Signature, node: cst.Call, owner: str, skip=()):
        """Map a call's arguments to `sig`, evaluate them in written order and
        return ({name: ir.Arg}, [(name, cst.Arg)]). Unevaluated: names in skip."""
        positional = [p.name for p in sig.params if p.positional]
        plan, seen, npos, too_many = [], set(), 0, False
        for arg in node.args:
            name = None
            if arg.star:
                self.unsupported(arg, f"'{arg.star}' arguments", f"pass each argument of {owner} explicitly")
            elif arg.keyword is None:
                if npos < len(positional):
                    name = positional[npos]
                elif not too_many:
                    too_many = True
                    self.error("too-many-arguments", f"{owner}() takes at most {len(positional)} positional "
                               f"argument{'s' if len(positional) != 1 else ''} ({', '.join(positional)}) but "
                               f"{sum(1 for a in node.args if a.keyword is None and not a.star)} were given.",
                               arg.value, f"pass the others by keyword: {', '.join(sig.names)}")
                npos += 1
            else:
                name = self.keyword(sig, owner, arg.keyword)
            if name is not None and name in seen:
                self.error("duplicate-argument", f"{owner}() got multiple values for argument '{name}'.",
                           arg, "give each argument once")
                name = None
            seen.add(name)
            plan.append((name, arg))
        args = {}
        for name, arg in plan:
            if name in skip or arg.star:  # a starred argument is already reported; its value is never read
                continue
            value = self.eval(arg.value)
            if name is not None and not _has_poison(value):
                items = ()
                if isinstance(arg.value, (cst.List, cst.Tuple)):
                    items = tuple(self.span(e.value) for e in arg.value.elements)
                elif isinstance(arg.value, cst.Dict):
                    items = tuple(self.span(e.value) for e in arg.value.elements)
                args[name] = ir.Arg(value, self.span(arg.value), items)
        for param in sig.params if not any(a.star for a in node.args) else ():
            if param.required and param.name not in seen:
                self.error("missing-argument", f"{owner}() missing required argument: '{param.name}'.", node,
                           f"{owner} takes: {', '.join(sig.names)}")
        return args, plan

    def keyword(self, sig: Signature, owner: str, keyword: cst.Name) -> str | None:
        kw = keyword.value
        renamed = catalog.RENAMED_KEYWORDS.get((sig.name, kw))
        if renamed is not None:
            self.diags.warning("keras2-keyword", f"{owner}() got the Keras 2 keyword '{kw}'; "
                               f"Keras 3 spells it '{renamed}'.", self.span(keyword),
                               f"gen reads it as {renamed}=; write {renamed}= for Keras 3")
            return renamed
        if sig.param(kw) is not None:
            return kw
        accepted = ", ".join(sig.names) or "no arguments"
        self.error("unknown-keyword", f"Unrecognized keyword argument passed to {owner}: '{kw}'."
                   f"{did_you_mean(kw, sig.names)}", keyword, _KEYWORD_HINTS.get(kw, f"{owner} accepts: {accepted}"))
        return None

    def check_data(self, arg: ir.Arg | None, owner: str, name: str):
        """Refuse classes, modules and optimizer objects where a constant is expected."""
        def ok(v):
            if isinstance(v, tuple):
                return all(ok(x) for x in v)
            if isinstance(v, dict):
                return all(ok(x) for x in v.values())
            return isinstance(v, (int, float, str, type(None)))
        if arg is None or ok(arg.value):
            return arg
        self.error("unsupported-expression", f"gen does not accept {self.describe(arg.value)} as argument "
                   f"'{name}' of {owner}.", arg.span, "pass a constant here")
        return None

    def new_layer(self, cls: str, args: dict, node: cst.Call, inner: ir.Ref | None = None) -> ir.Ref:
        lid = len(self.layers)
        self.layers[lid] = ir.LayerDecl(lid, self.order, cls, args, self.span(node), inner=inner)
        self.order += 1
        return ir.Ref("layer", lid)

    def new_call(self, callee: ir.Ref, inputs, n_out: int, node: cst.Call) -> tuple[int, ...]:
        outputs = tuple(range(self.tensors, self.tensors + n_out))
        self.tensors += n_out
        for t in outputs:
            self.tensor_spans[t] = self.span(node)
        self.calls.append(ir.CallDecl(len(self.calls), callee, inputs, outputs, self.span(node)))
        return outputs

    def construct(self, sig: Signature, node: cst.Call):
        args, _ = self.bind_args(sig, node, sig.name)
        if sig.kind == "model":
            return self.model(args, node)
        if sig.kind == "function":  # concatenate([...]): create the layer, then call it
            inputs = args.pop("inputs", None)
            if inputs is None:
                return _POISON
            layer = self.new_layer(sig.layer_class, self.data_args(args, sig.name), node)
            return self.call_layer(layer, inputs, node)
        inner = None
        if sig.layer_class == "TimeDistributed":
            wrapped = args.pop("layer", None)
            inner = wrapped.value if wrapped is not None else None
            if not (isinstance(inner, ir.Ref) and inner.kind in ("layer", "model")):
                if wrapped is not None:
                    self.error("not-a-layer", "Please initialize `TimeDistributed` layer with a "
                               f"`keras.layers.Layer` instance. Received: {self.describe(inner)}.", wrapped.span,
                               "wrap a layer object or a model, e.g. TimeDistributed(Dense(8))")
                return _POISON
        if any(p.required and p.name not in args and p.name != "layer" for p in sig.params):
            return _POISON  # Keras would fail before the layer exists (already reported)
        layer = self.new_layer(sig.layer_class, self.data_args(args, sig.name), node, inner)
        if sig.kind == "input":
            return ir.Ref("tensor", self.new_call(layer, (), 1, node)[0])
        return layer

    def data_args(self, args: dict, owner: str) -> dict:
        checked = {k: self.check_data(a, owner, k) for k, a in args.items()}
        return {k: a for k, a in checked.items() if a is not None}

    def apply(self, callee: ir.Ref, node: cst.Call):
        """`layer(x)` or `model(x)`."""
        owner = self.layers[callee.id].cls if callee.kind == "layer" else "Model"
        args, _ = self.bind_args(_CALL_SIG, node, owner + ".__call__")
        inputs = args.get("inputs")
        return self.call_layer(callee, inputs, node) if inputs is not None else _POISON

    def call_layer(self, callee: ir.Ref, inputs: ir.Arg, node: cst.Call):
        is_model = callee.kind == "model"
        struct = self.tensor_struct(inputs.value, allow_dict=is_model)
        if struct is None:
            who = "A Model" if is_model else f"A {self.layers[callee.id].cls} layer"
            return self.error("not-a-tensor", f"{who} can only be called on a tensor or a list of tensors. "
                              f"Received: {self.describe(inputs.value)}.", inputs.span,
                              "call it on the output of keras.Input(...) or of another layer call")
        if not is_model:
            return ir.Ref("tensor", self.new_call(callee, struct, 1, node)[0])
        shape = self.models[callee.id].outputs
        outs = self.new_call(callee, struct, len(_flatten(shape)), node)
        refs = [ir.Ref("tensor", t) for t in outs]
        if isinstance(shape, dict):
            return dict(zip(shape, refs))
        return tuple(refs) if isinstance(shape, tuple) else refs[0]

    @staticmethod
    def tensor_struct(value, allow_dict: bool = True):
        def tensor(v):
            return isinstance(v, ir.Ref) and v.kind == "tensor"
        if tensor(value):
            return value
        if isinstance(value, tuple) and value and all(tensor(v) for v in value):
            return value
        if allow_dict and isinstance(value, dict) and value and \
                all(isinstance(k, str) and tensor(v) for k, v in value.items()):
            return value
        return None

    def model(self, args: dict, node: cst.Call):
        structs = {}
        for key in ("inputs", "outputs"):
            arg = args.get(key)
            structs[key] = self.tensor_struct(arg.value) if arg is not None else None
            if arg is not None and structs[key] is None:
                self.error("not-a-tensor", f"All `{key}` values must be KerasTensors. Received: "
                           f"{key}={self.describe(arg.value)}.", arg.span,
                           f"{key}: one tensor, a list of tensors or a dict name -> tensor")
        name = self.check_data(args.get("name"), "Model", "name")
        if structs["inputs"] is None or structs["outputs"] is None:
            return _POISON
        mid = len(self.models)
        self.models[mid] = ir.ModelDecl(mid, self.order, None, name, structs["inputs"], structs["outputs"],
                                        self.span(node))
        self.order += 1
        return ir.Ref("model", mid)

    def optimizer(self, cls: str, node: cst.Call):
        defaults = catalog.OPTIMIZERS[cls][1]
        sig = Signature(cls, "optimizer", tuple(Param(k, v) for k, v in defaults.items()))
        args, _ = self.bind_args(sig, node, cls)
        return _Optimizer(cls, self.data_args(args, cls), self.span(node))

    # ---- model methods ---------------------------------------------------
    def method(self, model: ir.Ref, name: str, node: cst.Call):
        if name not in catalog.METHODS:
            self.unsupported(node.func, f"Model.{name}()", "gen understands model.compile(...), model.fit(...) "
                             "and model.summary(); the generated module provides the rest")
            return _POISON
        if name == "compile":
            self.compile(model, node)
        elif name == "fit":
            self.fit(model, node)
        else:
            self.bind_args(catalog.METHODS[name], node, name)
        return _Result(f"model.{name}()")

    def compile(self, model: ir.Ref, node: cst.Call) -> None:
        args, _ = self.bind_args(catalog.METHODS["compile"], node, "compile")
        opt = args.get("optimizer")
        cls, opt_args, opt_span = "RMSprop", {}, opt.span if opt is not None else self.span(node)
        if isinstance(opt, ir.Arg) and isinstance(opt.value, _Optimizer):
            cls, opt_args = opt.value.cls, opt.value.args
        elif isinstance(opt, ir.Arg) and isinstance(opt.value, str) and opt.value.lower() in _OPTIMIZER_LOOKUP:
            cls = _OPTIMIZER_LOOKUP[opt.value.lower()]
        elif opt is not None:
            self.error("unknown-optimizer", f"Could not interpret optimizer identifier: "
                       f"{self.describe(opt.value) if not isinstance(opt.value, str) else repr(opt.value)}."
                       f"{did_you_mean(opt.value, catalog.OPTIMIZER_ALIASES)}", opt.span, _OPTIMIZER_HINT)
        decl = ir.CompileDecl(cls, opt_args, opt_span,
                              *(self.check_data(args.get(k), "compile", k)
                                for k in ("loss", "loss_weights", "metrics")), span=self.span(node))
        self.models[model.id] = dataclasses.replace(self.models[model.id], compile=decl)

    def fit(self, model: ir.Ref, node: cst.Call) -> None:
        args, plan = self.bind_args(catalog.METHODS["fit"], node, "fit", skip=_FIT_DATA)
        args = self.data_args(args, "fit")
        data = {}
        for name, arg in plan:
            if name in _FIT_DATA:
                self.scan_calls(arg.value, error=False)
                data[name] = (self.data_struct(arg.value), self.span(arg.value))
        if "validation_data" in data:
            args["validation_data"] = ir.Arg(*data["validation_data"])
        if self.models[model.id].compile is None:
            self.error("not-compiled", "You must call `compile()` before using the model.", node,
                       "call model.compile(...) before model.fit(...)")
        x, x_span = data.get("x", (None, None))
        y, y_span = data.get("y", (None, None))
        decl = ir.FitDecl(args, x, y, x_span, y_span, self.span(node))
        self.models[model.id] = dataclasses.replace(self.models[model.id], fit=decl)

    @staticmethod
    def data_struct(expr: cst.BaseExpression):
        """fit data as written: None, 'opaque', a tuple of 'opaque' or a dict of 'opaque'."""
        if isinstance(expr, cst.Name) and expr.value == "None":
            return None
        if isinstance(expr, (cst.List, cst.Tuple)) and all(isinstance(e, cst.Element) for e in expr.elements):
            return tuple("opaque" for _ in expr.elements)
        if isinstance(expr, cst.Dict) and all(isinstance(e, cst.DictElement) and isinstance(e.key, cst.SimpleString)
                                              and isinstance(e.key.evaluated_value, str) for e in expr.elements):
            return {e.key.evaluated_value: "opaque" for e in expr.elements}
        return "opaque"

    def scan_calls(self, expr: cst.CSTNode, error: bool) -> None:
        """Report the outermost calls inside an expression gen does not evaluate."""
        parser = self

        class Finder(cst.CSTVisitor):
            def visit_Call(self, call: cst.Call) -> bool:
                if error:
                    parser.unsupported(call, f"the call {parser.code(call)}")
                else:
                    parser.diags.warning("not-evaluated", f"gen does not evaluate {parser.code(call)}: fit() data "
                                         "arrives at run time.", parser.span(call),
                                         "the generated Model.fit(x, y) takes the arrays when you call it")
                return False

        expr.visit(Finder())
