# ---------------------------------------------------------------------------
# Compiling ahead: a first pass on a cold numba cache compiles every kernel
# it calls, one after another, on one core (numba compiles under one lock,
# so threads cannot share the work): ~13-18 s for twitter.py's first
# training step on a 2-core machine. _rt_compile_ahead forks a helper
# process for the first training step (plain, and in parts) and the first
# inference pass of a process. The helper runs the pass with every kernel
# replaced by a recorder (which kernel, with which argument types; no
# kernel runs), then compiles them into numba's cache from the last to the
# first, while this process runs the pass and compiles from the first.
# Where the two meet, this process loads what the helper finished from the
# cache. The helper ends when the pass does. A pass that an earlier run finished, on a cache
# that holds that run's entries, forks none. GEN_COMPILE_AHEAD=0 turns it off.
# ---------------------------------------------------------------------------
import contextlib
import signal
import warnings

# The kinds of pass whose first call in this process may still fork the
# helper: a training step, one in parts (another set of kernels: a process
# that trained at batch 32 first compiled mlp's parts at 256 on one core),
# and predict's or evaluate's forward pass. Linux only: fork() (elsewhere it
# is not safe with threads running).
_RT_AHEAD = {"train", "train-parts", "infer"} if (sys.platform.startswith("linux") and hasattr(os, "fork")
                                   and os.environ.get("GEN_COMPILE_AHEAD", "1") != "0") else set()
_RT_IMPORTED = time.time()  # cache entries written since are this run's


def _rt_compile_ahead(kind, batch, step, *args):
    """step(*args), this process's first pass of its kind (batch: a training
    step's _Batch, else None), with the helper compiling ahead of it."""
    _RT_AHEAD.discard(kind)
    try:
        from numba.core.dispatcher import Dispatcher
        marker = _rt_ahead_marker(f"{step.__name__}-{np.dtype(step.__self__.dtype).name}", Dispatcher)
    except Exception:  # numba's internals changed
        Dispatcher, marker = None, None
    pid = _rt_fork_helper(batch, step, args, Dispatcher, marker) if marker is not None else 0
    try:
        out = step(*args)
    finally:
        if pid:  # what it has not compiled yet, this process already has
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except OSError:  # reaped already (SIGCHLD ignored)
                pass
            _rt_remove_helper_tmp(marker, pid)
    if marker is not None and not _rt_marked(marker):  # every kernel of this pass is in the cache now
        try:
            with open(marker, "w"):
                pass
        except OSError:
            pass
    return out


def _rt_ahead_marker(key, Dispatcher):
    """A file beside numba's cache of this module (named like its entries:
    the source file and the import name) whose presence says an earlier
    run finished a pass of `key` (the pass, the dtype), so the cache holds
    what it compiled; None without numba's cache."""
    for kernel in globals().values():
        if isinstance(kernel, Dispatcher):
            folder = os.path.dirname(kernel._cache._cache_file._index_path)
            stem = os.path.splitext(os.path.basename(__file__))[0]
            return os.path.join(folder, f"{stem}.{__name__}.gen-ahead-{key}")
    return None


def _rt_helper_tmp(pid):
    """The suffix of the helper's half-written cache files (numba writes
    each to a temporary name, then renames it): its own, so that the files
    of a helper killed mid-write are told from another process's."""
    return f".tmp.gen-ahead-{pid}"


def _rt_remove_helper_tmp(marker, pid):
    """Remove what helper pid left half-written beside the marker."""
    folder, suffix = os.path.dirname(marker), _rt_helper_tmp(pid)
    try:
        for name in os.listdir(folder):
            if name.endswith(suffix):
                os.unlink(os.path.join(folder, name))
    except OSError:
        pass


def _rt_marked(marker):
    """Whether marker exists and is newer than this module's source (a
    module generated again starts with a cold cache: numba's entries carry
    the source's time stamp)."""
    try:
        return os.path.getmtime(marker) >= os.path.getmtime(__file__)
    except (OSError, TypeError):
        return False


