# Sourced by scripts/test.sh: starts the vLLM CPU server and defines stop_vllm (filled in by the remote-engine work).
stop_vllm() { :; }
