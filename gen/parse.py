"""Front end: read a Keras functional-API model file with libcst and produce
an `ir.Program`, without ever executing or importing it.

The module body is walked top to bottom. Each statement is checked against
the small straight-line language of SPEC §1, and its expressions are evaluated
*symbolically* against an environment (name -> value), in exactly Python's
evaluation order, so that the creation order of layers and models (which
fixes Keras's auto-names) is the order Python would create them in.

Values are Python literals (int, float, str, bool, None, tuple, dict),
`ir.Ref`s to layers/models/tensors, and the private markers below. Every
problem becomes a diagnostic; a failed expression evaluates to `_POISON`,
which silently propagates so one mistake is reported once."""
from __future__ import annotations

import builtins
import dataclasses
import operator
from dataclasses import dataclass

import libcst as cst
from libcst.metadata import MetadataWrapper, PositionProvider, QualifiedNameProvider, QualifiedNameSource

from . import catalog, ir
from .catalog import Param, Signature
from .diagnostics import Diagnostics, Span, did_you_mean


class _Poison:
    """The value of an expression that already produced an error."""

    def __repr__(self) -> str:
        return "<poison>"


_POISON = _Poison()


@dataclass(frozen=True)
class _Import:
    """A module or name bound by an import statement (dotted, as imported)."""
    qualname: str


@dataclass(frozen=True)
class _Keras:
    """A supported Keras callable: a key of catalog.CALLABLES."""
    key: str


@dataclass(frozen=True)
class _OptimizerClass:
    cls: str


@dataclass(frozen=True)
class _Optimizer:
    """An optimizer object, e.g. `RMSprop(learning_rate=0.01)`."""
    cls: str
    args: dict
    span: Span


@dataclass(frozen=True)
class _Builtin:
    name: str


@dataclass(frozen=True)
class _Result:
    """What a model method returned (e.g. fit's History): not usable by gen."""
    what: str


def _keras_names() -> dict[str, object]:
    names: dict[str, object] = {}
    for key, sig in catalog.CALLABLES.items():
        if sig.kind != "model":
            names["keras.layers." + key] = _Keras(key)
    names["keras.Input"] = _Keras("Input")
    names["keras.Model"] = names["keras.models.Model"] = _Keras("Model")
    for cls in catalog.OPTIMIZERS:
        names["keras.optimizers." + cls] = _OptimizerClass(cls)
    for act in catalog.ACTIVATIONS:  # activation=keras.activations.relu means 'relu'
        names["keras.activations." + act] = act
    return names


_KERAS_NAMES = _keras_names()
_KERAS_MODULES = {"keras", "keras.layers", "keras.models", "keras.optimizers", "keras.activations"}
_SUPPORTED = ", ".join(k for k in catalog.CALLABLES)
_OPTIMIZER_LOOKUP = {**{a: c for a, c in catalog.OPTIMIZER_ALIASES.items()},
                     **{c.lower(): c for c in catalog.OPTIMIZERS}}
_OPTIMIZER_HINT = ("gen supports the optimizers 'rmsprop', 'sgd' and 'adam', as strings or as "
                   "keras.optimizers.RMSprop(...), SGD(...), Adam(...)")
_CALL_SIG = Signature("__call__", "method", (Param("inputs"),))
_KEYWORD_HINTS = {"lr": "Keras 3 spells it learning_rate"}
_FIT_DATA = ("x", "y", "validation_data")
_OPS = {"Add": operator.add, "Subtract": operator.sub, "Multiply": operator.mul, "Divide": operator.truediv,
        "FloorDivide": operator.floordiv, "Modulo": operator.mod, "Power": operator.pow}
_STATEMENT_WORDS = {"FunctionDef": "def", "ClassDef": "class", "If": "if", "For": "for", "While": "while",
                    "With": "with", "Try": "try", "TryStar": "try", "Match": "match", "Del": "del",
                    "Global": "global", "Nonlocal": "nonlocal", "Return": "return", "Raise": "raise",
                    "Assert": "assert", "Break": "break", "Continue": "continue"}
