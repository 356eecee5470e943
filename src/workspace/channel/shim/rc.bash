# convoy session shell (see convoy's workspace::channel::shim).
# What convoy relies on is readonly, so a command cannot take it away: the
# completion hook, PROMPT_COMMAND and the session's markers.
unset HISTFILE
HISTSIZE=50
PS1='$ '
PS2=''
__convoy_dir=$CONVOY_SESSION_DIR
__convoy_seq=
# Writes the completion record. A command may have shadowed printf or
# enable with functions, or disabled printf: in posix mode `unset` is the
# builtin whatever was defined, so those functions go and printf is the
# builtin again.
__convoy_done() {
  __convoy_rc=$?
  if [[ -n ${__convoy_seq-} ]]; then
    POSIXLY_CORRECT=1
    \unset -f printf enable
    \enable printf
    \unset POSIXLY_CORRECT
    \printf '%s %s %s %s\n' "$CONVOY_SESSION" "$__convoy_seq" "$__convoy_rc" "${1:-prompt}" >"$CONVOY_FIFO"
    __convoy_seq=
  fi
}
readonly -f __convoy_done
readonly PROMPT_COMMAND=__convoy_done
readonly __convoy_dir CONVOY_SESSION CONVOY_SESSION_DIR CONVOY_FIFO
trap '__convoy_done exit' EXIT
# Tell the helper this shell is up (sequence 0 is the ready record).
printf '%s 0 0 ready\n' "$CONVOY_SESSION" >"$CONVOY_FIFO"
