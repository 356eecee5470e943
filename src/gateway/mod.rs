//! The model gateway's logic (issue 14, external agents): who may call,
//! what a call is answered with, and what is recorded of it. The transport
//! is the workspace's (`workspace::gateway`); the upstream call goes
//! through convoy's own model client behind [`Forward`].
//!
//! Each running external conversation holds a [`Grant`]: a token of its
//! own, valid while the grant lives (dropping it revokes the token on
//! every path). A call is answered:
//! - 401 with an unknown or revoked token (not recorded);
//! - the model list for `GET /v1/models`;
//! - 400 for a body that is not a JSON object with a `messages` array;
//! - 400 with `code: "max_steps"` past `agent.max_steps` calls (a status
//!   clients do not retry; the conversation is then `max_steps`);
//! - otherwise what the endpoint answered (the whole reply, as JSON or,
//!   for `stream: true`, as server-sent events), or the endpoint's error
//!   status and message when it refused the request, or 503 when it could
//!   not be reached within convoy's retries.

mod chain;
mod sse;

use std::collections::HashMap;
use std::future::Future;
use std::io::Read;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::Serialize;
use serde_json::{json, Map, Value};

pub use chain::{Added, Chain};

use crate::llm::{turn_record, Usage};
use crate::workspace::gateway::{GatewayCall, GatewayHandler, GatewayReply};

/// The upstream side of a call: convoy's model client.
pub trait Forward: Send + Sync + 'static {
    /// Sends the agent's request body on (the client sets the model, the
    /// key and the job's options) and returns the whole reply.
    fn forward(
        &self,
        body: Map<String, Value>,
    ) -> impl Future<Output = Result<Forwarded, ForwardError>> + Send;
}

/// A conversation's way upstream, as the gateway holds it (any
/// [`Forward`], boxed: see [`forwarder`]).
pub type Forwarder = Arc<
    dyn Fn(
            Map<String, Value>,
        ) -> futures::future::BoxFuture<'static, Result<Forwarded, ForwardError>>
        + Send
        + Sync,
>;

/// `f` as a [`Forwarder`].
pub fn forwarder<F: Forward>(f: F) -> Forwarder {
    let f = Arc::new(f);
    Arc::new(move |body| {
        let f = f.clone();
        Box::pin(async move { f.forward(body).await })
    })
}

/// A reply from the endpoint: the `chat.completion` as received, and
/// parsed.
pub use crate::llm::Forwarded;

/// Why a call got no reply: what the agent is answered, and whether the
/// job cannot go on (the endpoint refused convoy's credentials, or stayed
/// down past `llm.outage_timeout`).
#[derive(Debug, Clone)]
pub struct ForwardError {
    pub status: u16,
    /// The endpoint's own error body when it answered one (so the agent's
    /// client reads its `error.code`), else convoy's.
    pub body: Value,
    pub fatal: Option<String>,
}

impl From<crate::llm::LlmError> for ForwardError {
    fn from(e: crate::llm::LlmError) -> ForwardError {
        let fatal = e.is_fatal().then(|| e.to_string());
        let (status, body) = match e.upstream() {
            Some((status, raw)) => (
                status,
                serde_json::from_str(raw).unwrap_or_else(|_| error_body(raw, "upstream_error")),
            ),
            // Retries used up, or the endpoint is down.
            None => (503, error_body(&e.to_string(), "upstream_unavailable")),
        };
        ForwardError {
            status,
            body,
            fatal,
        }
    }
}

impl Forward for crate::llm::ModelHandle {
    async fn forward(&self, body: Map<String, Value>) -> Result<Forwarded, ForwardError> {
        Ok(crate::llm::ModelHandle::forward(self, body).await?)
    }
}

/// One call as `calls.jsonl` keeps it.
#[derive(Debug, Clone, Serialize)]
pub struct CallRecord {
    pub id: String,
    pub attempt: u32,
    /// 1 for the conversation's first call.
    pub seq: u32,
    pub latency_s: f64,
    pub usage: Usage,
    /// The HTTP status the agent got.
    pub status: u16,
    pub messages_added: Vec<Value>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub restart: bool,
    /// The endpoint's reply, or the error the agent got.
    pub response: Value,
    /// The first 16 hex digits of the SHA-256 of the request's `tools`.
    pub tools_hash: String,
}

