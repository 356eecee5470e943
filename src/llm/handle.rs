//! One conversation's model: a cheap handle built from its task's row by
//! `Llm::for_task`. It owns what it needs (the endpoint's shared client,
//! or the script the row plays), so a conversation spawned as its own tokio
//! task can hold it, and the job's token totals are shared through it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde_json::{Map, Value};

use super::openai::OpenAiClient;
use super::route::Sticky;
use super::script::Script;
use super::types::{ChatReply, Forwarded, LlmError, Usage};

/// The job's running totals, added to by every conversation's handle and
/// read by budgets, the monitor and the summary.
#[derive(Debug, Default)]
pub(super) struct Totals {
    requests: AtomicU64,
    prompt_tokens: AtomicU64,
    completion_tokens: AtomicU64,
}

impl Totals {
    fn record(&self, usage: &Usage) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.prompt_tokens
            .fetch_add(usage.prompt_tokens, Ordering::Relaxed);
        self.completion_tokens
            .fetch_add(usage.completion_tokens, Ordering::Relaxed);
    }

    /// Replies received so far.
    pub(super) fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Tokens so far (prompt, completion).
    pub(super) fn tokens(&self) -> (u64, u64) {
        (
            self.prompt_tokens.load(Ordering::Relaxed),
            self.completion_tokens.load(Ordering::Relaxed),
        )
    }
}

/// The model as one conversation sees it.
#[derive(Debug, Clone)]
pub struct ModelHandle {
    totals: Arc<Totals>,
    source: Source,
}

#[derive(Debug, Clone)]
pub(super) enum Source {
    /// The job's endpoints, their limiters and outage gates shared by
    /// all; the endpoint this conversation is on, its own.
    Endpoint(Arc<OpenAiClient>, Arc<Sticky>),
    /// The policy this conversation's row holds. A row the check before
    /// the job would refuse keeps its error, which the first request
    /// returns: building a handle never fails.
    Script(Result<Script, String>),
}

impl ModelHandle {
    pub(super) fn new(totals: Arc<Totals>, source: Source) -> ModelHandle {
        ModelHandle { totals, source }
    }

    /// The model's next reply to `messages`.
    pub async fn complete(&self, messages: &[Value], tools: &Value) -> Result<ChatReply, LlmError> {
        let reply = match &self.source {
            Source::Endpoint(c, sticky) => c.complete(sticky, messages, tools).await?,
            Source::Script(Ok(script)) => script.reply(messages),
            Source::Script(Err(e)) => return Err(LlmError::Config(e.clone())),
        };
        self.totals.record(&reply.usage);
        Ok(reply)
    }

    /// The model's reply to a request an external agent wrote itself (the
    /// model gateway), sent as `forward` says, with everything `complete`
    /// has: retries, limits, the outage gate, the job's totals. The script
    /// provider plays the row's next turn, as for `complete`.
    pub async fn forward(&self, request: Map<String, Value>) -> Result<Forwarded, LlmError> {
        let forwarded = match &self.source {
            Source::Endpoint(c, sticky) => c.forward(sticky, request).await?,
            Source::Script(Ok(script)) => script.forward(&request),
            Source::Script(Err(e)) => return Err(LlmError::Config(e.clone())),
        };
        self.totals.record(&forwarded.reply.usage);
        Ok(forwarded)
    }
}