_EXPRESSION_WORDS = {"Lambda": "lambda expressions", "ListComp": "comprehensions", "SetComp": "comprehensions",
                     "DictComp": "comprehensions", "GeneratorExp": "generator expressions",
                     "Subscript": "subscripts", "Comparison": "comparisons", "BooleanOperation": "'and'/'or'",
                     "IfExp": "conditional expressions", "Set": "sets", "NamedExpr": "':=' assignments",
                     "Imaginary": "complex numbers", "Await": "'await'", "Yield": "'yield'", "Ellipsis": "'...'"}
_MAX_BITS, _MAX_LEN = 4096, 100_000
_CONSTANT_HINT = "module-level constants must be finite numbers, strings or tuples of reasonable size"
_STRAIGHT_LINE_HINT = ("gen reads straight-line module code only: imports, assignments to names, "
                       "layer/model calls, model.compile/fit/summary, and constants")
_EVAL_HINT = ("gen evaluates only Keras layers, Input, Model, optimizers, literals, names bound earlier "
              "and arithmetic on constants; the file is read, never run")


def _normalize(qualname: str) -> str:
    for prefix in ("tensorflow.keras", "tf_keras"):
        if qualname == prefix or qualname.startswith(prefix + "."):
            return "keras" + qualname[len(prefix):]
    return qualname


def _dotted(node: cst.BaseExpression) -> list[str] | None:
    """`a.b.c` as ['a', 'b', 'c'], or None when it is not a plain dotted name."""
    if isinstance(node, cst.Name):
        return [node.value]
    if isinstance(node, cst.Attribute):
        head = _dotted(node.value)
        return None if head is None else head + [node.attr.value]
    return None


def _flatten(struct) -> list:
    if isinstance(struct, tuple):
        return list(struct)
    if isinstance(struct, dict):
        return list(struct.values())
    return [struct]


def _has_poison(value) -> bool:
    if value is _POISON:
        return True
    if isinstance(value, tuple):
        return any(_has_poison(v) for v in value)
    if isinstance(value, dict):
        return any(_has_poison(v) for v in value.values())
    return False


