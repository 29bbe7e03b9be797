import concurrent.futures
import math
import os
import sys
import time

import numpy as np
import numba
from llvmlite import binding as llvm_binding
from llvmlite import ir as llvm_ir
from numba import prange, types
from numba.core import cgutils
from numba.extending import intrinsic


def _cache_by_import_name():
    """numba's on-disk cache records the module's import name and imports it
    again when it loads an entry, so one file imported under two names (a
    script here, a package module there) would load entries it cannot use.
    Key this module's cache entries by its import name; if numba's internals
    differ from what this expects, do without the cache."""
    from numba.core import caching
    impl = getattr(caching, "CacheImpl", None) or getattr(caching, "_CacheImpl", None)  # public from numba 0.61
    base = getattr(caching, "InTreeCacheLocator", None) or getattr(caching, "_InTreeCacheLocator", None)
    if impl is None or base is None or not isinstance(getattr(impl, "_locator_classes", None), list):
        return False
    module_globals = globals()

    class Locator(base):
        @classmethod
        def from_function(cls, py_func, py_file):
            if getattr(py_func, "__globals__", None) is not module_globals:
                return None
            return super().from_function(py_func, py_file)

        def get_disambiguator(self):
            return f"{self._lineno}.{__name__}"

    Locator._gen_no_refresh = True
    impl._locator_classes.insert(0, Locator)
    _load_without_refresh(caching)
    return True


def _load_without_refresh(caching):
    """Before numba loads a cached kernel it refreshes its whole compiler
    context (62 more modules, the lowering of every numpy function) and
    compiles its runtime's (NRT's) LLVM functions, which touches 19 MB of
    LLVM's code. Loading needs neither: every cached object carries its own
    copy of those functions (numba links them into each kernel), and only
    the runtime's C entry points must be known to the linker. For this
    module's kernels (their locator says so) load with just that: mlp's
    steady-run peak RSS 178 -> 149 MB, warm import-to-fit 0.29 -> 0.22 s.
    A cache miss compiles, and compiling does the full set-up first. Other
    numba code in the process, internals other than expected, or any
    error on this path: numba's own path."""
    cache = getattr(caching, "Cache", None)
    own = getattr(cache, "load_overload", None)
    if own is None or getattr(own, "_gen_no_refresh", False):
        return  # not numba's layout, or another generated module did this
    if not all(hasattr(cache, a) for a in ("_load_overload", "_guard_against_spurious_io_errors")):
        return
    try:
        import llvmlite.binding as ll
        from numba.core.runtime import _nrt_python, rtsys
        helpers = dict(_nrt_python.c_helpers)
    except (ImportError, AttributeError, TypeError):
        return
    if getattr(rtsys, "_init", None) is not False:
        return
    linked = []

    def load_overload(self, sig, target_context):
        locator = getattr(getattr(self, "_impl", None), "locator", None)
        if not getattr(locator, "_gen_no_refresh", False) or rtsys._init:
            return own(self, sig, target_context)
        try:
            if not linked:  # what numba's runtime set-up tells the linker first
                for name, address in helpers.items():
                    ll.add_symbol(name if name.startswith("_") else "NRT_" + name, address)
                linked.append(True)
            with self._guard_against_spurious_io_errors():
                return self._load_overload(sig, target_context)
        except Exception:
            return own(self, sig, target_context)

    load_overload._gen_no_refresh = True
    cache.load_overload = load_overload


_CACHE = __name__ in sys.modules and _cache_by_import_name()

# numba's parallel kernels run on its OpenMP layer: it starts a parallel
# region in ~1 us, the workqueue layer in ~80 us (twitter batch 32: 5,450
# against 4,450 samples/s). Its threads must sleep after a region, not spin
# (GNU OpenMP spins ~0.3 ms by default): spinning, they take the cores
# OpenBLAS's threads need next (a training step measured 4x slower). Without
# OpenMP numba falls back to tbb, then workqueue. A user's choice wins, and
# the wait policy reaches only OpenMP runtimes loaded after this line.
if "NUMBA_THREADING_LAYER" not in os.environ and "NUMBA_THREADING_LAYER_PRIORITY" not in os.environ:
    numba.config.THREADING_LAYER = "default"
    numba.config.THREADING_LAYER_PRIORITY = ["omp", "tbb", "workqueue"]
