# convoy session shell (see convoy's workspace::channel::shim)
unset HISTFILE
HISTSIZE=50
PS1='$ '
PS2=''
__convoy_dir=$CONVOY_SESSION_DIR
__convoy_seq=
__convoy_done() {
  local rc=$?
  if [ -n "$__convoy_seq" ]; then
    printf '%s %s %s %s\n' "$CONVOY_SESSION" "$__convoy_seq" "$rc" "${1:-prompt}" >"$CONVOY_FIFO"
    __convoy_seq=
  fi
}
PROMPT_COMMAND=__convoy_done
trap '__convoy_done exit' EXIT
# Tell the helper this shell is up (sequence 0 is the ready record).
printf '%s 0 0 ready\n' "$CONVOY_SESSION" >"$CONVOY_FIFO"