/// A running external conversation, as its calls find it.
pub struct Conversation {
    pub id: String,
    pub attempt: u32,
    model: Forwarder,
    max_steps: u32,
    state: Mutex<State>,
    /// Where each call is recorded as it happens.
    record: Box<dyn Fn(CallRecord) + Send + Sync>,
}

#[derive(Default)]
struct State {
    calls: u32,
    chain: Chain,
    usage: Usage,
    over_max_steps: bool,
    /// The last answered request's `tools`, and their hash (an agent sends
    /// the same tools with every call: hashed once).
    last_tools: Option<Value>,
    last_hash: Option<String>,
    /// The record of the chain's last reply (`llm::turn_record`), if any.
    last_turn: Option<Value>,
    fatal: Option<String>,
}

/// What a conversation's calls came to, once it ended.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    pub calls: u32,
    pub usage: Usage,
    /// It asked for more than `agent.max_steps` calls.
    pub over_max_steps: bool,
    /// The longest chain: the last request's messages and its reply.
    pub messages: Vec<Value>,
    /// The trajectory's `convoy.turns`: the last reply's record, when the
    /// job keeps token data. The earlier replies in `messages` are the
    /// agent's copies sent back, so their token data is only in
    /// `calls.jsonl` (each call's `response`).
    pub turns: Vec<Value>,
    /// The last request's `tools`.
    pub tools: Option<Value>,
    /// Why the job cannot go on, if a call found out.
    pub fatal: Option<String>,
}

impl Conversation {
    pub fn new(
        id: String,
        attempt: u32,
        model: Forwarder,
        max_steps: u32,
        record: impl Fn(CallRecord) + Send + Sync + 'static,
    ) -> Conversation {
        Conversation {
            id,
            attempt,
            model,
            max_steps,
            state: Mutex::default(),
            record: Box::new(record),
        }
    }

    pub fn summary(&self) -> Summary {
        let s = self.state.lock().expect("state lock");
        Summary {
            calls: s.calls,
            usage: s.usage,
            over_max_steps: s.over_max_steps,
            messages: s.chain.messages().to_vec(),
            turns: s.last_turn.iter().cloned().collect(),
            tools: s.last_tools.clone(),
            fatal: s.fatal.clone(),
        }
    }
}

/// The tokens of the running conversations.
#[derive(Default)]
pub struct Tokens {
    live: Mutex<HashMap<String, Arc<Conversation>>>,
}

/// A conversation's token, valid while this lives.
pub struct Grant {
    pub token: String,
    pub conversation: Arc<Conversation>,
    tokens: Arc<Tokens>,
}

impl Drop for Grant {
    fn drop(&mut self) {
        self.tokens
            .live
            .lock()
            .expect("tokens lock")
            .remove(&self.token);
    }
}

impl Tokens {
    /// A new token for `conversation`.
    pub fn grant(self: &Arc<Self>, conversation: Conversation) -> Grant {
        let conversation = Arc::new(conversation);
        let token = format!("convoy-{}", random_hex(24));
        self.live
            .lock()
            .expect("tokens lock")
            .insert(token.clone(), conversation.clone());
        Grant {
            token,
            conversation,
            tokens: self.clone(),
        }
    }

    fn find(&self, authorization: Option<&str>) -> Option<Arc<Conversation>> {
        let token = authorization?.strip_prefix("Bearer ")?.trim();
        self.live.lock().expect("tokens lock").get(token).cloned()
    }
}

