"""Mutated model files: gen either generates or prints diagnostics, never a
traceback (hypothesis deletes, duplicates and swaps lines and tokens, and
changes numbers and strings of the examples)."""
import io
import re
import tokenize
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gen.compiler import compile_source

ROOT = Path(__file__).resolve().parents[1]
SOURCES = [p.read_text() for p in sorted((ROOT / "examples").glob("*.py"))]


def _tokens(src: str) -> list[str]:
    try:
        return [t.string for t in tokenize.generate_tokens(io.StringIO(src).readline)]
    except (tokenize.TokenError, IndentationError):
        return src.split()


@st.composite
def mutated(draw):
    src = draw(st.sampled_from(SOURCES))
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["del_line", "dup_line", "swap_lines", "del_token", "dup_token",
                                     "swap_tokens", "number", "string"]))
        lines = src.splitlines(keepends=True)
        if not lines:
            break
        if kind.endswith("line") or kind == "swap_lines":
            i, j = draw(st.integers(0, len(lines) - 1)), draw(st.integers(0, len(lines) - 1))
            if kind == "del_line":
                del lines[i]
            elif kind == "dup_line":
                lines.insert(j, lines[i])
            else:
                lines[i], lines[j] = lines[j], lines[i]
            src = "".join(lines)
        elif kind in ("number", "string"):
            pattern = r"\b\d+(\.\d+)?\b" if kind == "number" else r"'[^'\n]*'"
            spots = list(re.finditer(pattern, src))
            if spots:
                m = spots[draw(st.integers(0, len(spots) - 1))]
                new = (draw(st.sampled_from(["0", "-1", "10**12", "1e-300", "3.5", "True", "None", "''"]))
                       if kind == "number" else
                       draw(st.sampled_from(["'relu'", "'nope'", "''", "'int32'", "'x/y'", "'a b'", "7", "'softmax'"])))
                src = src[:m.start()] + new + src[m.end():]
        else:
            toks = _tokens(src)
            if len(toks) > 2:
                i, j = draw(st.integers(0, len(toks) - 1)), draw(st.integers(0, len(toks) - 1))
                if kind == "del_token":
                    del toks[i]
                elif kind == "dup_token":
                    toks.insert(j, toks[i])
                else:
                    toks[i], toks[j] = toks[j], toks[i]
                src = " ".join(toks)
    return src


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_mutations_generate_or_diagnose(src):
    files, diags = compile_source("fuzz.py", src)
    if diags.has_errors:
        assert not files
        text = diags.render()
        assert "error[" in text and "internal-error" not in text, text
        assert all(d.span.line >= 1 and d.span.col >= 1 for d in diags.items)
    else:
        assert files, diags.render()
        for name, text in files.items():
            compile(text, f"{name}.py", "exec")  # the generated module is valid Python
