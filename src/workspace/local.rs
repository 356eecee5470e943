//! The `local` backend: the helper runs as a child process of convoy, with a
//! private tmux server on a socket in its own temporary directory.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncBufReadExt;

use super::channel::ShimClient;
use super::shared::WorkspaceError;

/// The helper process and the directory it owns. The helper removes that
/// directory itself when its stdin closes, so even if convoy is killed the
/// tmux server and every session process go with it.
pub struct LocalBackend {
    child: tokio::process::Child,
    root: PathBuf,
}

impl LocalBackend {
    /// Starts the helper; returns it with its connected client and the
    /// default working directory for sessions.
    pub async fn start() -> Result<(LocalBackend, ShimClient, PathBuf), WorkspaceError> {
        let boot =
            |what: &str, e: &dyn std::fmt::Display| WorkspaceError::Boot(format!("{what}: {e}"));
        let root = tempfile::Builder::new()
            .prefix("convoy-")
            .tempdir()
            .map_err(|e| boot("cannot create a temporary directory", &e))?
            .keep();
        let workdir = root.join("work");
        std::fs::create_dir_all(&workdir)
            .map_err(|e| boot("cannot create the work directory", &e))?;
        let exe = std::env::current_exe().map_err(|e| boot("cannot find the convoy binary", &e))?;
        let mut child = tokio::process::Command::new(exe)
            .arg("shim")
            .arg("--root")
            .arg(&root)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group: a terminal's Ctrl-C reaches convoy,
            // which then shuts the helper down in order.
            .process_group(0)
            .spawn()
            .map_err(|e| boot("cannot start the workspace helper", &e))?;
        let stdin = child.stdin.take().expect("piped");
        let stdout = child.stdout.take().expect("piped");
        let stderr = child.stderr.take().expect("piped");
        tokio::spawn(async move {
            let mut lines = tokio::io::BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                tracing::warn!(target: "convoy::shim", "{line}");
            }
        });
        let backend = LocalBackend { child, root };
        match ShimClient::connect(stdout, stdin).await {
            Ok(client) => Ok((backend, client, workdir)),
            Err(e) => {
                backend.stop().await;
                Err(WorkspaceError::Boot(e.to_string()))
            }
        }
    }

    /// Waits for the helper to exit (its stdin must be closed already) and
    /// removes whatever it could not.
    pub async fn stop(mut self) {
        if tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .is_err()
        {
            tracing::warn!("workspace helper did not exit in 10s; killing it");
            let _ = self.child.kill().await;
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}
