"""The whole pipeline for one model file, with every problem collected."""
from __future__ import annotations

from . import emit, graph, lower, parse
from .diagnostics import Diagnostics


def compile_source(path: str, source: str) -> tuple[dict[str, str], Diagnostics]:
    """{module name: generated source} and the diagnostics; no files touched.
    The sources are empty when any error was found."""
    diags = Diagnostics(source=source)
    program = parse.parse(path, source, diags)
    if program is None:
        return {}, diags
    graphs = graph.build(program, diags)
    if diags.has_errors:
        return {}, diags
    files = {g.module: emit.render(lower.lower(g, program)) for g in graphs}
    return files, diags


def compile_file(path: str) -> tuple[dict[str, str], Diagnostics]:
    with open(path, encoding="utf-8") as fh:
        source = fh.read()
    return compile_source(path, source)