/// `n` random bytes from the kernel, as hex.
fn random_hex(n: usize) -> String {
    let mut bytes = vec![0u8; n];
    let read = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes));
    if read.is_err() {
        // Not secret then, but still unique per conversation.
        bytes.iter_mut().for_each(|b| *b = fastrand::u8(..));
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Answers the gateway's calls for the job's conversations.
pub struct Service {
    pub tokens: Arc<Tokens>,
    /// The model name agents see (`llm.model`).
    pub model: String,
}

use crate::workspace::channel::protocol::openai_error as error_body;

fn error(status: u16, message: &str, code: &str) -> GatewayReply {
    GatewayReply::json(status, &error_body(message, code))
}

impl GatewayHandler for Service {
    async fn handle(&self, call: GatewayCall) -> GatewayReply {
        let Some(conv) = self.tokens.find(call.authorization.as_deref()) else {
            return error(
                401,
                "unknown or expired API key: each conversation gets its own in OPENAI_API_KEY, valid while it runs",
                "invalid_api_key",
            );
        };
        if call.method == "GET" {
            return GatewayReply::json(
                200,
                &json!({"object": "list", "data": [{"id": self.model, "object": "model", "owned_by": "convoy"}]}),
            );
        }
        let body: Map<String, Value> = match serde_json::from_str(&call.body) {
            Ok(Value::Object(m)) if m.get("messages").is_some_and(Value::is_array) => m,
            _ => {
                return error(
                    400,
                    "the body must be a JSON object with a `messages` array",
                    "invalid_request",
                )
            }
        };
        complete(&conv, body).await
    }
}

async fn complete(conv: &Conversation, body: Map<String, Value>) -> GatewayReply {
    let seq = {
        let mut s = conv.state.lock().expect("state lock");
        if s.calls >= conv.max_steps {
            s.over_max_steps = true;
            return error(
                400,
                &format!(
                    "this conversation used its {} model calls (agent.max_steps)",
                    conv.max_steps
                ),
                "max_steps",
            );
        }
        s.calls += 1;
        s.calls
    };
    let stream = body.get("stream") == Some(&Value::Bool(true));
    // (A `Map` indexed by a missing key panics: `get` it.)
    let include_usage = body
        .get("stream_options")
        .and_then(|o| o.get("include_usage"))
        == Some(&Value::Bool(true));
    let messages = body
        .get("messages")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let sent = body.get("tools");
    let cached = {
        let s = conv.state.lock().expect("state lock");
        s.last_hash
            .clone()
            .filter(|_| s.last_tools.as_ref() == sent)
    };
    // `Some(tools)`: other tools than the last answered request's.
    let (tools_hash, tools) = match cached {
        Some(h) => (h, None),
        None => (hash(sent.unwrap_or(&Value::Null)), Some(sent.cloned())),
    };
    let clock = Instant::now();
    let forwarded = (conv.model)(body).await;
    let latency_s = clock.elapsed().as_secs_f64();
    let (reply, status, response, usage, added) = match forwarded {
        Ok(f) => {
            let added = {
                let mut s = conv.state.lock().expect("state lock");
                s.usage.add(&f.reply.usage);
                if let Some(tools) = tools {
                    s.last_tools = tools;
                    s.last_hash = Some(tools_hash.clone());
                }
                let added = s.chain.extend(messages, f.reply.message);
                s.last_turn = turn_record(s.chain.messages().len() - 1, f.reply.record);
                added
            };
            let reply = if stream {
                GatewayReply {
                    status: 200,
                    content_type: "text/event-stream".into(),
                    body: sse::events(&f.response, include_usage),
                }
            } else {
                GatewayReply::json(200, &f.response)
            };
            (reply, 200, f.response, f.reply.usage, Some(added))
        }
        Err(e) => {
            if let Some(why) = e.fatal {
                conv.state
                    .lock()
                    .expect("state lock")
                    .fatal
                    .get_or_insert(why);
            }
            let reply = GatewayReply::json(e.status, &e.body);
            (reply, e.status, e.body, Usage::default(), None)
        }
    };
    // A call that got no reply adds nothing: its messages come again with
    // the next call that does.
    let added = added.unwrap_or(Added {
        messages: Vec::new(),
        restart: false,
    });
    (conv.record)(CallRecord {
        id: conv.id.clone(),
        attempt: conv.attempt,
        seq,
        latency_s,
        usage,
        status,
        messages_added: added.messages,
        restart: added.restart,
        response,
        tools_hash,
    });
    reply
}

fn hash(v: &Value) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(v.to_string().as_bytes());
    digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests;
