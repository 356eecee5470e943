//! The client end of the helper protocol: one stream, many sessions'
//! requests multiplexed by request id.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use thiserror::Error;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::protocol::{Hello, Op, Reply, Request, Response, HELLO, PROTOCOL_VERSION};

#[derive(Debug, Error, Clone)]
pub enum ChannelError {
    /// The stream to the helper broke; the request may or may not have run.
    /// Retryable once the helper is back.
    #[error("the workspace helper stream broke: {0}")]
    Broken(String),
    #[error("the workspace helper did not start: {0}")]
    Handshake(String),
}

type Pending = Arc<Mutex<Option<HashMap<u64, oneshot::Sender<Reply>>>>>;

/// Shared between the client and its reader and writer tasks: the pending
/// calls (`None` once the stream broke) and the signal that it broke.
#[derive(Clone)]
struct Stream {
    pending: Pending,
    broken: CancellationToken,
}

/// A connected helper. Cheap to share (`Arc`); every call is independent.
pub struct ShimClient {
    next_id: AtomicU64,
    /// `None` once the stream broke: new calls fail at once.
    pending: Pending,
    broken: CancellationToken,
    lines: mpsc::UnboundedSender<Vec<u8>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl ShimClient {
    /// Reads the helper's hello and starts the reader and writer tasks.
    pub async fn connect<R, W>(reader: R, writer: W) -> Result<ShimClient, ChannelError>
    where
        R: AsyncRead + Unpin + Send + 'static,
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let mut reader = BufReader::new(reader);
        let mut first = String::new();
        reader
            .read_line(&mut first)
            .await
            .map_err(|e| ChannelError::Handshake(e.to_string()))?;
        if first.is_empty() {
            return Err(ChannelError::Handshake(
                "it exited before saying hello".into(),
            ));
        }
        let hello: Hello = serde_json::from_str(first.trim()).map_err(|e| {
            ChannelError::Handshake(format!("unexpected first line {first:?}: {e}"))
        })?;
        if hello.hello != HELLO || hello.version != PROTOCOL_VERSION {
            return Err(ChannelError::Handshake(format!(
                "it speaks {} version {}, this convoy speaks {HELLO} version {PROTOCOL_VERSION}",
                hello.hello, hello.version
            )));
        }

        let stream = Stream {
            pending: Arc::new(Mutex::new(Some(HashMap::new()))),
            broken: CancellationToken::new(),
        };
        let (lines_tx, lines_rx) = mpsc::unbounded_channel();
        let reader_task = tokio::spawn(read_responses(reader, stream.clone()));
        let writer_task = tokio::spawn(write_requests(writer, lines_rx, stream.clone()));
        Ok(ShimClient {
            next_id: AtomicU64::new(1),
            pending: stream.pending,
            broken: stream.broken,
            lines: lines_tx,
            tasks: vec![reader_task, writer_task],
        })
    }

    /// Sends one request and waits for its reply.
    pub async fn call(&self, op: Op) -> Result<Reply, ChannelError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let line = serde_json::to_vec(&Request { id, op }).expect("requests serialize");
        self.exchange(id, line).await
    }

    /// Proves the helper still reads and answers requests, without
    /// touching tmux: an op it does not know gets an error reply at once
    /// from its read loop, and any reply will do.
    pub async fn ping(&self) -> Result<(), ChannelError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let line = format!(r#"{{"id":{id},"op":"ping"}}"#).into_bytes();
        self.exchange(id, line).await.map(|_| ())
    }

    /// Gives up on the helper (it stopped answering): every waiting call
    /// fails as broken, and the link counts as broken from now on.
    pub fn abandon(&self) {
        break_stream(&Stream {
            pending: self.pending.clone(),
            broken: self.broken.clone(),
        });
    }

    async fn exchange(&self, id: u64, mut line: Vec<u8>) -> Result<Reply, ChannelError> {
        let (tx, rx) = oneshot::channel();
        {
            let mut guard = self.pending.lock().expect("pending lock");
            let map = guard
                .as_mut()
                .ok_or_else(|| ChannelError::Broken("the stream is closed".into()))?;
            map.insert(id, tx);
        }
        // If this call is dropped while waiting, its entry must not stay
        // behind: remove it on every path.
        let _entry = PendingEntry {
            pending: &self.pending,
            id,
        };
        line.push(b'\n');
        self.lines
            .send(line)
            .map_err(|_| ChannelError::Broken("the writer stopped".into()))?;
        rx.await
            .map_err(|_| ChannelError::Broken("the helper closed the stream".into()))
    }

    pub fn is_broken(&self) -> bool {
        self.broken.is_cancelled()
    }

    /// Resolves when the stream has broken.
    pub async fn closed(&self) {
        self.broken.cancelled().await
    }
}

impl Drop for ShimClient {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

struct PendingEntry<'a> {
    pending: &'a Pending,
    id: u64,
}

impl Drop for PendingEntry<'_> {
    fn drop(&mut self) {
        if let Some(map) = self.pending.lock().expect("pending lock").as_mut() {
            map.remove(&self.id);
        }
    }
}

/// Marks the stream broken and fails every waiting call.
fn break_stream(stream: &Stream) {
    // Broken first, then wake the waiters (by dropping their senders): a
    // woken caller that retries at once must already see the break and
    // wait for the recovered link, not try this one again.
    stream.broken.cancel();
    stream.pending.lock().expect("pending lock").take();
}

async fn read_responses<R: AsyncRead + Unpin>(reader: BufReader<R>, stream: Stream) {
    let pending = &stream.pending;
    let mut lines = reader.lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let Ok(resp) = serde_json::from_str::<Response>(&line) else {
            tracing::warn!("workspace helper sent an unreadable line: {line:?}");
            continue;
        };
        let waiter = pending
            .lock()
            .expect("pending lock")
            .as_mut()
            .and_then(|m| m.remove(&resp.id));
        if let Some(tx) = waiter {
            let _ = tx.send(resp.reply);
        }
    }
    break_stream(&stream);
}

async fn write_requests<W: AsyncWrite + Unpin>(
    mut writer: W,
    mut rx: mpsc::UnboundedReceiver<Vec<u8>>,
    stream: Stream,
) {
    let mut buf = Vec::new();
    while let Some(first) = rx.recv().await {
        buf.clear();
        buf.extend_from_slice(&first);
        while let Ok(more) = rx.try_recv() {
            buf.extend_from_slice(&more);
        }
        if writer.write_all(&buf).await.is_err() || writer.flush().await.is_err() {
            break;
        }
    }
    break_stream(&stream);
}
