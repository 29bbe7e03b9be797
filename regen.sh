#!/usr/bin/env bash
# Regenerate generated/<example>/ from examples/<example>.py (the golden copies).
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python}
for f in examples/*.py; do
  n=$(basename "$f" .py)
  rm -rf "generated/$n"
  "$PY" -m gen "$f" -o "generated/$n/"
done
