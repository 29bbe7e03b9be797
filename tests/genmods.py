"""The committed generated modules (tests/test_golden.py keeps them fresh),
imported under stable names so numba's cache serves every later run, and
random data that fits a model's inputs and losses."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from conftest import WORKER, import_module_from_path

ROOT = Path(__file__).resolve().parents[1]
GENERATED = ROOT / "generated"


def generated(example: str, model: str):
    name = f"generated_{example}_{model}{WORKER}"
    if name in sys.modules:
        return sys.modules[name]
    return import_module_from_path(GENERATED / example / f"{model}.py", name)


def all_generated() -> list[tuple[str, str]]:
    return sorted((p.parent.name, p.stem) for p in GENERATED.glob("*/*.py"))


def random_data(M, n: int, rng, dtype=np.float32):
    """Inputs for every input of M and a target for every output's loss."""
    xs = [rng.integers(0, bound, (n, *shape)) if kind == "int" else rng.normal(size=(n, *shape)).astype(dtype)
          for _, shape, kind, bound in M._inputs]
    ys = []
    for _, shape, loss, _, _ in M._outputs:
        if loss == "sparse_categorical_crossentropy":
            ys.append(rng.integers(0, shape[-1], (n, *shape[:-1])))
        elif loss == "categorical_crossentropy":
            ys.append(np.eye(shape[-1], dtype=dtype)[rng.integers(0, shape[-1], (n, *shape[:-1]))])
        elif loss == "binary_crossentropy":
            ys.append(rng.integers(0, 2, (n, *shape)).astype(dtype))
        else:
            ys.append(rng.normal(size=(n, *shape)).astype(dtype))
    return xs, ys


def _code_names(code) -> set[str]:
    """The global names a function's code (and the code nested in it) reads."""
    names = set(code.co_names)
    for c in code.co_consts:
        if hasattr(c, "co_names"):
            names |= _code_names(c)
    return names


def _syntax(f) -> str:
    """A function's syntax tree, without its comments and line numbers."""
    import ast
    import inspect
    import textwrap

    return ast.dump(ast.parse(textwrap.dedent(inspect.getsource(f))))


def _same_value(a, b) -> bool:
    if a is b:
        return True
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return (isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and a.dtype == b.dtype
                and np.array_equal(a, b))
    try:
        return type(a) is type(b) and bool(a == b)
    except Exception:  # noqa: BLE001 - a value that cannot say: not the same
        return False


def share_kernels(mod, base) -> set[str]:
    """Point ``mod``'s numba kernels at ``base``'s compiled ones where both
    are the same code: the same source, reading equal module constants and
    kernels that are shared too. Returns the names shared.

    An optimizer variant of an example (test_keras_conformance_examples.py) is the
    example's module with another optimizer table: its kernels are the
    committed module's but for comments that name the variant's file, and
    compiling them once more per variant cost CI ~15 s a variant. What the variant changes (its
    optimizer's kernels, its Python code) still runs from ``mod``."""
    from numba.core.dispatcher import Dispatcher
    from numba.core.extending import _Intrinsic

    def code(v):  # a kernel's or intrinsic's Python function, else None
        return v.py_func if isinstance(v, Dispatcher) else v._defn if isinstance(v, _Intrinsic) else None

    mine, theirs = vars(mod), vars(base)
    able = {}
    for name, k in mine.items():
        a, b = code(k), code(theirs.get(name))
        if a is not None and b is not None and _syntax(a) == _syntax(b):
            if _same_value(a.__defaults__, b.__defaults__):
                able[name] = _code_names(a.__code__)
    changed = True
    while changed:  # drop kernels that read a constant that differs or a kernel not shared
        changed = False
        for name, reads in list(able.items()):
            for g in reads:
                if g not in mine and g not in theirs:
                    continue  # a builtin
                a, b = mine.get(g), theirs.get(g)
                if code(a) is not None or code(b) is not None:
                    ok = g in able
                else:
                    ok = _same_value(a, b)
                if not ok:
                    del able[name]
                    changed = True
                    break

    to = {id(mine[name]): theirs[name] for name in able}

    def swap(v):
        if code(v) is not None:
            return to.get(id(v), v)
        if isinstance(v, tuple):
            return tuple(swap(x) for x in v)
        if isinstance(v, dict):  # in place: code may hold the dict itself
            for k, x in v.items():
                v[k] = swap(x)
        return v

    for g, v in list(mine.items()):
        if (code(v) is not None or isinstance(v, (tuple, dict))) and not g.startswith("__"):
            mine[g] = swap(v)
    return set(able)
