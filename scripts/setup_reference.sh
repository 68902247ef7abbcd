#!/usr/bin/env bash
# Builds the Python 3.12 virtualenv in which benchmarks/reference_gpt_oss.py runs the reference
# `gpt_oss.torch` implementation (PyPI package gpt-oss, which requires Python >= 3.12) for the
# per-layer comparison in benchmarks/model.py. Not part of CI.
#
#   bash scripts/setup_reference.sh        # then: python benchmarks/model.py --skip-full ...
#
# The venv lives outside the repository: GPTOSS_REFERENCE_VENV (default /work/.venv-ref312).
# The interpreter comes from GPTOSS_REFERENCE_BASE_PYTHON, else pyenv's 3.12.1, else python3.12.
# gpt-oss goes in with --no-deps: gpt_oss.torch imports only torch and safetensors (numpy only
# quiets torch's warning about its absence); the package's
# other dependencies (fastapi, docker, lxml, jupyter-client, ...) serve its chat/tools/server parts.
# torch is pinned to the version of the main venv so that both sides use the same CPU kernels;
# PyPI's Linux wheel of it is the CUDA build (its nvidia-* dependencies are several GB) because
# download.pytorch.org is not reachable here. Idempotent: a finished venv is left as it is.
set -euo pipefail

venv="${GPTOSS_REFERENCE_VENV:-/work/.venv-ref312}"
spec="torch==2.13.0 safetensors==0.8.0 numpy==2.4.6 gpt-oss==0.0.9"
stamp="$venv/.gptoss-reference-installed"

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$spec" ]; then
  echo "reference venv ready: $venv/bin/python"
  exit 0
fi

base="${GPTOSS_REFERENCE_BASE_PYTHON:-}"
if [ -z "$base" ]; then
  if [ -x /root/.pyenv/versions/3.12.1/bin/python3.12 ]; then
    base=/root/.pyenv/versions/3.12.1/bin/python3.12
  elif command -v python3.12 >/dev/null; then
    base=$(command -v python3.12)
  else
    echo "no Python 3.12 found: set GPTOSS_REFERENCE_BASE_PYTHON" >&2
    exit 1
  fi
fi

[ -x "$venv/bin/python" ] || "$base" -m venv "$venv"
pip=("$venv/bin/python" -m pip install -q --disable-pip-version-check)
nice "${pip[@]}" torch==2.13.0 safetensors==0.8.0 numpy==2.4.6
nice "${pip[@]}" --no-deps gpt-oss==0.0.9
"$venv/bin/python" -c "import torch, gpt_oss.torch.model, gpt_oss.torch.weights; print('torch', torch.__version__)"
echo "$spec" >"$stamp"
echo "reference venv ready: $venv/bin/python"
