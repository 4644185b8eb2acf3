#!/usr/bin/env bash
# Download, where pip reaches an index, the wheels trainlab needs on a GPU image that cannot reach one and
# lacks them (this workplace's CUDA image has torch, triton, transformers, accelerate, peft, pyarrow, pandas,
# but no pydantic, trl or datasets): into .whl/ for CPython 3.12 on x86-64 Linux, no dependencies resolved
# beyond this list. scripts/gpu_check.sh installs them (into a private folder, never over the image's torch)
# when it finds .whl/ and cannot import them. Keep .whl/ out of git (.git/info/exclude).
#
#   scripts/gpu_wheels.sh                  # then carry .whl with the working tree
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DEST=${1:-$ROOT/.whl}
PY=${PYTHON:-python3}
PYVER=${GPU_PYTHON_VERSION:-3.12}
PKGS=(pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.7.0 typing-inspection==0.4.2
      typing-extensions==4.16.0 trl==1.16.0 datasets==4.7.0 dill==0.4.0 multiprocess==0.70.18 xxhash==3.5.0)
mkdir -p "$DEST"
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$DEST" "${PKGS[@]}"
ls -1 "$DEST"
