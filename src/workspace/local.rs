//! The `local` backend: the helper runs as a child process of convoy, with a
//! private tmux server on a socket in its own temporary directory.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncBufReadExt;

use super::channel::{Link, ShimClient};
use super::error::WorkspaceError;
use super::helper_flags::{shim_config, shim_flags};
use crate::manifest::WorkspaceSpec;

/// The helper process and the directory it owns. The helper removes that
/// directory itself when its stdin closes, so even if convoy is killed the
/// tmux server and every session process go with it. Convoy holds the
/// directory's lock until it is gone: `convoy sweep` leaves it alone while
/// this convoy lives, whatever a session writes into its `owner` file.
pub struct LocalBackend {
    child: tokio::process::Child,
    root: PathBuf,
    /// What every helper of this workspace is told about its sessions
    /// (`convoy shim` flags), the first and any restarted one.
    flags: Vec<String>,
    _lock: super::sweep::RunLock,
}

/// How long `stop` waits for the helper's own exit.
const STOP_WAIT: Duration = Duration::from_secs(5);

fn boot(what: &str, e: impl std::fmt::Display) -> WorkspaceError {
    WorkspaceError::Boot(format!("{what}: {e}"))
}

impl LocalBackend {
    /// Starts the helper; returns it with its link and the default working
    /// directory for sessions.
    pub async fn start(
        spec: &WorkspaceSpec,
    ) -> Result<(LocalBackend, Link, PathBuf), WorkspaceError> {
        // Sessions run as this user, and a process of the same user may
        // read another's /proc/PID/environ, where the API key is, unless
        // that process is not dumpable. (Root reads it anyway: see README,
        // "Containment".)
        if let Err(e) = nix::sys::prctl::set_dumpable(false) {
            tracing::warn!("cannot hide convoy's environment from sessions (prctl): {e}");
        }
        let root = tempfile::Builder::new()
            .prefix("convoy-")
            .tempdir()
            .map_err(|e| boot("cannot create a temporary directory", e))?
            .keep();
        super::sweep::register_own(&root);
        let lock = super::sweep::RunLock::acquire(&root)
            .map_err(|e| boot("cannot lock the workspace directory", e))?;
        // Who owns this directory, for `convoy sweep` after a crash.
        let (pid, start) = super::sweep::me();
        std::fs::write(
            root.join(super::sweep::OWNER_FILE),
            format!("{pid} {start}\n"),
        )
        .map_err(|e| boot("cannot write the workspace's owner file", e))?;
        let workdir = root.join("work");
        std::fs::create_dir_all(&workdir)
            .map_err(|e| boot("cannot create the work directory", e))?;
        let flags = shim_flags(&shim_config(spec));
        let child = spawn_helper(&root, &flags)?;
        let mut backend = LocalBackend {
            child,
            root,
            flags,
            _lock: lock,
        };
        match backend.connect().await {
            Ok(client) => Ok((backend, Link::Shim(client), workdir)),
            Err(e) => {
                backend.stop().await;
                Err(e)
            }
        }
    }

    async fn connect(&mut self) -> Result<ShimClient, WorkspaceError> {
        let stdin = self.child.stdin.take().expect("piped");
        let stdout = self.child.stdout.take().expect("piped");
        tokio::time::timeout(
            super::shared::HELLO_WAIT,
            ShimClient::connect(stdout, stdin),
        )
        .await
        .map_err(|_| {
            boot(
                "the workspace helper did not say hello",
                "no answer within 30s",
            )
        })?
        .map_err(|e| WorkspaceError::Boot(e.to_string()))
    }

    /// A new helper on the same root; it adopts the sessions the old one
    /// left in the tmux server.
    pub async fn recover(&mut self) -> Result<Link, WorkspaceError> {
        // Kill, not close: a closed stdin would make it tear the server down.
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
        tracing::warn!("restarting the workspace helper");
        self.child = spawn_helper(&self.root, &self.flags)?;
        Ok(Link::Shim(self.connect().await?))
    }

    /// Waits (at most `STOP_WAIT`) for the helper to exit (its stdin must
    /// be closed already), then kills whatever still names the directory
    /// (a stopped tmux server, say) and removes it.
    pub async fn stop(mut self) {
        if tokio::time::timeout(STOP_WAIT, self.child.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                "workspace helper did not exit in {}s; killing it",
                STOP_WAIT.as_secs()
            );
            let _ = self.child.kill().await;
        }
        let root = self.root.clone();
        let killed = tokio::task::spawn_blocking(move || {
            let n = super::sweep::kill_mentioning(&root);
            let _ = std::fs::remove_dir_all(&root);
            n
        })
        .await
        .unwrap_or(0);
        if killed > 0 {
            tracing::warn!(
                "killed {killed} processes of the local workspace that outlived its helper"
            );
        }
    }
}

/// Of convoy's own environment, only these reach the helper, its tmux
/// server and so every session; `workspace.pass_env` and `workspace.env`
/// come per session through the protocol. TERM is tmux's own. A build
/// with the test hooks adds theirs (`test_hooks::HELPER_ENV`).
const HELPER_ENV: [&str; 6] = ["PATH", "HOME", "LANG", "USER", "LOGNAME", "SHELL"];

/// Starts `convoy shim --root ROOT FLAGS` as a child, its stderr logged.
fn spawn_helper(root: &Path, flags: &[String]) -> Result<tokio::process::Child, WorkspaceError> {
    let exe = std::env::current_exe().map_err(|e| boot("cannot find the convoy binary", e))?;
    let mut child = tokio::process::Command::new(exe)
        .env_clear()
        .envs(
            HELPER_ENV
                .iter()
                .chain(crate::test_hooks::HELPER_ENV)
                .filter_map(|k| Some((k, std::env::var_os(k)?))),
        )
        .arg("shim")
        .arg("--root")
        .arg(root)
        .args(flags)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group: a terminal's Ctrl-C reaches convoy,
        // which then shuts the helper down in order.
        .process_group(0)
        .spawn()
        .map_err(|e| boot("cannot start the workspace helper", e))?;
    let stderr = child.stderr.take().expect("piped");
    tokio::spawn(async move {
        let mut lines = tokio::io::BufReader::new(stderr).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            tracing::warn!(target: "convoy::shim", "{line}");
        }
    });
    Ok(child)
}
