#!/usr/bin/env bash
# How the helper's way of learning of shells' deaths weighs on tmux over
# many sessions, without convoy: in one workspace container, batches of 200
# sessions whose shell exits at once (remain-on-exit on, as the helper sets
# it), each dead pane removed by id, for each way. Prints the tmux server's
# CPU ticks (utime + stime) spent on batches 1, 10 and the last, its RSS
# after the last batch, and the dead panes not removed within 2 s, whose
# death was never told (their sessions are then killed, as the helper's
# close would).
#   scripts/tmux-hook.sh [IMAGE] [BATCHES]
# Ways: `run-shell`, the helper's before 2026-11-26: the `pane-died` hook
# writes `NAME %PANE STATUS died` to a FIFO with a foreground run-shell,
# and a reader removes each pane with `if-shell -F '#{pane_dead}'`;
# `wait-for`, the helper's since: the hook is `wait-for -S`, and a watcher
# (registered as a waiter before it lists) lists the dead panes and
# removes them; `poll`: no hook, dead panes listed every 50 ms.
set -euo pipefail
image=${1:-convoy-workspace:bookworm}
batches=${2:-30}
[ "$batches" -gt 10 ] || { echo "BATCHES must be more than 10" >&2; exit 2; }
printf '| way | CPU ticks, batch 1 / 10 / %s | RSS after %s sessions (MB) | dead panes not removed within 2 s |\n|---|---|---:|---:|\n' "$batches" $((batches * 200))
for way in run-shell wait-for poll; do
  docker run --rm -i --network none "$image" bash -s "$way" "$batches" <<'IN'
set -euo pipefail
way=$1 batches=$2
t() { tmux -S /tmp/t.sock -f /dev/null "$@"; }
t new-session -d -s keep 'exec tail -f /dev/null'
t set-option -g remain-on-exit on
t set -g history-limit 100
reap() {
  t list-panes -a -f '#{pane_dead}' -F '#{pane_id}' 2>/dev/null |
    while read -r p; do t kill-pane -t "$p" 2>/dev/null || true; done
}
case $way in
  run-shell)
    mkfifo /tmp/died
    t set-hook -g pane-died "run-shell \"printf '%s %s %s died\\\\n' '#{session_name}' '#{pane_id}' '#{pane_dead_status}' >/tmp/died\""
    (
      exec 3<>/tmp/died
      while read -r _ p _ _ <&3; do
        t if-shell -F -t "$p" '#{pane_dead}' "kill-pane -t $p" 2>/dev/null || true
      done
    ) & ;;
  wait-for)
    t set-hook -g pane-died 'wait-for -S died'
    (
      while t has-session -t keep 2>/dev/null; do
        # "ready" is printed once the wait is registered (same pass of
        # the client's queue), so a death after the listing wakes it.
        exec 3< <(t display-message -p ready \; wait-for died 2>/dev/null; echo woken)
        read -r _ <&3
        reap
        read -r _ <&3 || true
        exec 3<&-
      done
    ) & ;;
  poll)
    ( while t has-session -t keep 2>/dev/null; do reap; sleep 0.05; done ) & ;;
esac
pid=$(t display-message -p '#{pid}')
# utime + stime: fields 14 and 15 of /proc/PID/stat, counted after the
# name in parentheses (`tmux: server` has a space in it).
ticks() { sed 's/.*) //' "/proc/$pid/stat" | awk '{print $12 + $13}'; }
out=()
untold=0
for b in $(seq "$batches"); do
  before=$(ticks)
  for i in $(seq 200); do t new-session -d -s "b${b}s$i" 'exit 0'; done
  # Until the batch's sessions are gone, or 2 s; then, as the helper's
  # close does, the sessions left are killed (their death never told).
  for _ in $(seq 100); do
    [ "$(t list-sessions -F x | wc -l)" -gt 1 ] || break
    sleep 0.02
  done
  for s in $(t list-sessions -F '#{session_name}' | grep -vx keep); do
    untold=$((untold + 1))
    t kill-session -t "=$s" 2>/dev/null || true
  done
  used=$(( $(ticks) - before ))
  case $b in 1|10|"$batches") out+=("$used") ;; esac
done
rss=$(awk '/VmRSS/ {printf "%.0f", $2 / 1024}' "/proc/$pid/status")
t kill-server
echo "| $way | ${out[0]} / ${out[1]} / ${out[2]} | $rss | $untold |"
IN
done
