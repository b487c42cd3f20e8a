#!/usr/bin/env bash
# Integration tests of the SGLang plugin inside real SGLang 0.5.23 on CPU.
#
# Creates (once per recipe) a venv under ${DIT_CACHE_CI_DIR:-$HOME/.cache/dit-cache-ci}/sgl-<hash of the recipe files>,
# installing SGLang with --no-deps plus the pinned requirements, the torchvision CPU shim
# (ci/tvshim) and this package without touching torch; builds the tiny Flux model; runs
# pytest -q tests/integration/sglang. Needs no stdin; ~2 min install on a fresh machine, then
# ~10 s to reuse the venv. Extra arguments go to pytest.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
export HF_HUB_OFFLINE=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1

RECIPE=(ci/sglang/requirements.txt ci/sglang/constraints.txt ci/sglang/run.sh ci/tvshim/_tv_cpu_shim.py ci/tvshim/_tv_cpu_shim.pth)
KEY=$(cat "${RECIPE[@]}" | sha256sum | cut -c1-12)
VENV="${DIT_CACHE_CI_DIR:-$HOME/.cache/dit-cache-ci}/sgl-$KEY"
PY="$VENV/bin/python"
SMOKE="import sglang.multimodal_gen.runtime.pipelines_core.stages.denoising, pytest"

if ! "$PY" -c "$SMOKE" >/dev/null 2>&1; then
    echo "[ci/sglang] building $VENV"
    start=$SECONDS
    rm -rf "$VENV"
    mkdir -p "$(dirname "$VENV")"
    python3 -m venv "$VENV"
    # The constraints keep the CPU torch: an unpinned resolve pulls CUDA torch + ~3 GB of nvidia-*.
    "$VENV/bin/pip" install -q torch==2.13.0 -c ci/sglang/constraints.txt
    "$VENV/bin/pip" install -q --no-deps sglang==0.5.23
    "$VENV/bin/pip" install -q -r ci/sglang/requirements.txt -c ci/sglang/constraints.txt
    SITE=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    cp ci/tvshim/_tv_cpu_shim.py ci/tvshim/_tv_cpu_shim.pth "$SITE/"
    "$PY" -c "$SMOKE"
    echo "[ci/sglang] venv ready in $((SECONDS - start)) s"
fi

# Our package: editable, no deps (torch, diffusers and pyyaml come from the recipe above). Through the
# interpreter, not bin/pip: a copied venv's scripts still point at the interpreter they were built with.
"$PY" -m pip install -q --no-deps -e "$ROOT"

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
export TINY_FLUX="$WORK/tiny-flux"
"$PY" tests/integration/build_tiny_flux.py "$TINY_FLUX" >/dev/null 2>&1

"$PY" -m pytest -q tests/integration/sglang -p no:cacheprovider "$@"
