# ---------------------------------------------------------------------------
# Compiling ahead: a first step on a cold numba cache compiles every kernel
# it calls, one after another, on one core (numba compiles under one lock,
# so threads cannot share the work): ~13-18 s for twitter.py's first
# training step on a 2-core machine. _rt_compile_ahead forks a helper
# process for that step. The helper runs the step with every kernel
# replaced by a recorder (which kernel, with which argument types; no kernel
# runs), then compiles them into numba's cache from the last to the first,
# while this process runs the step and compiles from the first. Where the
# two meet, this process loads what the helper finished from the cache.
# The helper ends when the step does, and exits at once if the cache holds
# every kernel it recorded. GEN_COMPILE_AHEAD=0 turns it off.
# ---------------------------------------------------------------------------
import signal
import warnings

# Training steps only: a forward pass's kernels return arrays that the
# next kernel reads, which a recorder cannot give (twitter.py's predict
# stopped at its first kernel), and mlp.py's is one kernel. Linux only:
# fork() (elsewhere it is not safe with threads running).
_RT_AHEAD = [sys.platform.startswith("linux") and hasattr(os, "fork")
             and os.environ.get("GEN_COMPILE_AHEAD", "1") != "0"]


def _rt_compile_ahead(batch, step, *args):
    """step(*args), this process's first training step (batch: its
    _Batch), with the helper compiling ahead of it."""
    _RT_AHEAD[0] = False
    pid = _rt_fork_helper(batch, step, args)
    try:
        return step(*args)
    finally:
        if pid:  # what it has not compiled yet, this process already has
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except OSError:  # reaped already (SIGCHLD ignored)
                pass


def _rt_fork_helper(batch, step, args):
    """Fork the helper; its pid, or 0 when there is none."""
    try:
        from numba.core.caching import IndexDataCacheFile
        from numba.core.dispatcher import Dispatcher
        if not _rt_cache_cold(Dispatcher):
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
    """Whether numba's cache holds none of this module's kernels but those
    this process compiled (the data checks before the first step): the
    module's first run, or its first since it was generated again.
    Otherwise no helper: a fork would cost this process ~0.1 s even then
    (its pages are copied as it writes them while the helper lives)."""
    try:
        for kernel in globals().values():
            if isinstance(kernel, Dispatcher) and not kernel.stats.cache_misses:
                index = kernel._cache._cache_file
                if os.path.exists(index._index_path) and index._load_index():
                    return False  # an entry from an earlier run (its source stamp matches)
        return True
    except Exception:  # numba's internals changed
        return False


def _rt_record_step(batch, step, args, Dispatcher):
    """([(kernel, argument types)] that step(*args) calls, in order, once
    each; whether the step ran to its end). No kernel runs, so the batch's
    losses are zeroed first (the step reads them to check the loss is
    finite) and the gradients' check is skipped (the recorder's 0 reads as
    "a NaN at 0" to _rt_first_nonfinite)."""
    for a in batch.loss:
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
    if not calls:
        return  # a warm cache: this process loads the step as fast
    for kernel in globals().values():
        if isinstance(kernel, Dispatcher) and hasattr(kernel, "_cache"):
            kernel._cache.load_overload = lambda sig, target_context: None
    first = 1000 * (1 + int.from_bytes(os.urandom(3), "little"))
    IndexDataCacheFile._data_name = lambda self, number: self._data_name_pattern.format(number=first + number)
    for kernel, sig in reversed(calls):
        try:
            kernel.compile(sig)
        except Exception:  # this process compiles it and reports the error
            pass
