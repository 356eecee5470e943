//! A session's shell: bash with convoy's rc script (`rc.bash`), started in
//! its tmux session and waited for until it announces itself.

use std::time::Duration;

use tokio::sync::oneshot;

use super::super::protocol::{ErrorKind, OpError};
use super::diagnose::{no_shell, NoShell};
use super::sessions::{SessionState, Shim};
use crate::workspace::procfs;

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
    ) -> Result<ShellIds, OpError> {
        // Gone already is fine: either way no session of that name is left.
        let _ = self
            .tmux
            .call(&["kill-session", "-t", &format!("={name}")])
            .await;
        self.spawn_shell(name, state).await
    }

    /// What a session's processes are told besides the helper's own
    /// environment: its HOME and name when it has a uid of its own (unless
    /// `workspace.env` says otherwise), the session's env, and its markers
    /// (`fifo`: the completion FIFO, for a shell).
    pub(super) fn session_vars(
        &self,
        name: &str,
        state: &SessionState,
        fifo: bool,
    ) -> Vec<(String, String)> {
        let mut vars: Vec<(String, String)> = Vec::new();
        if let Some(uid) = state.uid {
            let user = format!("convoy-{uid}");
            vars.push(("HOME".into(), state.dir.join("home").display().to_string()));
            vars.push(("USER".into(), user.clone()));
            vars.push(("LOGNAME".into(), user));
        }
        vars.extend(state.env.iter().cloned());
        vars.push(("CONVOY_SESSION".into(), name.to_string()));
        vars.push(("CONVOY_SESSION_DIR".into(), state.dir.display().to_string()));
        if fifo {
            vars.push((
                "CONVOY_FIFO".into(),
                self.fifo_path(name).display().to_string(),
            ));
        }
        vars
    }

    /// Starts the session's shell; returns its pane id and its pid (with
    /// its start time) when tmux told them.
    pub(super) async fn spawn_shell(
        &self,
        name: &str,
        state: &SessionState,
    ) -> Result<ShellIds, OpError> {
        let mut args: Vec<String> = vec![
            "new-session".into(),
            "-d".into(),
            // The pane's id (`%N`, never reused by the server): its death,
            // if it dies, is told by it.
            "-P".into(),
            "-F".into(),
            "#{pane_id} #{pane_pid}".into(),
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
        for (k, v) in self.session_vars(name, state, true) {
            args.extend(["-e".into(), format!("{k}={v}")]);
        }
        // Without bash the shell says so itself (tmux does not always learn
        // the exit status of a pane that ends at once). The launcher makes
        // the shell a subreaper and, with `user` isolation, the session's
        // uid with its limits (see `users::session_exec`).
        let mut launch = vec![
            quote(&self.exe.display().to_string()),
            "session-exec".into(),
        ];
        if let Some(uid) = state.uid {
            launch.push(format!("--uid={uid}"));
            if let Some(n) = self.config.session_pids {
                launch.push(format!("--nproc={n}"));
            }
        }
        args.push(format!(
            "command -v bash >/dev/null 2>&1 || {{ printf '%s %s 127 died\\n' \"$CONVOY_SESSION\" \"$TMUX_PANE\" >\"$CONVOY_FIFO\"; exit 127; }}; \
             exec {} -- bash --noprofile --rcfile {} -i",
            launch.join(" "),
            quote(&self.rc.display().to_string())
        ));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        // The shell announces itself once its rc file ran; the dead-pane
        // watcher reports a shell that ended before (see `dead_panes`).
        // Either way a shell that cannot start is an error here that says
        // why, not a mystery on the first command.
        let (tx, mut rx) = oneshot::channel();
        let key = (name.to_string(), 0);
        self.waiters
            .lock()
            .expect("waiters lock")
            .insert(key.clone(), tx);
        let (pane, shell) = match self.tmux.call(&args).await {
            Ok(out) => match pane_id(&out) {
                Some(p) => (Some(p), shell_pid(&out)),
                // An answer that is not a pane id (a control client that
                // went away mid-call): ask with a client of our own.
                None => self
                    .tmux
                    .spawn_call(&[
                        "display-message",
                        "-p",
                        "-t",
                        &format!("={name}:"),
                        "#{pane_id} #{pane_pid}",
                    ])
                    .await
                    .ok()
                    .map_or((None, None), |out| (pane_id(&out), shell_pid(&out))),
            },
            Err(e) => {
                self.waiters.lock().expect("waiters lock").remove(&key);
                return Err(no_shell(name, state, NoShell::Tmux(e)));
            }
        };
        let death = pane.map(|p| self.deaths.lock().expect("deaths lock").expect(name, p));
        let died = async {
            match death {
                Some(rx) => rx.await.ok(),
                None => None,
            }
        };
        let how = tokio::select! {
            ready = tokio::time::timeout(SHELL_START_TIMEOUT, &mut rx) => match ready {
                Ok(Ok(_)) => None,
                _ => Some(NoShell::Silent(SHELL_START_TIMEOUT.as_secs())),
            },
            // A start that takes long also asks tmux itself (the
            // watcher's word was not to be missed, but this costs little).
            status = self.dead_pane_status(pane) => Some(NoShell::Died(status)),
            Some(status) = died => {
                // Any session can write a death record: believe tmux,
                // which may take a moment to see the pane end (and may
                // have no status of its own for it).
                if self.pane_is_dead(pane).await {
                    Some(NoShell::Died(status))
                } else {
                    tokio::select! {
                        ready = tokio::time::timeout(SHELL_START_TIMEOUT, &mut rx) => match ready {
                            Ok(Ok(_)) => None,
                            _ => Some(NoShell::Silent(SHELL_START_TIMEOUT.as_secs())),
                        },
                        polled = self.dead_pane_status(pane) => {
                            Some(NoShell::Died(if polled == -1 { status } else { polled }))
                        }
                    }
                }
            }
        };
        if let Some(p) = pane {
            self.deaths.lock().expect("deaths lock").cancel(name, p);
        }
        let shell = shell.and_then(|pid| Some((pid, procfs::start_time(pid)?)));
        let Some(how) = how else {
            return Ok((pane, shell));
        };
        self.waiters.lock().expect("waiters lock").remove(&key);
        let _ = self.kill_tree(name, shell).await;
        Err(no_shell(name, state, how))
    }
}

