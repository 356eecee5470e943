//! The job's model: an HTTP endpoint or the offline script, plus the job's
//! running token totals (for budgets and the summary).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::limiter::LimiterStats;
use super::openai::OpenAiClient;
use super::script;
use super::types::{ChatReply, LlmError};
use crate::manifest::{LlmSpec, Price, Provider};
use crate::tasks::Task;

/// One per job, shared by every conversation.
#[derive(Debug)]
pub struct Llm {
    backend: Backend,
    price: Option<Price>,
    requests: AtomicU64,
    prompt_tokens: AtomicU64,
    completion_tokens: AtomicU64,
}

#[derive(Debug)]
enum Backend {
    OpenAi(Box<OpenAiClient>),
    Script,
}

/// The model side of `summary.json` (read back by `convoy report`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LlmReport {
    /// Replies received.
    pub requests: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// In the unit of `llm.price`, when prices are given.
    pub cost: Option<f64>,
    pub retries_by_reason: BTreeMap<String, u64>,
    /// The adaptive in-flight limit: ceiling, now, lowest, cuts.
    pub limiter: Option<LimiterStats>,
    pub outages: u64,
    pub outage_s: f64,
}

impl LlmReport {
    /// One line for people: retries by reason, the limiter, outages, cost;
    /// empty when there is nothing to say.
    pub fn render(&self) -> String {
        let mut parts = Vec::new();
        if !self.retries_by_reason.is_empty() {
            let r: Vec<String> = self
                .retries_by_reason
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect();
            parts.push(format!("retries by reason: {}", r.join(", ")));
        }
        if let Some(lim) = self.limiter.filter(|lim| lim.cuts > 0) {
            parts.push(format!(
                "in-flight limit cut {} times (ceiling {}, lowest {}, end {})",
                lim.cuts, lim.ceiling, lim.lowest, lim.current
            ));
        }
        if self.outages > 0 {
            parts.push(format!(
                "{} endpoint outages ({:.1}s)",
                self.outages, self.outage_s
            ));
        }
        if let Some(cost) = self.cost {
            parts.push(format!("cost {cost:.4}"));
        }
        if parts.is_empty() {
            String::new()
        } else {
            format!("llm: {} requests; {}\n", self.requests, parts.join("; "))
        }
    }
}

impl Llm {
    pub fn new(spec: &LlmSpec) -> Result<Llm, LlmError> {
        let backend = match spec.provider {
            Provider::Openai => Backend::OpenAi(Box::new(OpenAiClient::new(spec)?)),
            Provider::Script => Backend::Script,
        };
        Ok(Llm {
            backend,
            price: spec.price,
            requests: AtomicU64::new(0),
            prompt_tokens: AtomicU64::new(0),
            completion_tokens: AtomicU64::new(0),
        })
    }

    /// Checks the `[llm]` table as `new` does, but a missing API key is a
    /// warning (returned), not an error: `convoy validate` runs where the
    /// key is not set.
    pub fn check(spec: &LlmSpec) -> Result<Option<String>, LlmError> {
        match spec.provider {
            Provider::Openai => OpenAiClient::check(spec),
            Provider::Script => Ok(None),
        }
    }

    /// One look at the endpoint before the job: unreachable, wrong path or
    /// rejected key is an error saying what to check. Nothing for `script`.
    pub async fn preflight(&self) -> Result<(), LlmError> {
        match &self.backend {
            Backend::OpenAi(c) => c.preflight().await,
            Backend::Script => Ok(()),
        }
    }

    /// Closes the idle HTTP connections, so the job ends with the file
    /// descriptors it started with. For after the last request.
    pub fn drop_idle_connections(&mut self) -> Result<(), LlmError> {
        match &mut self.backend {
            Backend::OpenAi(c) => c.drop_idle_connections(),
            Backend::Script => Ok(()),
        }
    }

    /// Retries so far by reason (what the progress line sums up).
    pub fn retries_by_reason(&self) -> BTreeMap<String, u64> {
        match &self.backend {
            Backend::OpenAi(c) => c.retries_by_reason(),
            Backend::Script => BTreeMap::new(),
        }
    }

    /// Requests in flight to the endpoint now.
    pub fn in_flight(&self) -> u64 {
        match &self.backend {
            Backend::OpenAi(c) => c.in_flight() as u64,
            Backend::Script => 0,
        }
    }

    /// The most requests in flight since the last call (for the monitor).
    pub fn take_in_flight_peak(&self) -> u64 {
        match &self.backend {
            Backend::OpenAi(c) => c.take_in_flight_peak() as u64,
            Backend::Script => 0,
        }
    }

    /// The ceiling of the in-flight limit (`llm.max_in_flight`; 0 for the
    /// script provider): the most connections the HTTP pool can need.
    pub fn in_flight_ceiling(&self) -> u64 {
        match &self.backend {
            Backend::OpenAi(c) => c.limiter_stats().ceiling as u64,
            Backend::Script => 0,
        }
    }

    /// Requests allowed in flight now (0 for the script provider).
    pub fn limit(&self) -> u64 {
        match &self.backend {
            Backend::OpenAi(c) => c.limit() as u64,
            Backend::Script => 0,
        }
    }

    /// Waits while the endpoint is down; an error once the job gave up.
    pub async fn wait_up(&self) -> Result<(), LlmError> {
        match &self.backend {
            Backend::OpenAi(c) => c.wait_up().await,
            Backend::Script => Ok(()),
        }
    }

    /// Tokens used by the whole job so far (prompt, completion).
    pub fn tokens_used(&self) -> (u64, u64) {
        (
            self.prompt_tokens.load(Ordering::Relaxed),
            self.completion_tokens.load(Ordering::Relaxed),
        )
    }

    pub fn price(&self) -> Option<Price> {
        self.price
    }

    pub fn report(&self) -> LlmReport {
        let (prompt, completion) = self.tokens_used();
        let (limiter, retries_by_reason, (outages, outage_s)) = match &self.backend {
            Backend::OpenAi(c) => (Some(c.limiter_stats()), c.retries_by_reason(), c.outages()),
            Backend::Script => (None, BTreeMap::new(), (0, 0.0)),
        };
        LlmReport {
            requests: self.requests.load(Ordering::Relaxed),
            prompt_tokens: prompt,
            completion_tokens: completion,
            cost: self.price.map(|p| p.cost(prompt, completion)),
            retries_by_reason,
            limiter,
            outages,
            outage_s,
        }
    }

    /// The model's next reply to `messages` in `task`'s conversation.
    pub async fn complete(
        &self,
        task: &Task,
        messages: &[Value],
        tools: &Value,
    ) -> Result<ChatReply, LlmError> {
        let reply = match &self.backend {
            Backend::OpenAi(c) => c.complete(messages, tools).await?,
            Backend::Script => script::reply(&task.vars, messages),
        };
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.prompt_tokens
            .fetch_add(reply.usage.prompt_tokens, Ordering::Relaxed);
        self.completion_tokens
            .fetch_add(reply.usage.completion_tokens, Ordering::Relaxed);
        Ok(reply)
    }
}
