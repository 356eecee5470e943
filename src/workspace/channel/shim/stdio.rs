//! The helper's stdio: requests in on stdin, responses out on stdout, one
//! JSON object per line (see [`super::super::protocol`]). Requests are
//! served concurrently; one writer batches responses into few writes.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;

use super::super::protocol::{
    ErrorKind, Hello, Op, Reply, Request, Response, HELLO, PROTOCOL_VERSION,
};
use super::sessions::Shim;

/// Runs the helper until stdin closes or `shutdown` arrives. With
/// `keep_on_eof`, a closed stdin leaves the sessions for the next helper.
pub async fn serve(
    root: PathBuf,
    keep_on_eof: bool,
    config: super::ShimConfig,
) -> anyhow::Result<()> {
    let shim = Arc::new(Shim::start(root, config).await?);
    if let (true, Some(limit)) = (shim.user_isolation, config.session_memory) {
        tokio::spawn(shim.clone().watch_memory(limit));
    }
    // A dead tmux server takes every session with it: clean up and end
    // this helper, so convoy starts a new one (see `server_watch`).
    let server = super::super::server_watch::server_pid(&shim.tmux).await;
    let watch = server.map(|pid| {
        let shim = shim.clone();
        tokio::spawn(async move {
            super::super::server_watch::gone(pid).await;
            eprintln!("the tmux server (pid {pid}) died; this helper ends so that a new one starts a new server");
            shim.shutdown().await;
            std::process::exit(3);
        })
    });

    let (tx, mut rx) = mpsc::unbounded_channel::<Response>();
    let mut stdout = stdio_writer();
    let hello = Hello {
        hello: HELLO.to_string(),
        version: PROTOCOL_VERSION,
        pid: std::process::id(),
    };
    let mut line = serde_json::to_vec(&hello)?;
    line.push(b'\n');
    stdout.write_all(&line).await?;
    stdout.flush().await?;

    // One writer: responses are batched into as few writes as possible.
    let writer = tokio::spawn(async move {
        let mut buf = Vec::new();
        while let Some(first) = rx.recv().await {
            buf.clear();
            let mut next = Some(first);
            while let Some(resp) = next {
                serde_json::to_writer(&mut buf, &resp).expect("responses serialize");
                buf.push(b'\n');
                next = rx.try_recv().ok();
            }
            if stdout.write_all(&buf).await.is_err() || stdout.flush().await.is_err() {
                break;
            }
        }
    });

    let mut lines = BufReader::new(stdio_reader()).lines();
    let mut shutdown_id = None;
    while let Some(line) = lines.next_line().await.context("reading requests")? {
        if line.trim().is_empty() {
            continue;
        }
        let req: Request = match serde_json::from_str(&line) {
            Ok(r) => r,
            Err(e) => {
                let id = serde_json::from_str::<serde_json::Value>(&line)
                    .ok()
                    .and_then(|v| v.get("id")?.as_u64())
                    .unwrap_or(0);
                let message = format!("bad request: {e}");
                let _ = tx.send(Response {
                    id,
                    reply: Reply::Error {
                        kind: ErrorKind::BadRequest,
                        message,
                    },
                });
                continue;
            }
        };
        if req.op == Op::Shutdown {
            shutdown_id = Some(req.id);
            break;
        }
        let shim = shim.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            let reply = shim.handle(req.op).await;
            // A reply made while the server died (a shell that "exited"
            // by its hangup) is not the command's: the helper is ending,
            // and the broken stream fails the request as retryable.
            if server.is_some_and(super::super::server_watch::is_gone) {
                return;
            }
            let _ = tx.send(Response { id: req.id, reply });
        });
    }

    // From here on the server goes on purpose.
    if let Some(w) = watch {
        w.abort();
    }
    if shutdown_id.is_some() || !keep_on_eof {
        shim.shutdown().await;
    }
    if let Some(id) = shutdown_id {
        let _ = tx.send(Response {
            id,
            reply: Reply::Done,
        });
    }
    drop(tx);
    // Requests still running hold senders; give the writer a moment to
    // flush the shutdown reply, never forever.
    let _ = tokio::time::timeout(Duration::from_secs(2), writer).await;
    Ok(())
}

/// Stdin as a non-blocking pipe when it is one (it is, under convoy and in
/// a non-TTY `docker exec`): tokio's own stdin reads on a blocking thread,
/// which adds a thread hand-off to every request.
fn stdio_reader() -> Box<dyn tokio::io::AsyncRead + Unpin + Send> {
    use std::os::fd::AsFd;
    std::io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .ok()
        .and_then(|fd| tokio::net::unix::pipe::Receiver::from_owned_fd(fd).ok())
        .map_or_else(
            || Box::new(tokio::io::stdin()) as Box<dyn tokio::io::AsyncRead + Unpin + Send>,
            |p| Box::new(p),
        )
}

/// Stdout likewise, for every response.
fn stdio_writer() -> Box<dyn tokio::io::AsyncWrite + Unpin + Send> {
    use std::os::fd::AsFd;
    std::io::stdout()
        .as_fd()
        .try_clone_to_owned()
        .ok()
        .and_then(|fd| tokio::net::unix::pipe::Sender::from_owned_fd(fd).ok())
        .map_or_else(
            || Box::new(tokio::io::stdout()) as Box<dyn tokio::io::AsyncWrite + Unpin + Send>,
            |p| Box::new(p),
        )
}
