"""Load kernel template files as a module, exactly as a generated module sees them.

The generated module is: prelude + templates/kernels/<kind>.py (verbatim) + ...
`load_kernels("dense", "losses")` exec's the same prelude and those files into
a fresh module object.  The combined source is written to a real file (under
the system temp dir, rewritten only when it changes) because numba's
`cache=True` needs a source file to key its on-disk cache.
"""

import hashlib
import os
import sys
import tempfile
import types

from conftest import WORKER
from gen.lower import KERNEL_ORDER, kernel_flags

# GEN_KERNEL_DIR lets a mutation check point the tests at an edited copy.
KERNEL_DIR = os.environ.get("GEN_KERNEL_DIR") or os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "templates", "kernels")

KINDS = KERNEL_ORDER  # every kernel file, in a generated module's order

# the generated modules' own prelude: njit (numpy's error model, cache) and
# the threading choices, exactly as a generated module has them
with open(os.path.join(os.path.dirname(KERNEL_DIR), "prelude.py")) as _f:
    PRELUDE = _f.read()
# ... and the constants a generated module sets from its layers, with every
# branch on (kernel tests call every activation)
PRELUDE += "\n" + "".join(f"{name} = {value}\n" for name, value, _ in kernel_flags())

_loaded = {}


def kernel_source(kind):
    with open(os.path.join(KERNEL_DIR, kind + ".py")) as f:
        return f.read()


def load_kernels(*kinds):
    """Return a fresh module holding the prelude plus the named kernel files."""
    kinds = kinds or KINDS
    text = PRELUDE + "".join("\n\n" + kernel_source(k) for k in kinds)
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    if digest in _loaded:
        return _loaded[digest]
    cache_dir = os.path.join(tempfile.gettempdir(), "gen_kernelmod")
    os.makedirs(cache_dir, exist_ok=True)
    name = "gen_kernels_" + digest + WORKER  # see conftest.WORKER
    path = os.path.join(cache_dir, name + ".py")
    old = None
    if os.path.exists(path):
        with open(path) as f:
            old = f.read()
    if old != text:  # keep the mtime (numba's cache key) when unchanged
        tmp = path + ".%d.tmp" % os.getpid()
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    mod = types.ModuleType(name)
    mod.__file__ = path
    sys.modules[name] = mod
    exec(compile(text, path, "exec"), mod.__dict__)
    _loaded[digest] = mod
    return mod
