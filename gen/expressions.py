"""Symbolic evaluation of the expressions of a model file: literals, names and
dotted names resolved against the environment and the imports, arithmetic on
constants, sequences and dicts; also the parser's span/error helpers.

Values are Python literals (int, float, str, bool, None, tuple, dict),
`ir.Ref`s to layers/models/tensors, and the private markers below. Every
problem becomes a diagnostic; a failed expression evaluates to `_POISON`,
which silently propagates so one mistake is reported once."""
from __future__ import annotations

import builtins
import operator
from dataclasses import dataclass

import libcst as cst
from libcst.metadata import QualifiedNameSource

from . import catalog, ir
from .diagnostics import Span, did_you_mean


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
_OPTIMIZER_HINT = ("gen supports the optimizers 'rmsprop', 'sgd' and 'adam', as strings or as "
                   "keras.optimizers.RMSprop(...), SGD(...), Adam(...)")
_OPS = {"Add": operator.add, "Subtract": operator.sub, "Multiply": operator.mul, "Divide": operator.truediv,
        "FloorDivide": operator.floordiv, "Modulo": operator.mod, "Power": operator.pow}
_EXPRESSION_WORDS = {"Lambda": "lambda expressions", "ListComp": "comprehensions", "SetComp": "comprehensions",
                     "DictComp": "comprehensions", "GeneratorExp": "generator expressions",
                     "Subscript": "subscripts", "Comparison": "comparisons", "BooleanOperation": "'and'/'or'",
                     "IfExp": "conditional expressions", "Set": "sets", "NamedExpr": "':=' assignments",
                     "Imaginary": "complex numbers", "Await": "'await'", "Yield": "'yield'", "Ellipsis": "'...'"}
_MAX_BITS, _MAX_LEN = 4096, 100_000
_CONSTANT_HINT = "module-level constants must be finite numbers, strings or tuples of reasonable size"
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


def _has_poison(value) -> bool:
    if value is _POISON:
        return True
    if isinstance(value, tuple):
        return any(_has_poison(v) for v in value)
    if isinstance(value, dict):
        return any(_has_poison(v) for v in value.values())
    return False


class ExpressionEvaluator:
    """Evaluates expressions symbolically. Its state (path, diags, pos, qnames,
    module, env, layers, ...) is set up by parse._Parser; calls are evaluated
    by keras_calls.KerasCalls (eval_Call)."""

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