_RT_USER_OMP = "OMP_WAIT_POLICY" in os.environ or "GOMP_SPINCOUNT" in os.environ
os.environ.setdefault("OMP_WAIT_POLICY", "passive")


def _omp_spin_between_regions():
    """Called by a module with owned-rows training steps (dense.py): those
    start three regions ~20-40 us apart, and a thread that slept since the
    last one wakes late (mlp.py at batch 32: ~280 against ~103 us a step).
    GNU OpenMP's GOMP_SPINCOUNT=5000 (~50 us of spinning; it takes
    precedence over the wait policy) covers those gaps. Not for every
    module: spinning that long cost twitter.py's training 4-5%. Only if the
    user set neither variable and numba has not started its threads yet
    (OpenMP reads them then)."""
    if not _RT_USER_OMP and not getattr(numba.np.ufunc.parallel, "_is_initialized", True):
        os.environ.setdefault("GOMP_SPINCOUNT", "5000")


# After a product, OpenBLAS's threads spin for 2^28 cycles (~0.1 s) by
# default before they sleep, and take the core the next parallel kernel
# needs (twitter batch 256: 6,100 samples/s against 7,300). Sleeping after
# 2^12 cycles instead makes every small product wake them (mlp batch 32:
# 245k against 345k samples/s). 2^20 cycles (~0.4 ms at a 2.6 GHz time-stamp
# counter) keeps them awake within a step. A parallel kernel started in that
# window loses about the spin time left, but 2^16-2^19 cost as much elsewhere
# (benchmarks/README.md). numba loads its BLAS (scipy's) on first use, after
# this line; a user's setting wins.
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "20")


def _scipy_folder():
    """The folder of the installed scipy package (not imported), or None."""
    import importlib.util
    spec = importlib.util.find_spec("scipy")
    if spec is None or not spec.submodule_search_locations:
        return None
    return list(spec.submodule_search_locations)[0]


def _load_cython_blas_alone():
    """numba calls BLAS through the function table of scipy.linalg.cython_blas,
    and a plain import of that runs all of scipy.linalg first: 14 MB more
    resident memory and ~90 ms for code this module never calls (mlp's
    steady-run peak RSS 188 -> 177 MB). Load the one extension module by itself under its own
    name, where numba's import finds it. A later `import scipy.linalg` works
    as before, `from scipy.linalg import cython_blas` too; only the attribute
    scipy.linalg.cython_blas stays unset. Anything unexpected: leave the
    import to numba."""
    name = "scipy.linalg.cython_blas"
    if name in sys.modules or "scipy.linalg" in sys.modules:
        return
    try:
        import importlib.machinery
        import importlib.util
        root = _scipy_folder()
        if root is None:
            return
        folder = os.path.join(root, "linalg")
        for suffix in importlib.machinery.EXTENSION_SUFFIXES:
            path = os.path.join(folder, "cython_blas" + suffix)
            if os.path.exists(path):
                spec = importlib.util.spec_from_file_location(name, path)
                module = importlib.util.module_from_spec(spec)
                sys.modules[name] = module
                spec.loader.exec_module(module)
                return
    except Exception:
        sys.modules.pop(name, None)


_load_cython_blas_alone()

_OPENBLAS = []  # once looked up: [(set_num_threads, get_num_threads)] of scipy's OpenBLAS, or [None]


def _scipy_openblas():
    """The thread-count functions of the OpenBLAS bundled with scipy's wheels
    (the BLAS numba's np.dot calls), through ctypes; None for any other BLAS
    (Accelerate, MKL, a system OpenBLAS: then nothing is changed)."""
    if not _OPENBLAS:
        try:
            _OPENBLAS.append(_find_scipy_openblas())
        except Exception:
            _OPENBLAS.append(None)
    return _OPENBLAS[0]


def _find_scipy_openblas():
    import ctypes
    import glob
    root = _scipy_folder()
    if root is None:
        return None
    for path in sorted(glob.glob(os.path.join(root + ".libs", "*openblas*"))
                       + glob.glob(os.path.join(root, ".dylibs", "*openblas*"))):
        lib = ctypes.CDLL(path)
        for prefix in ("scipy_openblas", "openblas"):
            set_n = getattr(lib, prefix + "_set_num_threads", None)
            get_n = getattr(lib, prefix + "_get_num_threads", None)
            if set_n is not None and get_n is not None:
                set_n.argtypes, get_n.restype = [ctypes.c_int], ctypes.c_int
                return set_n, get_n
    return None


