#!/usr/bin/env bash
# The test command (README): installs and starts everything the tests need on a fresh Debian
# machine as root (Python packages, the tokenizer files, the Docker engine and sandbox image,
# bubblewrap, the vLLM CPU server), runs ruff, mypy and pytest, then stops what it started.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
log() { printf '\n== %s (%ss)\n' "$*" "$SECONDS"; }

log "system packages"
bash scripts/setup_system.sh

log "python environment"
[ -x .venv/bin/python ] || python3 -m venv .venv
# The CPU build of torch first: an unpinned resolve would pick a multi-GB CUDA build.
.venv/bin/pip install -q --disable-pip-version-check 'torch==2.13.0'
.venv/bin/pip install -q --disable-pip-version-check -e '.[test]'
export PATH="$ROOT/.venv/bin:$PATH"

log "tokenizer ranks (offline, from quicktok-v1)"
python scripts/build_o200k.py .cache/tiktoken
export TIKTOKEN_ENCODINGS_BASE="$ROOT/.cache/tiktoken"

log "sandbox: Docker engine and image"
bash scripts/setup_sandbox.sh

log "vLLM CPU server"
# shellcheck disable=SC1091
source scripts/setup_vllm.sh
trap 'stop_vllm || true' EXIT

log "ruff + mypy"
bash scripts/lint.sh

log "pytest"
# In CI nothing the suite needs may be missing: a skip for want of what this script provides fails
# (tests/_skip_policy.py), and so does a C kernel build that fails (model/kernels.py).
export GPTOSS_CI=1 CI="${CI:-1}" GPTOSS_REQUIRE_KERNELS=1
python -m pytest -q -p no:cacheprovider "$@"
log "done"
