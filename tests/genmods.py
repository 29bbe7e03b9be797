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
