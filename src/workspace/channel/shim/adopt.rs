//! A helper that takes over from one that died or lost its stream: it
//! stops the old one, and adopts the sessions it left in the tmux server
//! (their uid, shell, and completion FIFO), from what each session's open
//! wrote in the helper's private directory.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use super::sessions::{SessionState, Shim};
use crate::workspace::procfs;

/// What it takes to start a session's shell again, kept in the helper's
/// private directory (out of the session's reach) so a new helper can
/// adopt the session.
#[derive(serde::Serialize, serde::Deserialize)]
pub(super) struct SessionMeta {
    pub workdir: Option<String>,
    pub env: Vec<(String, String)>,
    #[serde(default)]
    pub uid: Option<u32>,
}

impl Shim {
    pub(super) fn meta_path(&self, session: &str) -> PathBuf {
        self.private.join("meta").join(format!("{session}.json"))
    }

    /// A helper that lost its stream may still run: stop it, so that it no
    /// longer reads the completion FIFOs, and take its place.
    pub(super) fn replace_previous(&self) -> anyhow::Result<()> {
        let pid_file = self.private.join("shim.pid");
        if let Some(old) = std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok())
            .filter(|&pid| pid != std::process::id())
        {
            if procfs::cmdline(old).iter().any(|a| a == "shim") {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(old as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        std::fs::write(&pid_file, std::process::id().to_string())?;
        Ok(())
    }

    /// Takes over the sessions a previous helper left in the tmux server.
    pub(super) async fn adopt(&self) {
        let Ok(names) = self.list().await else { return };
        // Each session's pane and shell, so that its death is noticed and
        // its processes can be found.
        let panes: HashMap<String, (u32, Option<u32>)> = self
            .tmux
            .call(&[
                "list-panes",
                "-a",
                "-F",
                "#{session_name} #{pane_id} #{pane_pid}",
            ])
            .await
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let mut parts = l.split(' ');
                let name = parts.next()?.to_string();
                let pane = parts.next()?.strip_prefix('%')?.parse().ok()?;
                Some((name, (pane, parts.next().and_then(|p| p.parse().ok()))))
            })
            .collect();
        // Sequence numbers continue above anything the old helper used.
        let seq = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_millis() as u64);
        let mut adopted = 0;
        for name in names {
            let Some(meta) = std::fs::read(self.meta_path(&name))
                .ok()
                .and_then(|b| serde_json::from_slice::<SessionMeta>(&b).ok())
            else {
                continue;
            };
            let reader = match self.listen(&name) {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("cannot adopt session `{name}`: {e}");
                    continue;
                }
            };
            if let Some(uid) = meta.uid {
                self.users.lock().expect("users lock").adopt(&name, uid);
            }
            let (pane, shell) = panes.get(&name).copied().unzip();
            let state = SessionState {
                seq,
                dir: self.session_dir(&name),
                workdir: meta.workdir,
                env: meta.env,
                uid: meta.uid,
                dead: false,
                pane,
                _reader: Some(reader),
            };
            let shell = shell
                .flatten()
                .and_then(|pid| Some((pid, procfs::start_time(pid)?)));
            self.set_shell(&name, &state, shell);
            self.sessions
                .lock()
                .expect("sessions lock")
                .insert(name, Arc::new(tokio::sync::Mutex::new(state)));
            adopted += 1;
        }
        if adopted > 0 {
            eprintln!("adopted {adopted} sessions of the previous helper");
        }
    }
}