def _blas_one_thread(fn, *args):
    """fn(*args) with OpenBLAS on one thread, for a product that a parallel
    kernel follows at once: OpenBLAS's second thread would spin there for
    its timeout (see OPENBLAS_THREAD_TIMEOUT above), taking a core from
    that kernel."""
    f = _scipy_openblas()
    n = f[1]() if f is not None else 1
    if n <= 1:
        return fn(*args)
    f[0](1)
    try:
        return fn(*args)
    finally:
        f[0](n)


# The LSTM's blocks, the embedded LSTM's row copies and projections, and the
# row-sparse optimizer updates split their rows over the threads on Python
# threads of one pool, not in a numba parallel region: each such kernel
# releases the GIL (nogil) and takes its range as arguments, so one compiled
# function serves every split. A region around a kernel compiles it a second
# time, with numba's parfor passes on top (twitter.py's first training step:
# the LSTM blocks 3.3 s more on a cold cache; the row copies and RMSprop
# rows 0.6 and 0.9 s against 0.1 and 0.4 s for the kernels alone), and one
# hand-off costs about what a region's start does.
_RANGE_POOL = []  # (executor, its threads) of _in_ranges, made at first use
if hasattr(os, "register_at_fork"):  # a forked child has none of the pool's threads
    os.register_at_fork(after_in_child=_RANGE_POOL.clear)


def _range_threads(work, minimum):
    """Ranges for _in_ranges: numba's thread count from `minimum` units of
    work, else 1 (below, a hand-off costs more than it saves)."""
    return numba.get_num_threads() if work >= minimum else 1


def _in_ranges(kernel, Q, n, *args):
    """kernel(lo, hi, *args) over Q ranges of range(n) at once: the first on
    this thread, the others on _RANGE_POOL's (kernel releases the GIL)."""
    if Q <= 1:
        kernel(0, n, *args)
        return
    if not _RANGE_POOL or _RANGE_POOL[0][1] < Q - 1:  # none yet, or numba's thread count went up
        if _RANGE_POOL:
            _RANGE_POOL.pop()[0].shutdown(wait=False)
        _RANGE_POOL.append((concurrent.futures.ThreadPoolExecutor(Q - 1, "gen-range"), Q - 1))
    pool = _RANGE_POOL[0][0]
    others = [pool.submit(kernel, q * n // Q, (q + 1) * n // Q, *args) for q in range(1, Q)]
    kernel(0, n // Q, *args)
    for f in others:
        f.result()


def njit(*args, **kwargs):
    """numba.njit with the on-disk cache on, so a second process skips compiling,
    and numpy's error model: x / 0 gives inf or nan as in numpy instead of a
    zero check per division, which keeps loops that divide vectorizable."""
    kwargs.setdefault("cache", _CACHE)
    kwargs.setdefault("error_model", "numpy")
    return numba.njit(*args, **kwargs)


# The smallest normal numbers. On Intel cores an operation on a subnormal
# value takes a microcode assist of ~100 cycles, so values below these are
# stored as zero where they would stick (optimizer state, optimizers.py), as
# XLA (Keras on JAX) flushes them everywhere. An LSTM's gradients, which
# shrink step after step, have a higher floor (lstm.py: _lstm_grad_floor).
_TINY32 = np.float32(np.finfo(np.float32).tiny)
_TINY64 = np.float64(np.finfo(np.float64).tiny)


@njit(inline="always")
def _normal_floor(a):
    """The smallest normal number of a's dtype."""
    return a.dtype.type(_TINY32) if a.itemsize == 4 else a.dtype.type(_TINY64)


@intrinsic
def _take_next(typingctx, counter):
    """counter[0] += 1 as one atomic operation (LLVM's atomicrmw add, seq_cst);
    returns the value before. Threads of one parallel region hand out chunks
    of work with it: each chunk goes to exactly one thread."""
    sig = types.int64(counter)

    def codegen(context, builder, signature, args):
        ary = context.make_array(signature.args[0])(context, builder, args[0])
        zero = context.get_constant(types.intp, 0)
        ptr = cgutils.get_item_pointer(context, builder, signature.args[0], ary, [zero])
        return builder.atomic_rmw("add", ptr, context.get_constant(types.int64, 1), "seq_cst")
    return sig, codegen
