#!/usr/bin/env bash
# Create .venv and install trainlab with what it needs, on a fresh machine or an existing one.
#
# torch: a torch the user already has is kept (the venv sees it through --system-site-packages,
# or it is already in .venv). Otherwise a machine with an NVIDIA GPU gets the regular torch wheel
# (with CUDA); a machine without one gets the CPU build: `pip install torch==$TORCH_VERSION`
# (set PIP_EXTRA_INDEX_URL / PIP_FIND_LINKS to point pip at a CPU wheel if your index has none).
set -euo pipefail
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}
EXTRAS=${1:-dev}

if [ ! -x "$VENV/bin/python" ]; then
  if "$PYTHON" -c "import torch" >/dev/null 2>&1; then
    echo "setup: using the torch already installed for $PYTHON"
    "$PYTHON" -m venv --system-site-packages "$VENV"
  else
    "$PYTHON" -m venv "$VENV"
  fi
fi
PIP="$VENV/bin/python -m pip --disable-pip-version-check -q"
quiet() { { grep -v -E "^WARNING: Location" || true; }; }  # drop pip's noise about local index folders
if ! "$VENV/bin/python" -c "import torch" >/dev/null 2>&1; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    echo "setup: NVIDIA GPU found: installing torch with CUDA"
    $PIP install "torch" 2>&1 | quiet
  else
    echo "setup: no GPU: installing the CPU build of torch==$TORCH_VERSION"
    $PIP install "torch==$TORCH_VERSION" 2>&1 | quiet
  fi
fi
# Installing trainlab after torch: its `torch>=2.4` requirement is then already met, so pip
# never swaps the torch chosen above for another build.
stamp="$VENV/.trainlab-$EXTRAS-$(cat pyproject.toml | cksum | cut -d' ' -f1)"
if [ ! -f "$stamp" ]; then
  $PIP install -e ".[$EXTRAS]" 2>&1 | quiet
  "$VENV/bin/python" -c "import trainlab, torch; print('setup: trainlab', trainlab.__version__, 'torch', torch.__version__)"
  touch "$stamp"
fi
