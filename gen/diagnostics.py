"""Source spans and diagnostics collected across a whole run, rendered like a compiler."""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Span:
    """A region of the model file; line and col are 1-based, end is exclusive."""

    path: str
    line: int
    col: int
    end_line: int
    end_col: int

    def __str__(self) -> str:
        return f"{self.path}:{self.line}:{self.col}"


@dataclass(frozen=True)
class Diagnostic:
    severity: str  # "error" | "warning"
    code: str      # stable, kebab-case: "unknown-layer", "bad-shape", ...
    message: str
    span: Span
    hint: str = ""

    def render(self, source: str | None) -> str:
        out = [f"{self.span}: {self.severity}[{self.code}]: {self.message}"]
        lines = source.splitlines() if source is not None else []
        if 1 <= self.span.line <= len(lines):
            text = lines[self.span.line - 1].expandtabs(1)
            width = (self.span.end_col - self.span.col) if self.span.end_line == self.span.line else len(text) - self.span.col + 1
            out.append(f"    {text}")
            out.append("    " + " " * (self.span.col - 1) + "^" * max(1, width))
        if self.hint:
            out.append(f"    = help: {self.hint}")
        return "\n".join(out)


@dataclass
class Diagnostics:
    """Errors as values: every stage appends here and the run reports them all."""

    source: str | None = None
    items: list[Diagnostic] = field(default_factory=list)

    def error(self, code: str, message: str, span: Span, hint: str = "") -> None:
        self.items.append(Diagnostic("error", code, message, span, hint))

    def warning(self, code: str, message: str, span: Span, hint: str = "") -> None:
        self.items.append(Diagnostic("warning", code, message, span, hint))

    @property
    def has_errors(self) -> bool:
        return any(d.severity == "error" for d in self.items)

    def sorted(self) -> list[Diagnostic]:
        # stable order: by position, then the order they were found
        return sorted(self.items, key=lambda d: (d.span.line, d.span.col))

    def render(self) -> str:
        return "\n".join(d.render(self.source) for d in self.sorted())


def did_you_mean(word: str, choices) -> str:
    """' Did you mean "x"?' for the closest choice, or ''."""
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return f' Did you mean "{close[0]}"?' if close else ""
