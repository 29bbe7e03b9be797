"""Render module plans through the Jinja templates and write them atomically."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import jinja2

from .plan import ModulePlan, comment_text

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), undefined=jinja2.StrictUndefined,
                             keep_trailing_newline=True, autoescape=False)
    env.filters["pyrepr"] = repr  # names from the model file reach code only as literals...
    env.filters["comment"] = comment_text  # ...or as one line of printable ASCII inside a comment
    return env


def _text(name: str) -> str:
    return (TEMPLATES / name).read_text().strip("\n")


# The runtime's files in the order they are pasted: _Runtime's parts (mixin
# classes) before _Runtime, which inherits them.
RUNTIME_FILES = ("runtime_helpers.py", "runtime_compile.py", "runtime_state.py", "runtime_data.py", "runtime_weights.py",
                 "runtime_report.py", "runtime.py")


def render(plan: ModulePlan) -> str:
    """The generated module's source: deterministic, no timestamps."""
    env = _environment()
    text = env.get_template("module.py.j2").render(
        plan=plan, prelude=_text("prelude.py"), runtime="\n\n\n".join(_text(f) for f in RUNTIME_FILES),
        kernels=[_text(f"kernels/{k}.py") for k in plan.kernels])
    lines = [line.rstrip() for line in text.splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    return "\n".join(lines) + "\n"


def write(files: dict[str, str], out_dir: str) -> list[Path]:
    """Write every file or none: each goes to a temporary file in the target
    folder first and is moved into place only when all were written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    staged: list[tuple[str, Path]] = []
    try:
        for name, text in files.items():
            fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=out)
            with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as fh:
                fh.write(text)
            staged.append((tmp, out / f"{name}.py"))
    except BaseException:
        for tmp, _ in staged:
            os.unlink(tmp)
        raise
    for tmp, final in staged:
        os.replace(tmp, final)
    return [final for _, final in staged]
