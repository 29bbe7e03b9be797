"""Front end: read a Keras functional-API model file with libcst and produce
an `ir.Program`, without ever executing or importing it.

The module body is walked top to bottom. Each statement is checked against
the small straight-line language of SPEC §1, and its expressions are evaluated
*symbolically* against an environment (name -> value), in exactly Python's
evaluation order, so that the creation order of layers and models (which
fixes Keras's auto-names) is the order Python would create them in.

This module walks the statements and holds the parser state and `parse`;
expressions are evaluated by gen/expressions.py (ExpressionEvaluator) and
Keras calls by gen/keras_calls.py (KerasCalls), which `_Parser` inherits."""
from __future__ import annotations

import dataclasses

import libcst as cst
from libcst.metadata import MetadataWrapper, PositionProvider, QualifiedNameProvider

from . import ir
from .diagnostics import Diagnostics, Span
from .expressions import _POISON, _dotted, _Import
from .keras_calls import KerasCalls

_STATEMENT_WORDS = {"FunctionDef": "def", "ClassDef": "class", "If": "if", "For": "for", "While": "while",
                    "With": "with", "Try": "try", "TryStar": "try", "Match": "match", "Del": "del",
                    "Global": "global", "Nonlocal": "nonlocal", "Return": "return", "Raise": "raise",
                    "Assert": "assert", "Break": "break", "Continue": "continue"}
_STRAIGHT_LINE_HINT = ("gen reads straight-line module code only: imports, assignments to names, "
                       "layer/model calls, model.compile/fit/summary, and constants")


class _Parser(KerasCalls):
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