class _Parser:
    def __init__(self, path: str, wrapper: MetadataWrapper, diags: Diagnostics):
        self.path, self.diags = path, diags
        self.pos = wrapper.resolve(PositionProvider)
        self.qnames = wrapper.resolve(QualifiedNameProvider)
        self.module = wrapper.module
        self.env: dict[str, object] = {}
        self.layers: dict[int, ir.LayerDecl] = {}
        self.models: dict[int, ir.ModelDecl] = {}
        self.calls: list[ir.CallDecl] = []
        self.tensor_spans: dict[int, Span] = {}
        self.order = 0
        self.tensors = 0

    # ---- helpers ---------------------------------------------------------
    def span(self, node: cst.CSTNode) -> Span:
        start, end = self.pos[node].start, self.pos[node].end
        lpar, rpar = getattr(node, "lpar", None), getattr(node, "rpar", None)
        if isinstance(node, cst.BaseExpression) and lpar and rpar:  # include the node's own parentheses
            start, end = self.pos[node.lpar[0]].start, self.pos[node.rpar[-1]].end
        return Span(self.path, start.line, start.column + 1, end.line, end.column + 1)

    def code(self, node: cst.CSTNode) -> str:
        text = self.module.code_for_node(node).strip()
        return text if len(text) <= 60 else text[:57] + "..."

    def error(self, code: str, message: str, node, hint: str = "") -> _Poison:
        span = node if isinstance(node, Span) else self.span(node)
        self.diags.error(code, message, span, hint)
        return _POISON

    def unsupported(self, node: cst.CSTNode, what: str, hint: str = _EVAL_HINT) -> _Poison:
        return self.error("unsupported-expression", f"gen does not evaluate {what}.", node, hint)

    def describe(self, value) -> str:
        if isinstance(value, ir.Ref):
            if value.kind == "layer":
                return f"<{self.layers[value.id].cls} layer object>"
            return "<Model object>" if value.kind == "model" else "<KerasTensor>"
        if isinstance(value, tuple):
            return "[" + ", ".join(self.describe(v) for v in value) + "]"
        if isinstance(value, _Keras):
            return f"the class {value.key}"
        if isinstance(value, _Optimizer):
            return f"<{value.cls} optimizer object>"
        if isinstance(value, _OptimizerClass):
            return f"the class {value.cls}"
        if isinstance(value, _Import):
            return f"the module {value.qualname}"
        return f"{value!r} (of type {type(value).__name__})"

    # ---- statements ------------------------------------------------------
    def run(self) -> ir.Program:
        for stmt in self.module.body:
            if isinstance(stmt, cst.SimpleStatementLine):
                for small in stmt.body:
                    self.guarded(small)
            else:
                self.bad_statement(stmt)
        layers = tuple(self.layers[i] for i in sorted(self.layers))
        models = tuple(self.models[i] for i in sorted(self.models))
        return ir.Program(self.path, self.module.code, layers, tuple(self.calls), models, dict(self.tensor_spans))

    def guarded(self, stmt: cst.BaseSmallStatement) -> None:
        try:
            self.statement(stmt)
        except RecursionError:
            self.error("unsupported-expression", "This statement is nested too deeply for gen.", stmt,
                       _STRAIGHT_LINE_HINT)
        except Exception as exc:  # never a traceback: a diagnostic instead
            self.error("internal-error", f"gen failed on this statement ({type(exc).__name__}: {exc}).", stmt,
                       "this is a bug in gen; please report it with the model file")

    def bad_statement(self, stmt: cst.CSTNode) -> None:
        word = _STATEMENT_WORDS.get(type(stmt).__name__, type(stmt).__name__)
        self.error("unsupported-statement", f"gen does not support '{word}' statements in a model file.", stmt,
                   _STRAIGHT_LINE_HINT)

    def statement(self, stmt: cst.BaseSmallStatement) -> None:
        if isinstance(stmt, cst.Pass):
            return
        if isinstance(stmt, cst.Expr):
            self.top_level(stmt.value)
        elif isinstance(stmt, cst.Import):
            for alias in stmt.names:
                dotted = ".".join(_dotted(alias.name))
                if alias.asname is not None:
                    self.env[alias.asname.name.value] = _Import(dotted)
                else:
                    self.env[dotted.split(".")[0]] = _Import(dotted.split(".")[0])
        elif isinstance(stmt, cst.ImportFrom):
            self.import_from(stmt)
        elif isinstance(stmt, cst.Assign):
            self.assign(stmt)
        elif isinstance(stmt, cst.AnnAssign):
            self.scan_calls(stmt.annotation.annotation, error=True)
            if stmt.value is not None:
                self.bind_target(stmt.target, self.top_level(stmt.value))
        elif isinstance(stmt, cst.AugAssign):
            self.aug_assign(stmt)
        else:
            self.bad_statement(stmt)

    def import_from(self, stmt: cst.ImportFrom) -> None:
        module = "." * len(stmt.relative) + (".".join(_dotted(stmt.module)) if stmt.module else "")
        if isinstance(stmt.names, cst.ImportStar):
            self.error("unsupported-statement", f"gen does not support 'from {module} import *'.", stmt,
                       f"import the names you use, e.g. 'from {module} import Input, Dense'")
            return
        for alias in stmt.names:
            name = alias.name.value
            bound = alias.asname.name.value if alias.asname is not None else name
            self.env[bound] = _Import(f"{module}.{name}")

    def assign(self, stmt: cst.Assign) -> None:
        value = self.top_level(stmt.value)
        for target in stmt.targets:
            self.bind_target(target.target, value)

    def bind_target(self, target: cst.BaseExpression, value) -> None:
        if isinstance(target, (cst.Tuple, cst.List)) and all(isinstance(e, cst.Element) and isinstance(e.value, cst.Name)
                                                             for e in target.elements):
            # `steps, features = 7, 3` and `a, b = two_output_model(x)`
            if value is _POISON:
                return
            if not isinstance(value, tuple) or len(value) != len(target.elements):
                n = len(value) if isinstance(value, tuple) else 1
                self.error("unsupported-statement", f"Cannot unpack {n} value(s) into {len(target.elements)} names.",
                           target, "the right-hand side must be a tuple of the same length")
                return
            for element, item in zip(target.elements, value):
                self.bind_target(element.value, item)
            return
        if not isinstance(target, cst.Name):
            self.error("unsupported-statement", f"gen can only assign to a plain name, not to {self.code(target)}.",
                       target, "assign each value to its own name, e.g. 'a = ...' then 'b = ...'")
            return
        name = target.value
        self.env[name] = value
        if isinstance(value, ir.Ref) and value.kind == "layer" and self.layers[value.id].var is None:
            self.layers[value.id] = dataclasses.replace(self.layers[value.id], var=name)
        if isinstance(value, ir.Ref) and value.kind == "model" and self.models[value.id].var is None:
            self.models[value.id] = dataclasses.replace(self.models[value.id], var=name)

    def aug_assign(self, stmt: cst.AugAssign) -> None:
        target = stmt.target
        current = self.eval(target) if isinstance(target, cst.Name) else None
        if not isinstance(target, cst.Name) or not isinstance(current, (int, float, str, tuple)):
            if current is not _POISON:
                bound = f" (bound to {self.describe(current)})" if current is not None else ""
                self.error("unsupported-statement", "gen supports augmented assignment only to a name bound to a "
                           f"constant. Received: {self.code(target)}{bound}.", stmt, _STRAIGHT_LINE_HINT)
            return
        op = type(stmt.operator).__name__[:-len("Assign")]
        self.bind_target(target, self.binop(op, current, self.eval(stmt.value), stmt, stmt.operator))

    def top_level(self, expr: cst.BaseExpression):
        """An expression statement or right-hand side: model methods are allowed here."""
        if isinstance(expr, cst.Call) and isinstance(expr.func, cst.Attribute) \
                and isinstance(expr.func.value, cst.Name):
            receiver = self.env.get(expr.func.value.value)
            if isinstance(receiver, ir.Ref) and receiver.kind == "model":
                return self.method(receiver, expr.func.attr.value, expr)
        return self.eval(expr)

    # ---- expressions -----------------------------------------------------
    def eval(self, node: cst.BaseExpression):
        handler = getattr(self, "eval_" + type(node).__name__, None)
        if handler is None:
            what = _EXPRESSION_WORDS.get(type(node).__name__, f"{type(node).__name__} expressions")
            return self.unsupported(node, f"{what} such as {self.code(node)}")
        return handler(node)

    def eval_Integer(self, node: cst.Integer):
        return self.literal(node)

    def eval_Float(self, node: cst.Float):
        return self.literal(node)

    def eval_SimpleString(self, node: cst.SimpleString):
        value = self.literal(node)
        if isinstance(value, bytes):
            return self.unsupported(node, "bytes literals", "use a str literal")
        return value

    def literal(self, node):
        try:
            return node.evaluated_value
        except Exception as exc:
            return self.error("bad-constant", f"gen cannot read this literal ({exc}).", node, _CONSTANT_HINT)

    def eval_ConcatenatedString(self, node: cst.ConcatenatedString):
        return self.binop("Add", self.eval(node.left), self.eval(node.right), node, node)

    def eval_FormattedString(self, node: cst.FormattedString):
        if any(isinstance(p, cst.FormattedStringExpression) for p in node.parts):
            return self.unsupported(node, "f-strings with expressions", "write the string as a constant")
        text = "".join(p.value for p in node.parts).replace("{{", "{").replace("}}", "}")
        quote, prefix = node.start[len(node.prefix):], node.prefix.replace("f", "").replace("F", "")
        try:
            return cst.SimpleString(prefix + quote + text + quote).evaluated_value
        except Exception as exc:
            return self.error("bad-constant", f"gen cannot read this literal ({exc}).", node, _CONSTANT_HINT)

    def eval_Name(self, node: cst.Name):
        if node.value in ("True", "False", "None"):
            return {"True": True, "False": False, "None": None}[node.value]
        return self.as_value(node, self.chain(node, [node.value]))

    def eval_Attribute(self, node: cst.Attribute):
        parts = _dotted(node)
        if parts is None:
            return self.unsupported(node, f"attribute access {self.code(node)}")
        return self.as_value(node, self.chain(node, parts))

    def as_value(self, node, value):
        """Refuse the markers that only make sense as a callee."""
        if isinstance(value, _Builtin):
            return self.unsupported(node, f"the Python builtin '{value.name}'")
        if isinstance(value, _Import) and value.qualname not in _KERAS_MODULES:
            return self.unsupported(node, f"{value.qualname} (only Keras names are understood)")
        if isinstance(value, _Result):
            return self.unsupported(node, f"the result of {value.what}")
        return value

    def chain(self, node: cst.BaseExpression, parts: list[str]):
        """Resolve a dotted name against the environment and the imports."""
        root = parts[0]
        if root not in self.env:
            if hasattr(builtins, root):
                return _Builtin(".".join(parts))
            return self.error("undefined-name", f"name '{root}' is not defined.{did_you_mean(root, self.env)}",
                              node if isinstance(node, cst.Name) else self.root_node(node),
                              "gen reads the file top to bottom without running it: bind a name "
                              "(a constant, layer, tensor or model) before using it")
        value = self.env[root]
        if isinstance(value, _Import):
            return self.resolve(self.qualname(node, value, parts), node)
        if len(parts) == 1 or value is _POISON:
            return value
        return self.unsupported(node, f"attribute access {'.'.join(parts)} on {self.describe(value)}",
                                "on a model, gen understands model.compile(...), model.fit(...) and "
                                "model.summary() as statements; nothing else is read from objects")

    @staticmethod
    def root_node(node: cst.BaseExpression) -> cst.BaseExpression:
        while isinstance(node, cst.Attribute):
            node = node.value
        return node

    def qualname(self, node, imported: _Import, parts: list[str]) -> str:
        """The import path a dotted name stands for, via QualifiedNameProvider,
        cross-checked with the (flow-sensitive) environment's binding."""
        prefix = imported.qualname
        names = self.qnames.get(node, ())
        names = names() if callable(names) else names  # the provider's values are lazy
        found = sorted(q.name for q in names if q.source == QualifiedNameSource.IMPORT
                       and (q.name == prefix or q.name.startswith(prefix + ".")))
        # the provider is flow-insensitive: keep only what the current binding allows
        return found[0] if len(found) == 1 else ".".join([prefix] + parts[1:])

    def resolve(self, qualname: str, node):
        name = _normalize(qualname)
        if name in _KERAS_NAMES:
            return _KERAS_NAMES[name]
        if name in _KERAS_MODULES or not (name == "keras" or name.startswith("keras.")):
            return _Import(name)
        parent, leaf = name.rpartition(".")[0], name.rpartition(".")[2]
        if parent == "keras.optimizers":
            return self.error("unknown-optimizer", f"gen does not support the optimizer {name}."
                              f"{did_you_mean(leaf, catalog.OPTIMIZERS)}", node, _OPTIMIZER_HINT)
        if parent in ("keras", "keras.layers", "keras.models"):
            return self.error("unknown-layer", f"gen does not support {name}.{did_you_mean(leaf, catalog.CALLABLES)}",
                              node, f"supported: {_SUPPORTED}")
        if parent == "keras.activations":
            return self.unsupported(node, name, "supported activations: " + ", ".join(catalog.ACTIVATIONS))
        return self.unsupported(node, name, f"supported Keras names: {_SUPPORTED}, and the optimizers "
                                "SGD, RMSprop, Adam")

    def eval_List(self, node: cst.List):
        return self.sequence(node)

    def eval_Tuple(self, node: cst.Tuple):
        return self.sequence(node)

    def sequence(self, node):
        values = []
        for el in node.elements:
            if isinstance(el, cst.StarredElement):
                values.append(self.unsupported(el, "starred elements", "write the elements out"))
            else:
                values.append(self.eval(el.value))
        return _POISON if _has_poison(tuple(values)) else tuple(values)

    def eval_Dict(self, node: cst.Dict):
        out, poisoned = {}, False
        for el in node.elements:
            if isinstance(el, cst.StarredDictElement):
                poisoned = self.unsupported(el, "'**' in a dict", "write the entries out")
                continue
            key, value = self.eval(el.key), self.eval(el.value)
            if key is not _POISON and not isinstance(key, (str, int, float, bool, type(None))):
                key = self.unsupported(el.key, f"a dict key {self.describe(key)}", "use str or number keys")
            if key is _POISON or _has_poison(value):
                poisoned = True
            else:
                out[key] = value
        return _POISON if poisoned else out

    def eval_UnaryOperation(self, node: cst.UnaryOperation):
        value = self.eval(node.expression)
        op = type(node.operator).__name__
        if value is _POISON:
            return value
        if op in ("Minus", "Plus") and isinstance(value, (int, float)):
            return -value if op == "Minus" else +value
        return self.unsupported(node, f"{self.code(node.operator)!r} applied to {self.describe(value)}",
                                "only unary - and + on numbers are evaluated")

    def eval_BinaryOperation(self, node: cst.BinaryOperation):
        left, right = self.eval(node.left), self.eval(node.right)
        return self.binop(type(node.operator).__name__, left, right, node, node.operator)

    def binop(self, op: str, left, right, node, op_node):
        if left is _POISON or right is _POISON:
            return _POISON
        number = (int, float)
        ok = (op in _OPS and isinstance(left, number) and isinstance(right, number)) or \
            (op == "Add" and type(left) is type(right) and isinstance(left, (str, tuple)))
        if not ok:
            return self.unsupported(node, f"{self.code(op_node)!r} on {self.describe(left)} and "
                                    f"{self.describe(right)}",
                                    "only arithmetic on numbers and + on strings or tuples are evaluated")
        if op == "Power" and isinstance(left, int) and isinstance(right, int) and right > 0 \
                and right * abs(left).bit_length() > _MAX_BITS:
            return self.error("bad-constant", "gen cannot compute this constant: the integer is too large.", node,
                              _CONSTANT_HINT)
        try:
            result = _OPS[op](left, right)
        except (ArithmeticError, ValueError) as exc:
            return self.error("bad-constant", f"gen cannot compute this constant: {exc}.", node, _CONSTANT_HINT)
        if isinstance(result, complex) or (isinstance(result, int) and result.bit_length() > _MAX_BITS) \
                or (isinstance(result, (str, tuple)) and len(result) > _MAX_LEN):
            return self.error("bad-constant", "gen cannot compute this constant: the result is "
                              f"{'complex' if isinstance(result, complex) else 'too large'}.", node, _CONSTANT_HINT)
        return result

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


def parse(path: str, source: str, diags: Diagnostics) -> ir.Program | None:
    """Read a model file (never executing it). None only if it cannot be parsed."""
    try:
        parser = _Parser(path, MetadataWrapper(cst.parse_module(source)), diags)
    except cst.ParserSyntaxError as exc:
        diags.error("syntax-error", f"invalid syntax: {exc.message}",
                    Span(path, exc.raw_line, exc.raw_column + 1, exc.raw_line, exc.raw_column + 2),
                    "the model file must be valid Python")
        return None
    except Exception as exc:  # e.g. RecursionError on absurdly nested input
        diags.error("syntax-error", f"gen cannot read this file ({type(exc).__name__}: {exc}).",
                    Span(path, 1, 1, 1, 2), "the model file must be valid Python")
        return None
    return parser.run()