impl Shim {
    /// Resolves with the exit status (-1: tmux has none, or the pane is
    /// gone) once tmux reports the pane `%pane` dead, asking every second;
    /// never without a pane. Only a shell start slower than a second asks
    /// at all.
    async fn dead_pane_status(&self, pane: Option<u32>) -> i32 {
        let Some(pane) = pane else {
            return std::future::pending().await;
        };
        let target = format!("%{pane}");
        // tmux may see the pane end before it has the process's status:
        // ask again a few times for the status before saying "none".
        let mut unknown = 0;
        loop {
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            let answer = self
                .tmux
                .spawn_call(&[
                    "display-message",
                    "-p",
                    "-t",
                    &target,
                    "#{pane_dead} #{pane_dead_status}",
                ])
                .await;
            let status = match answer {
                Ok(out) => match out.trim().strip_prefix('1') {
                    Some(status) => status.trim().parse().ok(),
                    None => continue,
                },
                // Gone: the dead-pane watcher removes a pane once it has
                // told its death.
                Err(_) => None,
            };
            match status {
                Some(status) => return status,
                None if unknown >= 3 => return -1,
                None => unknown += 1,
            }
        }
    }

    /// Whether tmux does not report the pane `%pane` alive.
    pub(super) async fn pane_is_dead(&self, pane: Option<u32>) -> bool {
        let Some(pane) = pane else { return false };
        // A client of its own: for a pane that is gone, the control
        // client's answer is not to be relied on. Rare: only on a death.
        self.tmux
            .spawn_call(&[
                "display-message",
                "-p",
                "-t",
                &format!("%{pane}"),
                "#{pane_dead}",
            ])
            .await
            // A gone pane answers an error or nothing: dead too.
            .map_or(true, |out| out.trim() != "0")
    }
}

/// A shell's pane id (`%N`, without the `%`) and its pid with start time.
pub(super) type ShellIds = (Option<u32>, Option<(u32, u64)>);

/// `%N` as printed by tmux (first of `%N PID`).
fn pane_id(out: &str) -> Option<u32> {
    out.split_whitespace()
        .next()?
        .strip_prefix('%')?
        .parse()
        .ok()
}

/// `PID` of `%N PID`.
fn shell_pid(out: &str) -> Option<u32> {
    out.split_whitespace().nth(1)?.parse().ok()
}

pub(super) use crate::tasks::quote;

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
