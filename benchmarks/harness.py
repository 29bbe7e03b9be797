"""What run.py and sweep.py share: the framework names they accept, the
environment of their child processes (this one without the slow-BLAS
overrides), one worker process (worker.py) run and its result read, or one kept
alive to time windows on request (Served), the
rotating order of the frameworks, and the description of the machine and of
the generated modules that goes with the results.

Used by the parent processes only: nothing here imports a framework.
"""
import json
import os
import platform
import selectors
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
WORKER = os.path.join(HERE, "worker.py")

FRAMEWORKS = ("gen", "keras-jax", "keras-torch", "torch", "torch-compile")
# opt-in diagnostic column, never an anchor: gen with NUMBA_NUM_THREADS=1 and
# OPENBLAS_NUM_THREADS=1 (shows what thread hand-offs cost on this machine)
EXTRA = ("gen-1t",)
BLAS_VARS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


def child_env(extra=None):
    """This process's environment without the slow-BLAS overrides, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if k not in BLAS_VARS}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def run_worker(spec, env, timeout):
    """Run one worker process; returns (result dict | None, error str | None, launch time)."""
    cmd = [sys.executable, WORKER, json.dumps(spec)]
    t_launch = time.time()
    try:
        p = subprocess.run(cmd, env=env, cwd=HERE, capture_output=True, text=True,
                           timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, f"timeout after {timeout}s", t_launch
    for line in reversed(p.stdout.splitlines()):
        if line.startswith("BENCH-RESULT "):
            return json.loads(line[len("BENCH-RESULT "):]), None, t_launch
    tail = (p.stderr or p.stdout).strip().splitlines()[-3:]
    return None, f"exit {p.returncode}: " + " | ".join(tail)[-400:], t_launch


class Served:
    """A worker in mode "sweep-serve": started, then asked for windows of
    timed steps (window), then stopped (stop), so several frameworks' processes
    can take turns on the same point within seconds of each other. Every read
    waits at most until `deadline` (time.time()); past it, or if the worker
    dies, the call raises RuntimeError (with the end of the worker's stderr)
    and the worker is killed."""

    def __init__(self, spec, env, deadline, cmd=None):
        self.deadline = deadline
        self.err = tempfile.TemporaryFile("w+")  # a file: a pipe nobody reads could fill
        self.p = subprocess.Popen(cmd or [sys.executable, WORKER, json.dumps(spec)], env=env,
                                  cwd=HERE, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=self.err, text=True)
        self.sel = selectors.DefaultSelector()
        self.sel.register(self.p.stdout, selectors.EVENT_READ)
        self.buf = b""  # read with os.read: a buffered reader could hold a line select() cannot see

    def _read(self, tag):
        """The JSON after the next line that starts with `tag ` (other lines
        are the framework's chatter)."""
        want = (tag + " ").encode()
        while True:
            while b"\n" in self.buf:
                line, self.buf = self.buf.split(b"\n", 1)
                if line.startswith(want):
                    return json.loads(line[len(want):])
            left = self.deadline - time.time()
            if left <= 0 or not self.sel.select(left):
                self._fail(f"no {tag} before the deadline")
            chunk = os.read(self.p.stdout.fileno(), 1 << 16)
            if not chunk:
                self._fail(f"exit {self.p.wait()} before {tag}")
            self.buf += chunk

    def _fail(self, what):
        self.kill()
        self.err.seek(0)
        tail = self.err.read().strip().splitlines()[-3:]
        raise RuntimeError(what + (": " + " | ".join(tail)[-400:] if tail else ""))

    def ready(self):
        return self._read("BENCH-READY")

    def _send(self, ask):
        try:
            self.p.stdin.write(json.dumps(ask) + "\n")
            self.p.stdin.flush()
        except OSError as err:  # the worker died: its pipe is closed
            self._fail(f"worker gone ({err})")

    def window(self, **ask):
        """One window of timed steps: ask = {"budget": s, "min_steps": n, ...}."""
        self._send(ask)
        return self._read("BENCH-WINDOW")

    def stop(self):
        self._send({"stop": True})
        res = self._read("BENCH-RESULT")
        self.p.wait()
        self.err.close()
        return res

    def kill(self):
        if self.p.poll() is None:
            self.p.kill()
            self.p.wait()


def rotate(seq, k):
    seq = list(seq)
    k %= len(seq)
    return seq[k:] + seq[:k]



def machine_info():
    cpu = platform.processor() or "?"
    try:
        txt = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        for line in txt.splitlines():
            if line.startswith("Model name:"):
                cpu = line.split(":", 1)[1].strip()
    except OSError:
        pass
    versions = {}
    for mod in ("numpy", "numba", "scipy", "keras", "torch", "jax", "jaxlib"):
        try:
            p = subprocess.run([sys.executable, "-c",
                                f"import importlib.metadata as m; print(m.version('{mod}'))"],
                               capture_output=True, text=True, env=child_env())
            versions[mod] = p.stdout.strip() or "-"
        except OSError:
            versions[mod] = "?"
    git = {}
    for key, cmd in (("commit", ["git", "rev-parse", "--short", "HEAD"]),
                     ("dirty_files", ["git", "status", "--porcelain", "--untracked-files=no"])):
        try:  # read-only queries
            p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
            git[key] = p.stdout.strip() if key == "commit" else len(p.stdout.splitlines())
        except OSError:
            git[key] = "?"
    return {"cpu": cpu, "cpus": os.cpu_count(), "python": platform.python_version(),
            "versions": versions, "kernel": platform.release(), "git": git}


def module_fingerprint(path):
    import hashlib
    with open(path, "rb") as f:
        data = f.read()
    return {"sha256": hashlib.sha256(data).hexdigest()[:16],
            "header": data.split(b"\n", 1)[0].decode(errors="replace")}
