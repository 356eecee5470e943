//! The model gateway's convoy end: fetches the model calls agents made to
//! the helper's loopback server (see `channel::shim::gateway`) and answers
//! each with what a [`GatewayHandler`] makes of it. The calls come in
//! batches from a few long polls over the helper's stream, so a burst of
//! calls costs few round trips; each call is handled on a task of its own.
//! A helper that is replaced gets the gateway again, on the same port.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use super::channel::protocol::{GatewayAnswer, Op, Reply};
use super::error::WorkspaceError;
use super::shared::Inner;
use super::Workspace;

pub use super::channel::protocol::GatewayCall;

/// How many long polls wait on the helper at once.
const POLLS: usize = 4;
/// The most calls one poll brings.
const BATCH: u32 = 64;
/// A pause after a poll failed (the helper is being replaced).
const BACKOFF: Duration = Duration::from_millis(200);

/// What answers the gateway's calls.
pub trait GatewayHandler: Send + Sync + 'static {
    fn handle(&self, call: GatewayCall) -> impl Future<Output = GatewayReply> + Send;
}

/// An answer for the agent: its HTTP status, content type and body.
#[derive(Debug, Clone, PartialEq)]
pub struct GatewayReply {
    pub status: u16,
    pub content_type: String,
    pub body: String,
}

impl GatewayReply {
    /// A JSON body with `status`.
    pub fn json(status: u16, body: &serde_json::Value) -> GatewayReply {
        GatewayReply {
            status,
            content_type: "application/json".into(),
            body: body.to_string(),
        }
    }
}

/// The running gateway: its port, and the polls that serve it, which stop
/// when it is dropped.
pub struct GatewayServer {
    pub port: u16,
    polls: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for GatewayServer {
    fn drop(&mut self) {
        for p in &self.polls {
            p.abort();
        }
    }
}

impl Workspace {
    /// Starts the gateway in the workspace (in every container, on the
    /// same loopback port: each container has its own loopback) and serves
    /// it with `handler` until the returned server is dropped.
    pub async fn serve_gateway<H: GatewayHandler>(
        &self,
        handler: Arc<H>,
    ) -> Result<GatewayServer, WorkspaceError> {
        let mut port = None;
        let mut polls = Vec::new();
        for member in &self.members {
            let inner = member.inner();
            let p = open(&inner, port).await?;
            port = Some(p);
            polls.extend(
                (0..POLLS).map(|_| tokio::spawn(poll(Arc::downgrade(&inner), handler.clone(), p))),
            );
        }
        let port = port.expect("a workspace has a container");
        Ok(GatewayServer { port, polls })
    }
}

async fn open(inner: &Inner, port: Option<u16>) -> Result<u16, WorkspaceError> {
    match inner.call(Op::GatewayOpen { port }).await? {
        Reply::GatewayPort { port } => Ok(port),
        other => Err(WorkspaceError::unexpected(other)),
    }
}

/// One long poll after another while the workspace lives.
async fn poll<H: GatewayHandler>(inner: std::sync::Weak<Inner>, handler: Arc<H>, port: u16) {
    loop {
        let Some(ws) = inner.upgrade() else { return };
        match ws.call(Op::GatewayNext { max: BATCH }).await {
            Ok(Reply::Gateway { calls }) => {
                for call in calls {
                    tokio::spawn(answer(inner.clone(), handler.clone(), call));
                }
            }
            other => {
                if let Err(e) = &other {
                    tracing::debug!("gateway poll failed: {e}");
                }
                drop(ws);
                tokio::time::sleep(BACKOFF).await;
                // A new helper has no gateway yet: the same port again
                // (the sessions were told it). Idempotent on the old one.
                let Some(ws) = inner.upgrade() else { return };
                if let Err(e) = open(&ws, Some(port)).await {
                    tracing::warn!("the model gateway could not open again on port {port}: {e}");
                }
            }
        }
    }
}

async fn answer<H: GatewayHandler>(
    inner: std::sync::Weak<Inner>,
    handler: Arc<H>,
    call: GatewayCall,
) {
    let id = call.call;
    let reply = handler.handle(call).await;
    let Some(ws) = inner.upgrade() else { return };
    let sent = ws
        .call(Op::GatewayAnswer(GatewayAnswer {
            call: id,
            status: reply.status,
            content_type: reply.content_type,
            body: reply.body,
        }))
        .await;
    if let Err(e) = sent {
        // Its client sees the connection end; an agent retries.
        tracing::debug!("gateway call {id}: the answer did not reach the helper: {e}");
    }
}
