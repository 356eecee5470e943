//! A session's shell: bash with convoy's rc script (`rc.bash`), started in
//! its tmux session and waited for until it announces itself.

use std::time::Duration;

use tokio::sync::oneshot;

use super::super::protocol::{ErrorKind, OpError};
use super::sessions::{SessionState, Shim};

/// The rc script every session's shell runs (also copied into the
/// container for the exec channel).
pub const RC: &str = include_str!("rc.bash");

/// How long a new session's shell may take to start.
const SHELL_START_TIMEOUT: Duration = Duration::from_secs(30);

impl Shim {
    /// A new shell for a session whose shell exited or stopped taking
    /// keys. The old tmux session goes first: a shell that just exited
    /// leaves its session behind until tmux notices, and creating the new
    /// one before that fails with `duplicate session`.
    pub(super) async fn restart_shell(
        &self,
        name: &str,
        state: &SessionState,
    ) -> Result<(), OpError> {
        // Gone already is fine: either way no session of that name is left.
        let _ = self
            .tmux
            .call(&["kill-session", "-t", &format!("={name}")])
            .await;
        self.spawn_shell(name, state).await
    }

    pub(super) async fn spawn_shell(
        &self,
        name: &str,
        state: &SessionState,
    ) -> Result<(), OpError> {
        let mut args: Vec<String> = vec![
            "new-session".into(),
            "-d".into(),
            "-s".into(),
            name.into(),
            "-x".into(),
            "250".into(),
            "-y".into(),
            "50".into(),
        ];
        if let Some(w) = &state.workdir {
            args.extend(["-c".into(), w.clone()]);
        }
        let fixed = [
            ("CONVOY_SESSION", name.to_string()),
            ("CONVOY_SESSION_DIR", state.dir.display().to_string()),
            ("CONVOY_FIFO", self.fifo.display().to_string()),
        ];
        for (k, v) in state
            .env
            .iter()
            .cloned()
            .chain(fixed.map(|(k, v)| (k.to_string(), v)))
        {
            args.extend(["-e".into(), format!("{k}={v}")]);
        }
        args.push(format!(
            "exec bash --noprofile --rcfile '{}' -i",
            self.rc.display()
        ));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        // The shell announces itself once its rc file ran; a shell that
        // cannot start (no processes or file handles left in the
        // workspace) is an error here, not a mystery on the first command.
        let (tx, rx) = oneshot::channel();
        let key = (name.to_string(), 0);
        self.waiters
            .lock()
            .expect("waiters lock")
            .insert(key.clone(), tx);
        if let Err(e) = self.tmux.call(&args).await {
            self.waiters.lock().expect("waiters lock").remove(&key);
            return Err(OpError::new(
                ErrorKind::ShellDidNotStart,
                format!("tmux could not create session `{name}`: {e}"),
            ));
        }
        match tokio::time::timeout(SHELL_START_TIMEOUT, rx).await {
            Ok(Ok(_)) => Ok(()),
            _ => {
                self.waiters.lock().expect("waiters lock").remove(&key);
                let _ = self.kill_tree(name).await;
                Err(OpError::new(
                    ErrorKind::ShellDidNotStart,
                    format!(
                    "the shell of session `{name}` did not start within {}s; the workspace may be \
                     out of processes or open files (see README, \"Docker workspace\")",
                    SHELL_START_TIMEOUT.as_secs()
                ),
                ))
            }
        }
    }
}

/// Session names become tmux targets and directory names.
pub(super) fn check_name(name: &str) -> Result<(), OpError> {
    let ok = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(OpError::new(
            ErrorKind::BadRequest,
            format!("invalid session name `{name}`"),
        ))
    }
}
