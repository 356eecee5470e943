#!/usr/bin/env bash
# The leak soak: N conversations (default 10,000) through one Docker
# container over HTTP, the path users take: an OpenAI-compatible endpoint
# on this machine (the tests' fake, examples/fake_llm_server.rs, answering
# at once) plays 3 bash calls per conversation (one leaving a background
# job) and then `finish`. It runs once per worker count (default 256 and
# 1024, with llm.max_in_flight = workers so every worker can hold an HTTP
# connection) and isolation mode (`workspace.isolation = "user"`, each
# conversation its own uid, and "none"; which goes first alternates between
# worker counts, so that load from elsewhere on the machine falls on both
# alike), and prints what the leak monitor recorded, one row each, then
# user / none conversations/s per worker count.
#   scripts/soak.sh [--containers C|auto] [--drill SECONDS] [N] [WORKERS...]
#   SOAK_PROVIDER=script scripts/soak.sh ...   the `script` provider (no HTTP)
#   SOAK_ISOLATION=user scripts/soak.sh ...    one isolation mode only
# --containers C spreads each run over C containers (workspace.containers)
# and adds each container's sessions and processes, peak / end; --drill S
# `docker kill`s one of the run's containers (in turn) every S seconds
# while it runs, and counts the tasks that ended ok, and ran more than once.
set -euo pipefail
cd "$(dirname "$0")/.."
containers=1
drill=
while [ $# -gt 0 ]; do
  case $1 in
    --containers) containers=$2; shift 2 ;;
    --drill) drill=$2; shift 2 ;;
    *) break ;;
  esac
done
n=${1:-10000}
# A number, or "auto" (quoted in TOML).
if [[ $containers =~ ^[0-9]+$ ]]; then containers_toml=$containers; else containers_toml="\"$containers\""; fi
shift || true
workers=("${@:-256 1024}")
read -r -a workers <<<"${workers[*]}"
provider=${SOAK_PROVIDER:-http}
read -r -a modes <<<"${SOAK_ISOLATION:-user none}"
cargo build --release --quiet --bin convoy --example fake_llm_server
dir=$(mktemp -d /tmp/convoy-soak.XXXXXX)
srv=
cleanup() {
  # Closing the server's stdin stops it.
  exec 9>&- 2>/dev/null || true
  [ -n "$srv" ] && wait "$srv" 2>/dev/null || true
  if [ -n "${SOAK_KEEP:-}" ]; then echo "kept: $dir" >&2; else rm -rf "$dir"; fi
}
trap cleanup EXIT
python3 - "$dir" "$n" <<'PY'
import json, sys
d, n = sys.argv[1], int(sys.argv[2])
with open(f"{d}/tasks.jsonl", "w") as f:
    for i in range(n):
        commands = [
            f"export N={i}; cd /tmp && sleep 1000 & echo $N",
            "ls /proc | wc -l > /dev/null; echo $N",
            "cat /etc/hostname",
        ]
        turns = [{"calls": [["bash", {"command": c}]]} for c in commands]
        turns.append({"calls": [["finish", {"message": "ok"}]]})
        f.write(json.dumps({"id": f"s{i}", "answer": "ok", "commands": commands,
                            "script": json.dumps({"turns": turns})}) + "\n")
PY
if [ "$provider" = http ]; then
  mkfifo "$dir/server.in"
  target/release/examples/fake_llm_server <"$dir/server.in" >"$dir/server.url" &
  srv=$!
  exec 9>"$dir/server.in"
  for _ in $(seq 300); do [ -s "$dir/server.url" ] && break; sleep 0.1; done
  url=$(head -n 1 "$dir/server.url")
  [ -n "$url" ] || { echo "the fake endpoint did not start" >&2; exit 1; }
fi

