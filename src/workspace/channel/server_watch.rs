//! The helper's watch on its tmux server. If the server dies anyway (the
//! OOM killer, a `kill -9` from outside, a session's `tmux kill-server`),
//! every session died with it and no request on them can succeed. The
//! helper then kills what the sessions left running, and exits: convoy
//! sees its stream end, which counts as a failure of the workspace, and
//! starts a new helper, whose start brings up a new tmux server. In-flight
//! requests fail as retryable (the stream broke), their tasks run again
//! without spending attempts, and a task that keeps killing the server is
//! quarantined like any other that brings the workspace down.

use std::time::Duration;

use super::tmux::Tmux;

/// How often the server's pid is checked: a read of its /proc entry, no
/// tmux call, so a busy (or stopped) server costs nothing and is not
/// mistaken for a dead one.
const EVERY: Duration = Duration::from_millis(250);

/// The pid of the tmux server behind `tmux`, if it answers within
/// `ASK_WAIT` (a stopped server must not keep the helper from starting).
pub async fn server_pid(tmux: &Tmux) -> Option<i32> {
    tokio::time::timeout(ASK_WAIT, tmux.call(&["display-message", "-p", "#{pid}"]))
        .await
        .ok()?
        .ok()
        .and_then(|p| p.trim().parse().ok())
}

const ASK_WAIT: Duration = Duration::from_secs(5);

/// Returns once the server `pid` is gone.
pub async fn gone(pid: i32) {
    while !is_gone(pid) {
        tokio::time::sleep(EVERY).await;
    }
}

/// The server `pid` is dead: no such process, or a zombie not yet reaped
/// (a signal-0 probe would still find that one).
pub fn is_gone(pid: i32) -> bool {
    u32::try_from(pid).map_or(true, |pid| !crate::workspace::procfs::is_running(pid))
}
