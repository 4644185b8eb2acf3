#!/usr/bin/env bash
# trainlab on one NVIDIA GPU in at most 8 minutes: the Triton attention kernels' correctness on CUDA, their
# speed beside every SDPA backend (and flash-attn), a tile-configuration sweep, labs 1.4 and 1.5 on CUDA and
# the alignment benchmark. Every step is timed, a failed step is recorded and the run goes on; the numbers land
# in OUT/summary.json (scripts/gpu_results.py turns it into BENCHMARKS.md rows). The steps and flags are
# documented in benchmarks/gpu_check.py.
#
#   scripts/gpu_check.sh                 # on the GPU machine; writes to $OUT, else ./gpu_check_out
#   scripts/gpu_check.sh --dry-run       # every step on tiny shapes on the CPU (tests/test_gpu_check.py)
#
# Python: $PYTHON, else .venv/bin/python, else python3 (a GPU image's own torch is used as it is).
# A machine that cannot reach a package index: run scripts/gpu_wheels.sh where pip works; it puts the wheels
# trainlab needs and such an image lacks (pydantic, trl, datasets, ...) into .whl/, which this script installs
# into a private folder (never over the image's torch) before it starts.
set -uo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT" || exit 2
PY=${PYTHON:-}
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=$ROOT/.venv/bin/python; else PY=$(command -v python3); fi
fi
WHEELS=${GPU_WHEELS:-$ROOT/.whl}
if [ -d "$WHEELS" ] && ls "$WHEELS"/*.whl >/dev/null 2>&1 && ! "$PY" -c "import pydantic, trl, datasets" 2>/dev/null; then
  SITE=${GPU_SITE:-/tmp/trainlab_gpu_site}
  echo "gpu_check: installing $(ls "$WHEELS"/*.whl | wc -l) carried wheels into $SITE" >&2
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
    "$WHEELS"/*.whl >&2 || echo "gpu_check: installing the wheels failed; the steps that need them will fail" >&2
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
exec "$PY" "$ROOT/benchmarks/gpu_check.py" --python "$PY" "$@"
