"""Helpers shared by the test_parse_*.py modules (gen/parse.py's tests);
no tests of its own."""
from gen.diagnostics import Diagnostics
from gen.parse import parse


def run(src: str, path: str = "m.py"):
    diags = Diagnostics(src)
    return parse(path, src, diags), diags


def errors(diags, code=None):
    return [d for d in diags.items if d.severity == "error" and (code is None or d.code == code)]


def only(diags, code):
    found = [d for d in diags.items if d.code == code]
    assert len(found) == 1, diags.render()
    return found[0]


def at(d, line, col, end_line=None, end_col=None):
    assert (d.span.line, d.span.col) == (line, col), d.render(None)
    if end_col is not None:
        assert (d.span.end_line, d.span.end_col) == (end_line, end_col), d.render(None)
