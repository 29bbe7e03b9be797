"""Shared test set-up: Keras backend, generating and importing model modules."""

import os

# Before anything imports keras: the oracle runs Keras on torch (CPU).
os.environ.setdefault("KERAS_BACKEND", "torch")
# A generated module's first training step forks a helper that compiles
# ahead of it (templates/runtime_compile.py). Under `-n 2` both cores
# already compile, so the suite runs without it: test_compile_ahead.py
# turns it on where it checks it.
os.environ.setdefault("GEN_COMPILE_AHEAD", "0")

import importlib.util  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import uuid  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

# helper modules that assert for the tests importing them (the kernels'
# finite differences, the conformance comparisons): pytest's detailed
# messages there as well
pytest.register_assert_rewrite("fd", "conformance")

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
EXAMPLE_FILES = sorted(EXAMPLES.glob("*.py"))
GEN_TIMEOUT = 600  # seconds for one `python -m gen` run


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "conformance: generated code compared with Keras 3 (the core correctness "
        "suite; runs by default and in CI)",
    )


# Under pytest-xdist (CI runs `-n 2`), the worker's id ("gw0"), else "".
# Modules imported from shared files (generated/, the kernel modules) get it
# in their import name, which keys numba's on-disk cache: numba's cache is
# not safe for two processes writing one index at once.
WORKER = os.environ.get("PYTEST_XDIST_WORKER", "")

# Filled by the conformance tests: {what is compared: (max abs error,
# max error / tolerance)}, printed at the end of the run.
CONFORMANCE_ERRORS: dict[str, tuple[float, float]] = {}


def _merge_errors(items):
    for what, (err, ratio) in items:
        old = CONFORMANCE_ERRORS.get(what)
        if old is None or ratio > old[1]:
            CONFORMANCE_ERRORS[what] = (err, ratio)


def pytest_sessionfinish(session):
    out = getattr(session.config, "workeroutput", None)  # an xdist worker: send them to the controller
    if out is not None:
        out["conformance_errors"] = json.dumps(sorted(CONFORMANCE_ERRORS.items()))


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error):
    _merge_errors(json.loads(getattr(node, "workeroutput", {}).get("conformance_errors", "[]")))


def pytest_terminal_summary(terminalreporter):
    if CONFORMANCE_ERRORS:
        terminalreporter.section("Keras conformance: largest errors")
        for what, (err, ratio) in sorted(CONFORMANCE_ERRORS.items()):
            terminalreporter.write_line(
                f"{what:<40} max abs err {err:9.3g}   {100 * ratio:6.2f}% of tolerance")


def import_module_from_path(path, name=None):
    """Import the Python file at ``path`` as a fresh module (a unique name
    unless ``name`` is given, so same-named generated files never collide)."""
    path = Path(path)
    name = name or f"_gen_{path.stem}_{uuid.uuid4().hex[:8]}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def run_gen(model_file, outdir):
    """``python -m gen model_file -o outdir`` from the repository root."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-m", "gen", str(model_file), "-o", str(outdir)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=GEN_TIMEOUT,
    )


class GeneratedModules:
    """Generates model files once per session; fails loudly (never skips)
    when the generator fails."""

    def __init__(self, root: Path):
        self.root = root
        self._cache: dict[str, dict] = {}

    def modules(self, model_file, tag=None) -> dict:
        """{model name: imported generated module} for ``model_file``."""
        model_file = Path(model_file)
        tag = tag or model_file.stem
        golden = ROOT / "generated" / model_file.stem
        if tag not in self._cache and model_file.parent == EXAMPLES and golden.is_dir():
            # an example: its committed module (test_golden.py proves it is what gen makes
            # today), under the stable name tests/genmods.py uses, so numba compiles it
            # once per test session and its cache serves later runs
            from genmods import generated
            self._cache[tag] = {p.stem: generated(model_file.stem, p.stem) for p in sorted(golden.glob("*.py"))}
        if tag not in self._cache:
            out = self.root / tag
            proc = run_gen(model_file, out)
            if proc.returncode != 0:
                self._cache[tag] = proc
            else:
                files = sorted(p for p in out.glob("*.py") if not p.name.startswith("_"))
                prefix = re.sub(r"\W", "_", f"_gen_{tag}_")
                self._cache[tag] = {
                    p.stem: import_module_from_path(p, prefix + p.stem) for p in files
                }
        result = self._cache[tag]
        if isinstance(result, subprocess.CompletedProcess):
            pytest.fail(
                f"`python -m gen {model_file} -o ...` exited {result.returncode}\n"
                f"--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}",
                pytrace=False,
            )
        if not result:
            pytest.fail(f"gen wrote no module for {model_file}", pytrace=False)
        return result


@pytest.fixture(scope="session")
def gen_modules(tmp_path_factory):
    """A :class:`GeneratedModules` writing under a session tmp dir."""
    return GeneratedModules(tmp_path_factory.mktemp("generated"))


@pytest.fixture(scope="session")
def generated_examples(gen_modules):
    """{example stem: {model name: generated module}} for every examples/*.py."""
    return {p.stem: gen_modules.modules(p) for p in EXAMPLE_FILES}


@pytest.fixture(scope="session")
def fake_mod(tmp_path_factory):
    """The runtime tests' hand-written generated module (tests/runtime_helpers.py),
    built and compiled once per session for both test_runtime*.py files."""
    from runtime_helpers import fake_generated_module
    yield from fake_generated_module(tmp_path_factory)
