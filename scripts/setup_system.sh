#!/usr/bin/env bash
# Debian packages the tests need: python3-venv (a fresh Debian's python3 has no venv module), the
# Docker engine, bubblewrap, debootstrap (the registry-free sandbox image), a C compiler (the CPU
# kernels of the local model) and curl (vLLM readiness).
set -euo pipefail
need=()
for pkg in python3-venv docker.io tini bubblewrap debootstrap gcc libc6-dev curl; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