# One row: the soak at WORKERS in ISOLATION mode.
soak() {
  local w=$1 iso=$2 llm user status start end
  if [ "$provider" = http ]; then
    llm="base_url = \"$url\"
model = \"soak\"
max_in_flight = $w"
    user="{{ script }}"
  else
    llm='provider = "script"'
    user="go"
  fi
  cat >"$dir/job.toml" <<TOML
name = "soak"
[tasks]
source = "tasks.jsonl"
id = "{{ id }}"
[prompt]
user = "$user"
[llm]
$llm
[agent]
max_steps = 5
[workspace]
kind = "docker"
nofile = 65536
isolation = "$iso"
containers = $containers_toml
[run]
workers = $w
[monitor]
interval = "2s"
TOML
  rm -rf "$dir/out"
  start=$(date +%s.%N)
  status=0
  target/release/convoy run "$dir/job.toml" --out "$dir/out" >"$dir/stdout" 2>"$dir/stderr" &
  local run=$! killer= kills=0
  if [ -n "$drill" ]; then
    # One of the run's containers, in turn, every $drill seconds.
    (
      k=0
      while sleep "$drill"; do
        mapfile -t ids < <(docker ps -q --filter "label=convoy.run=$dir/out")
        [ ${#ids[@]} -gt 0 ] || continue
        docker kill "${ids[$((k % ${#ids[@]}))]}" >/dev/null 2>&1 && echo kill >>"$dir/kills"
        k=$((k + 1))
      done
    ) &
    killer=$!
  fi
  : >"$dir/kills"
  wait "$run" || status=$?
  [ -n "$killer" ] && { kill "$killer" 2>/dev/null; wait "$killer" 2>/dev/null || true; }
  kills=$(wc -l <"$dir/kills")
  end=$(date +%s.%N)
  python3 - "$dir/out/summary.json" "$start" "$end" "$w" "$status" "$iso" "$dir/rates" "$dir/out" "$kills" <<'PY'
import csv, json, sys
s = json.load(open(sys.argv[1]))
out, kills = sys.argv[8], int(sys.argv[9])
# RSS after the first 10,000 conversations (or half the run, if shorter),
# against the end: no growth with N.
rows = list(csv.DictReader(open(f"{out}/metrics.csv")))
mark = min(10000, s["total_tasks"] // 2)
at_mark = next((int(r["rss_bytes"]) for r in rows if int(r["done"]) >= mark), 0)
rss_end = int(rows[-1]["rss_bytes"]) if rows else 0
results = [json.loads(l) for l in open(f"{out}/results.jsonl")]
ids = [r["id"] for r in results]
ok_once = len(set(r["id"] for r in results if r["status"] == "ok"))
rerun = sum(1 for r in results if r.get("infra_retries", 0) > 0)
per_container = "; ".join(
    f"{c['index']}: {c['sessions_peak']}/{c['sessions_end']}, {c['processes_peak']}/{c['processes_end']}"
    for c in s["metrics"].get("containers", []))
m, leaks = s["metrics"], s["leaks"]
wall = float(sys.argv[3]) - float(sys.argv[2])
w, iso, rate = sys.argv[4], sys.argv[6], s["conversations_per_s"] or 0
with open(sys.argv[7], "a") as f:
    f.write(f"{w} {iso} {rate}\n")
verdict = leaks["verdict"]
if leaks.get("why"):
    verdict += " (" + "; ".join(leaks["why"]) + ")"
if leaks["findings"]:
    verdict += " (" + "; ".join(f"{f['rule']}: {f['detail']}" for f in leaks["findings"]) + ")"
if s["done"] != s["total_tasks"] or sys.argv[5] != "0":
    verdict += f" [exit {sys.argv[5]}, {s['counts']}]"
print(f"| {w} | {iso} | {wall:.1f} | {rate:.1f} "
      f"| {m['open_fds_start']} / {m['open_fds_peak']} / {m['open_fds_end']} "
      f"| {m['llm_in_flight_peak']} "
      f"| {m['tmux_sessions_peak']} / {m['tmux_sessions_end']} "
      f"| {m['workspace_procs_peak']} / {m['workspace_procs_end']} "
      f"| {m['rss_bytes_peak'] / 1048576:.1f} | {at_mark / 1048576:.1f} / {rss_end / 1048576:.1f} "
      f"| {per_container or '-'} "
      f"| {ok_once} of {s['total_tasks']}; {len(ids) - len(set(ids))} recorded twice; {rerun} re-run; {kills} kills "
      f"| {verdict} |")
PY
}

echo "soak: $n conversations per row, $provider provider, Docker workspace, $containers container(s)${drill:+, a container killed every ${drill}s}"
scripts/provenance.sh
echo
echo "| workers | isolation | wall (s) | conversations/s | convoy FDs start / peak / end | LLM requests in flight, peak | tmux sessions peak / end | workspace processes peak / end | RSS peak (MB) | RSS after 10,000 / end (MB) | per container: sessions peak/end, processes peak/end | tasks ok once | leak verdict |"
echo "|---:|---|---:|---:|---|---:|---|---|---:|---|---|---|---|"
: >"$dir/rates"
for i in "${!workers[@]}"; do
  order=("${modes[@]}")
  if [ $((i % 2)) = 1 ]; then
    order=()
    for ((j = ${#modes[@]} - 1; j >= 0; j--)); do order+=("${modes[j]}"); done
  fi
  for iso in "${order[@]}"; do soak "${workers[i]}" "$iso"; done
done
python3 - "$dir/rates" <<'PY'
import sys
rates = {}
for line in open(sys.argv[1]):
    w, iso, rate = line.split()
    rates.setdefault(w, {})[iso] = float(rate)
ratios = [f"workers {w} {r['user'] / r['none']:.2f}"
          for w, r in rates.items() if r.get("user") and r.get("none")]
if ratios:
    print("\nconversations/s, user / none: " + ", ".join(ratios))
PY
