#!/usr/bin/env bash
# Installs libtorch for sympathy: the PyPI wheel torch==2.13.0 (the version tch 0.26
# binds) into the project-local, git-ignored venv `.venv`. Idempotent: a second run
# only checks the version and returns. Nothing is fetched from outside PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."
TORCH_VERSION=2.13.0
VENV=.venv
PY=${PYTHON:-python3}

if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "import torch, sys; sys.exit(0 if torch.__version__.split('+')[0] == '$TORCH_VERSION' else 1)" 2>/dev/null; then
    exit 0
fi
command -v "$PY" >/dev/null || { echo "error: python3 not found; install Python 3 with pip, then rerun" >&2; exit 1; }
echo "setup: installing torch==$TORCH_VERSION into $VENV (one time, about a minute)" >&2
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "torch==$TORCH_VERSION" safetensors numpy
"$VENV/bin/python" -c "import torch; print('setup: torch', torch.__version__, 'ready in $VENV')" >&2
