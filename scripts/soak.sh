#!/usr/bin/env bash
# The leak soak: N conversations (default 10,000) through one Docker
# container at 256 workers with the `script` provider (3 shell commands
# each, one of them leaving a background job), then the figures the leak
# monitor recorded: wall time, convoy FDs start/peak/end, tmux sessions
# peak/end, workspace processes at the end, RSS peak, the leak verdict.
#   scripts/soak.sh [N] [WORKERS]
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-10000}
workers=${2:-256}
cargo build --release --quiet
dir=$(mktemp -d /tmp/convoy-soak.XXXXXX)
trap 'rm -rf "$dir"' EXIT
python3 - "$dir" "$n" <<'PY'
import json, sys
d, n = sys.argv[1], int(sys.argv[2])
with open(f"{d}/tasks.jsonl", "w") as f:
    for i in range(n):
        f.write(json.dumps({"id": f"s{i}", "answer": "ok", "commands": [
            f"export N={i}; cd /tmp && sleep 1000 & echo $N",
            "ls /proc | wc -l > /dev/null; echo $N",
            "cat /etc/hostname",
        ]}) + "\n")
PY
cat > "$dir/job.toml" <<TOML
name = "soak"
[tasks]
source = "tasks.jsonl"
id = "{{ id }}"
[prompt]
user = "go"
[llm]
provider = "script"
[workspace]
kind = "docker"
nofile = 65536
[run]
workers = $workers
[monitor]
interval = "2s"
TOML
start=$(date +%s.%N)
target/release/convoy run "$dir/job.toml" --out "$dir/out" 2>"$dir/stderr" | tail -n 8
end=$(date +%s.%N)
python3 - "$dir/out/summary.json" "$start" "$end" "$n" "$workers" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
m = s["metrics"]
print()
print("| measure | value |")
print("|---|---:|")
print(f"| conversations | {s['done']} ({s['counts']}) at workers {sys.argv[5]} |")
print(f"| wall time | {float(sys.argv[3]) - float(sys.argv[2]):.1f} s ({s['conversations_per_s']:.1f} conversations/s) |")
print(f"| convoy open FDs start / peak / end | {m['open_fds_start']} / {m['open_fds_peak']} / {m['open_fds_end']} |")
print(f"| tmux sessions peak / end | {m['tmux_sessions_peak']} / {m['tmux_sessions_end']} |")
print(f"| workspace processes peak / end | {m['workspace_procs_peak']} / {m['workspace_procs_end']} |")
print(f"| convoy RSS peak | {m['rss_bytes_peak'] / 1048576:.1f} MB |")
print(f"| leak verdict | {s['leaks']['verdict']} (findings: {len(s['leaks']['findings'])}, reaped {s['leaks']['reaped']}, stray sessions {len(s['leaks']['stray_sessions'])}, stray processes {len(s['leaks']['stray_processes'])}) |")
PY
