"""`python -m gen model.py [more.py ...] -o generated/`"""
from __future__ import annotations

import argparse
import sys

from . import __version__, emit
from .compiler import compile_file


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m gen", description="Compile Keras functional-API model files to numba modules.")
    ap.add_argument("files", nargs="+", help="model files (Keras functional API)")
    ap.add_argument("-o", "--output", default="generated", help="output folder (default: generated/)")
    ap.add_argument("--version", action="version", version=f"gen {__version__}")
    args = ap.parse_args(argv)
    files: dict[str, str] = {}
    failed = False
    for path in args.files:
        try:
            out, diags = compile_file(path)
        except OSError as e:
            print(f"{path}: error[io]: {e.strerror}", file=sys.stderr)
            failed = True
            continue
        if diags.items:
            print(diags.render(), file=sys.stderr)
        if diags.has_errors:
            failed = True
        for name in out:
            if name in files:
                print(f"{path}: error[duplicate-output]: a model named '{name}' is already generated from another file",
                      file=sys.stderr)
                failed = True
        files.update(out)
    if failed:
        print("gen: nothing written (fix the errors above)", file=sys.stderr)
        return 2
    for p in emit.write(files, args.output):
        print(f"wrote {p}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