def _rt_fork_helper(batch, step, args, Dispatcher, marker):
    """Fork the helper; its pid, or 0 when there is none."""
    try:
        from numba.core.caching import IndexDataCacheFile
        if _rt_marked(marker) and not _rt_cache_cold(Dispatcher):
            return 0
        with warnings.catch_warnings():  # Python 3.12+ warns of fork() with threads running
            warnings.simplefilter("ignore", DeprecationWarning)
            pid = os.fork()
    except (ImportError, OSError):
        return 0
    if pid:
        return pid
    try:  # the helper: it never returns, whatever happens
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # no handler of the user's runs here
            signal.signal(sig, signal.SIG_DFL)
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):  # nothing printed twice, no pipe of the parent's held open
            os.dup2(null, fd)
        calls = _rt_record_step(batch, step, args, Dispatcher)[0]
        _rt_helper_compile([c for c in calls if not _rt_cached(*c)], Dispatcher, IndexDataCacheFile)
    finally:
        os._exit(0)


def _rt_cache_cold(Dispatcher):
    """Whether numba's cache holds none of this module's kernels from an
    earlier run (an entry for this source written before this module was
    imported): the module's first run, or its first since it was generated
    again, or numba's cache was emptied. A pass an earlier run finished
    (its marker) on a cache that is not cold gets no helper: a fork would
    cost this process ~0.1 s even then (its pages are copied as it writes
    them while the helper lives). Without the marker (a first training step
    after predict-only runs, a first pass in float64) it forks: the helper
    compiles what the cache lacks."""
    try:
        for kernel in globals().values():
            if isinstance(kernel, Dispatcher):
                index = kernel._cache._cache_file
                path = index._index_path
                if os.path.exists(path) and os.path.getmtime(path) < _RT_IMPORTED and index._load_index():
                    return False
        return True
    except Exception:  # numba's internals changed
        return False


def _rt_record_step(batch, step, args, Dispatcher):
    """([(kernel, argument types)] that step(*args) calls, in order, once
    each; whether the step ran to its end). No kernel runs and each returns
    0, so a training step's losses are zeroed first (the step reads them to
    check the loss is finite) and the gradients' check is skipped (0 reads
    as "a NaN at 0" to _rt_first_nonfinite). The kernels of a pass must
    not return arrays that the next call reads: the recording would stop."""
    for a in batch.loss if batch is not None else ():
        a[...] = 0
    model = step.__self__
    check = model._grads_nonfinite
    model._grads_nonfinite = lambda: check() and False
    calls, seen = [], set()

    def record(kernel, *a, **kw):
        sig = tuple(kernel.typeof_pyval(v) for v in a)
        if (kernel, sig) not in seen:
            seen.add((kernel, sig))
            calls.append((kernel, sig))
        return 0

    Dispatcher.__call__ = record
    try:
        with np.errstate(all="ignore"):  # numpy code of the step adds up buffers no kernel wrote
            step(*args)
        done = True
    except BaseException:  # a step that stopped early: compile what it called so far
        done = False
    finally:
        del Dispatcher.__call__
        del model._grads_nonfinite
    return calls, done


def _rt_cached(kernel, sig):
    """Whether numba's cache holds kernel for sig (its index lists it)."""
    try:
        cache = kernel._cache
        return cache._index_key(sig, kernel.targetctx.codegen()) in cache._cache_file._load_index()
    except Exception:  # numba's internals changed: compile it
        return False


def _rt_helper_compile(calls, Dispatcher, IndexDataCacheFile):
    """Compile calls from the last, into the cache. The helper loads nothing
    from the cache (this process may be writing it) and names its data
    files apart from this process's: numba's index is read, changed and
    written by each process, and the same file name for two signatures would
    pair one's index entry with the other's code."""
    if len(calls) < 2:
        return  # nothing this process does not start with
    for kernel in globals().values():
        if isinstance(kernel, Dispatcher) and hasattr(kernel, "_cache"):
            kernel._cache.load_overload = lambda sig, target_context: None
    first = 1000 * (1 + int.from_bytes(os.urandom(3), "little"))
    IndexDataCacheFile._data_name = lambda self, number: self._data_name_pattern.format(number=first + number)
    IndexDataCacheFile._open_for_write = _rt_helper_open_for_write
    for kernel, sig in reversed(calls[1:]):  # this process starts with the first
        try:
            kernel.compile(sig)
        except Exception:  # this process compiles it and reports the error
            pass


@contextlib.contextmanager
def _rt_helper_open_for_write(self, path):
    """numba's IndexDataCacheFile._open_for_write in the helper: the same
    write-then-rename, under a temporary name _rt_remove_helper_tmp finds
    when this process is killed mid-write."""
    tmp = path + _rt_helper_tmp(os.getpid())
    with open(tmp, "wb") as f:
        yield f
    os.replace(tmp, path)
