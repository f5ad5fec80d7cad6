#!/usr/bin/env bash
# Installs libtorch for sympathy: the PyPI wheel torch==2.13.0 (the version tch 0.26
# binds) into the project-local, git-ignored venv `.venv`. Idempotent: a second run
# only checks what is there and returns. Nothing is fetched from outside PyPI.
#
#   scripts/setup_libtorch.sh          what the binary needs
#   scripts/setup_libtorch.sh --full   also what Python's `import torch` needs
#
# The wheel depends on ~2.7 GB of CUDA libraries. The binary, on a machine without an
# NVIDIA driver, loads only libtorch's CPU library, which needs two of them (the CUDA
# runtime and CUPTI, as `ldd libtorch_cpu.so` shows). So without a driver (no
# `nvidia-smi`, no /dev/nvidiactl) the default install is the wheel without its
# dependencies plus those two wheels and torch's pure-Python requirements: ~1.3 GB.
# Python's `import torch` loads libtorch's CUDA library too (through libtorch.so), and
# so needs every CUDA wheel: `--full` (what `make test` and `make fixtures` ask for, and
# the default on a machine with a driver) installs the wheel with all of them, ~4.8 GB.
set -euo pipefail
cd "$(dirname "$0")/.."
TORCH_VERSION=2.13.0
# The versions torch 2.13.0's cuda-toolkit==13.0.3 pins for these two.
CPU_CUDA_WHEELS=("nvidia-cuda-runtime==13.0.96.*" "nvidia-cuda-cupti==13.0.85.*")
VENV=.venv
PY=${PYTHON:-python3}
PIP=("$VENV/bin/python" -m pip install --quiet --disable-pip-version-check)

full=0
if [ "${1:-}" = --full ] || command -v nvidia-smi >/dev/null 2>&1 || [ -e /dev/nvidiactl ]; then
    full=1
fi

have_torch() {
    [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "import importlib.metadata as m, sys; sys.exit(0 if m.version('torch').split('+')[0] == '$TORCH_VERSION' else 1)" 2>/dev/null
}
python_imports_torch() {
    "$VENV/bin/python" -c "import torch" 2>/dev/null
}

if have_torch && { [ "$full" = 0 ] || python_imports_torch; }; then
    exit 0
fi
command -v "$PY" >/dev/null || { echo "error: python3 not found; install Python 3 with pip, then rerun" >&2; exit 1; }
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"

if [ "$full" = 1 ]; then
    echo "setup: installing torch==$TORCH_VERSION with its CUDA libraries into $VENV (one time, about a minute, 4.8 GB)" >&2
    "${PIP[@]}" "torch==$TORCH_VERSION" safetensors numpy
    "$VENV/bin/python" -c "import torch; print('setup: torch', torch.__version__, 'ready in $VENV')" >&2
    exit 0
fi

echo "setup: no NVIDIA driver; installing torch==$TORCH_VERSION for the CPU into $VENV (one time, about a minute, 1.3 GB)" >&2
"${PIP[@]}" --no-deps "torch==$TORCH_VERSION"
# torch's own requirements without the CUDA ones (cuda-toolkit, cuda-bindings,
# nvidia-*) and triton; pip evaluates the markers that remain.
mapfile -t deps < <("$VENV/bin/python" - <<'PY'
import importlib.metadata as md
import re
for req in md.requires("torch") or []:
    name = re.split(r"[ ;<>=!~\[]", req, maxsplit=1)[0].lower()
    if "extra ==" in req or name.startswith(("nvidia-", "cuda-")) or name == "triton":
        continue
    print(req)
PY
)
# pip then lists the CUDA requirements it did not install as "conflicts": that is the
# point of this install, so those lines are filtered out.
"${PIP[@]}" "${deps[@]}" "${CPU_CUDA_WHEELS[@]}" safetensors numpy 2> >(grep -v -e "which is not installed" -e "dependency resolver does not" >&2)
echo "setup: torch $TORCH_VERSION (CPU libraries) ready in $VENV; \`scripts/setup_libtorch.sh --full\` adds what Python's \`import torch\` needs" >&2
