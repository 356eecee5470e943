//! The run's side of `convoy ctl`: a unix socket `convoy.ctl` in the run
//! directory, mode 0600 and never reachable with a looser one (bound in a
//! private 0700 directory, restricted, then moved into place), removed
//! when the server is dropped. A socket left by a crashed run is found at start
//! (the journal's lock proves no live run owns it) and replaced.

use std::fs::File;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use super::{short_path, SOCKET};
use crate::engine::{Command, EngineHandle};

/// The longest request line read.
const MAX_REQUEST: u64 = 4096;

/// Serves the socket while it lives; dropping it stops serving and
/// removes the socket.
pub struct CtlServer {
    path: PathBuf,
    task: tokio::task::JoinHandle<()>,
}

impl CtlServer {
    /// Binds `convoy.ctl` in `run_dir` and serves `engine` on it. The
    /// caller holds the run directory's lock.
    pub fn start(run_dir: &Path, engine: EngineHandle) -> std::io::Result<CtlServer> {
        let dir = File::open(run_dir)?;
        let path = run_dir.join(SOCKET);
        match std::fs::remove_file(&path) {
            Ok(()) => tracing::info!(
                "removed a stale control socket `{}` left by a run that ended without removing it",
                path.display()
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        // Bound in a directory only we can enter, restricted, then moved
        // into place: the socket is never reachable with a looser mode.
        let private = format!(".{SOCKET}.{}", std::process::id());
        let private_path = run_dir.join(&private);
        let _ = std::fs::remove_dir_all(&private_path);
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&private_path)?;
        let temp = format!("{private}/{SOCKET}");
        let bound = UnixListener::bind(short_path(&dir, &temp)).and_then(|listener| {
            std::fs::set_permissions(run_dir.join(&temp), std::fs::Permissions::from_mode(0o600))?;
            std::fs::rename(run_dir.join(&temp), &path)?;
            Ok(listener)
        });
        let _ = std::fs::remove_dir_all(&private_path);
        let listener = bound?;
        let task = tokio::spawn(async move {
            loop {
                match listener.accept().await {
                    Ok((stream, _)) => {
                        tokio::spawn(serve(stream, engine.clone()));
                    }
                    Err(e) => {
                        tracing::warn!("the control socket stopped accepting: {e}");
                        return;
                    }
                }
            }
        });
        Ok(CtlServer { path, task })
    }
}

impl Drop for CtlServer {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}

/// One connection: one request line, one reply line.
async fn serve(stream: UnixStream, engine: EngineHandle) {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(tokio::io::AsyncReadExt::take(read, MAX_REQUEST));
    if reader.read_line(&mut line).await.is_err() {
        return;
    }
    let reply = answer(line.trim(), &engine).await;
    let mut text = reply.to_string();
    text.push('\n');
    let _ = write.write_all(text.as_bytes()).await;
}

async fn answer(request: &str, engine: &EngineHandle) -> serde_json::Value {
    // A task id may hold spaces: everything after `cancel ` is the id.
    if let Some(id) = request.strip_prefix("cancel ") {
        return match engine.cancel(id.to_string()).await {
            Ok(()) => json!({"ok": true}),
            Err(e) => json!({"ok": false, "error": e}),
        };
    }
    let mut words = request.split_whitespace();
    let ended = || json!({"ok": false, "error": "the run is ending"});
    match (words.next(), words.next(), words.next()) {
        (Some("status"), None, None) => match engine.status().await {
            Some(s) => json!({"ok": true, "status": s}),
            None => ended(),
        },
        (Some("pause"), None, None) => {
            engine.send(Command::Pause);
            json!({"ok": true})
        }
        (Some("resume"), None, None) => {
            engine.send(Command::Resume);
            json!({"ok": true})
        }
        (Some("workers"), Some(n), None) => match n.parse::<usize>() {
            Ok(n) if n >= 1 => {
                engine.send(Command::Workers(n));
                json!({"ok": true})
            }
            _ => {
                json!({"ok": false, "error": format!("workers: `{n}` is not a number of at least 1")})
            }
        },
        _ => json!({
            "ok": false,
            "error": format!("unknown request `{request}`: expected pause, resume, workers N, cancel ID or status")
        }),
    }
}
