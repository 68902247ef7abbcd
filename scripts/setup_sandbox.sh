#!/usr/bin/env bash
# Starts the Docker engine (when none answers) and builds the sandbox image (when it is missing),
# registry-free: a Debian root filesystem from debootstrap, imported with `docker import`. The same
# root filesystem is what the bubblewrap backend runs. Idempotent, and a few seconds when the
# engine runs and the image exists. The engine is left running (log: /tmp/dockerd.log).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=python3
[ -x .venv/bin/python ] && PY=.venv/bin/python

engine_up() { timeout 10 docker info >/dev/null 2>&1; }

wait_engine() {
  for _ in $(seq 60); do
    engine_up && return 0
    sleep 1
  done
  return 1
}

# Docker's --init needs docker-init (Debian: tini, a recommended package of docker.io).
if ! command -v docker-init >/dev/null 2>&1 && ! dpkg -s tini >/dev/null 2>&1; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends tini >/dev/null || true
fi

if ! engine_up; then
  command -v dockerd >/dev/null || { echo "dockerd is missing: run scripts/setup_system.sh" >&2; exit 1; }
  echo "starting dockerd (log: /tmp/dockerd.log)"
  setsid nohup dockerd >/tmp/dockerd.log 2>&1 </dev/null &
  pid=$!
  if ! wait_engine; then
    # Kernels or filesystems without overlayfs: the slow but universal vfs driver.
    echo "dockerd did not come up; retrying with --storage-driver=vfs" >&2
    tail -20 /tmp/dockerd.log >&2 || true
    kill "$pid" 2>/dev/null || true
    sleep 2
    setsid nohup dockerd --storage-driver=vfs >/tmp/dockerd.log 2>&1 </dev/null &
    wait_engine || { tail -50 /tmp/dockerd.log >&2; exit 1; }
  fi
fi
echo "docker engine: $(docker info --format '{{.ServerVersion}}, storage {{.Driver}}' | tr -d '\n')"

# Builds only what is missing (the root filesystem and its downloads are cached under
# ~/.cache/gptoss-agent/sandbox, or $GPTOSS_SANDBOX_CACHE).
"$PY" -m gptoss_agent.sandbox build-image
