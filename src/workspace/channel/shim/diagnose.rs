//! Why a session's shell did not come up, in words that are true: the
//! shell's own exit status when it died, what tmux said when it could not
//! create the session, and what the workspace is short of (its cgroup's
//! process and memory counts, whether a process or a file can be opened
//! right now), checked rather than guessed.

use super::super::protocol::{ErrorKind, OpError};
use super::sessions::SessionState;

/// How a start failed.
pub(super) enum NoShell {
    /// tmux could not create the session; its message.
    Tmux(String),
    /// The shell (or what tmux ran for it) exited with this status before
    /// it was ready.
    Died(i32),
    /// No word from the shell within this many seconds.
    Silent(u64),
}

/// The error for a shell that did not start: out of resources if the
/// workspace is found short of something, else what happened.
pub(super) fn no_shell(name: &str, state: &SessionState, how: NoShell) -> OpError {
    let what = match how {
        NoShell::Tmux(e) => format!("tmux could not create it: {e}"),
        NoShell::Died(127) => format!(
            "it exited with status 127 before it was ready: `bash` was not found on the session's PATH ({})",
            session_path(state)
        ),
        NoShell::Died(126) => {
            "it exited with status 126 before it was ready: `bash` could not be executed".into()
        }
        NoShell::Died(-1) => {
            "it ended before it was ready (killed by a signal, or tmux saw no exit status)".into()
        }
        NoShell::Died(status) => format!("it exited with status {status} before it was ready"),
        NoShell::Silent(secs) => format!("it did not finish its rc file within {secs}s"),
    };
    match shortage() {
        Some(short) => OpError::new(
            ErrorKind::OutOfResources,
            format!("the shell of session `{name}` did not start: {what}; {short}"),
        ),
        None => OpError::new(
            ErrorKind::ShellDidNotStart,
            format!("the shell of session `{name}` did not start: {what}"),
        ),
    }
}

fn session_path(state: &SessionState) -> String {
    state
        .env
        .iter()
        .rev()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.clone())
        .or_else(|| std::env::var("PATH").ok())
        .unwrap_or_else(|| "unset".into())
}

/// What the workspace is out of right now, if anything: the cgroup's
/// process or memory limit reached, or no process or file can be opened.
fn shortage() -> Option<String> {
    let cgroup = |f: &str| {
        std::fs::read_to_string(format!("/sys/fs/cgroup/{f}"))
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
    };
    if let (Some(now), Some(max)) = (cgroup("pids.current"), cgroup("pids.max")) {
        if now + 2 >= max {
            return Some(format!(
                "the workspace's process limit is reached ({now} of pids.max {max})"
            ));
        }
    }
    if let (Some(now), Some(max)) = (cgroup("memory.current"), cgroup("memory.max")) {
        if now + (8 << 20) >= max {
            return Some(format!(
                "the workspace's memory limit is reached ({now} of memory.max {max} bytes)"
            ));
        }
    }
    let is_short = |e: &std::io::Error| OpError::io("", e).kind == ErrorKind::OutOfResources;
    match std::process::Command::new("true").spawn() {
        Ok(mut child) => {
            let _ = child.wait();
        }
        Err(e) if is_short(&e) => return Some(format!("no process can be started ({e})")),
        Err(_) => {}
    }
    match std::fs::File::open("/dev/null") {
        Err(e) if is_short(&e) => Some(format!("no file can be opened ({e})")),
        _ => None,
    }
}
