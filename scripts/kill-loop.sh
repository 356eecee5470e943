#!/usr/bin/env bash
# The crash drill: a real job (N scripted conversations in one Docker
# container, workers 64) is killed with SIGKILL at random moments K times,
# then run to the end. After every run it checks that each results line is
# valid and no task is recorded twice; at the end, that every task is done
# exactly once. Each kill orphans the job's container, which the next run
# sweeps when it starts. Prints the figures for the README.
#   scripts/kill-loop.sh [N] [K]
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-2000}
kills=${2:-10}
cargo build --release --quiet
bin=$PWD/target/release/convoy
dir=$(mktemp -d /tmp/convoy-kill.XXXXXX)
trap 'rm -rf "$dir"' EXIT
python3 - "$dir" "$n" <<'PY'
import json, sys
d, n = sys.argv[1], int(sys.argv[2])
with open(f"{d}/tasks.jsonl", "w") as f:
    for i in range(n):
        f.write(json.dumps({"id": f"k{i:05}", "answer": f"a{i}", "commands": [
            "sleep 0.$((RANDOM % 9))", f"echo {i} | sha256sum",
        ]}) + "\n")
PY
cat > "$dir/job.toml" <<TOML
name = "kill-loop"
[tasks]
source = "tasks.jsonl"
id = "{{ id }}"
[prompt]
user = "go"
[llm]
provider = "script"
[workspace]
kind = "docker"
image = "convoy-workspace:bookworm"
[run]
workers = 64
[monitor]
interval = "1s"
TOML
check() {
  python3 - "$dir/out/results.jsonl" <<'PY'
import json, sys
text = open(sys.argv[1]).read() if __import__("os").path.exists(sys.argv[1]) else ""
complete = text[: text.rfind("\n") + 1]
ids = [json.loads(l)["id"] for l in complete.splitlines()]
dups = len(ids) - len(set(ids))
print(len(ids), dups, len(text) - len(complete))
PY
}
cd "$dir"
killed=0; swept=0; torn=0; dups_total=0
printf '| run | killed after (s) | results after the run | duplicates | torn tail bytes |\n|---:|---:|---:|---:|---:|\n'
for k in $(seq 1 "$kills"); do
  delay=$(python3 -c "import random; print(round(random.uniform(3, 8), 1))")
  "$bin" run job.toml --out out >/dev/null 2>run.log &
  pid=$!
  sleep "$delay"
  if kill -9 "$pid" 2>/dev/null; then killed=$((killed + 1)); fi
  wait "$pid" 2>/dev/null || true
  grep -q "removed container" run.log && swept=$((swept + 1)) || true
  read -r lines dups tail < <(check)
  [ "$tail" -gt 0 ] && torn=$((torn + 1))
  dups_total=$((dups_total + dups))
  printf '| %d | %s | %d | %d | %d |\n' "$k" "$delay" "$lines" "$dups" "$tail"
done
"$bin" run job.toml --out out >/dev/null 2>run.log
grep -q "removed container" run.log && swept=$((swept + 1)) || true
read -r lines dups tail < <(check)
dups_total=$((dups_total + dups))
printf '| final | - | %d | %d | %d |\n\n' "$lines" "$dups" "$tail"
left=$(docker ps -aq --filter label=convoy.job=kill-loop | wc -l)
traj=$(wc -l < out/trajectories.jsonl)
echo "| measure | value |"
echo "|---|---:|"
echo "| tasks | $n |"
echo "| runs killed with SIGKILL | $killed |"
echo "| runs that left a torn last line | $torn |"
echo "| runs that swept a crashed run's container at start | $swept |"
echo "| tasks done at the end | $lines |"
echo "| duplicates found | $dups_total |"
echo "| trajectory lines at the end | $traj |"
echo "| containers left at the end | $left |"
echo
"$bin" report out
cp out/metrics.svg /tmp/kill-loop-metrics.svg
