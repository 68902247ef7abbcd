#!/usr/bin/env bash
# ruff and mypy on the package. mypy sees the installed layout through a tree of symlinks,
# because setuptools' package-dir mapping (gptoss_agent.agent -> agent/) is invisible to it.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -d .venv/bin ] && export PATH="$PWD/.venv/bin:$PATH"
mkdir -p .cache/typecheck/gptoss_agent
for d in agent tools model sandbox server; do ln -sfn "../../../$d" ".cache/typecheck/gptoss_agent/$d"; done
ruff check .
MYPYPATH=.cache/typecheck mypy -p gptoss_agent.agent -p gptoss_agent.tools -p gptoss_agent.model -p gptoss_agent.sandbox -p gptoss_agent.server
