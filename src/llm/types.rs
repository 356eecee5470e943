//! What a model call returns, and how it fails.

use serde::Serialize;
use serde_json::{Map, Value};
use thiserror::Error;

/// Token usage, summed over a conversation's requests.
#[derive(Debug, Clone, Copy, Default, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
    /// Requests that were sent again (429, 5xx, timeouts, connection
    /// errors, replies without a choice).
    #[serde(default)]
    pub retries: u64,
    /// Tool calls the model got wrong (arguments not JSON, no such tool):
    /// each was answered with an error observation.
    #[serde(default)]
    pub invalid_tool_calls: u64,
}

impl Usage {
    pub fn add(&mut self, other: &Usage) {
        self.prompt_tokens += other.prompt_tokens;
        self.completion_tokens += other.completion_tokens;
        self.total_tokens += other.total_tokens;
        self.retries += other.retries;
        self.invalid_tool_calls += other.invalid_tool_calls;
    }

    /// Reads an OpenAI `usage` object; missing fields count as 0.
    pub fn from_json(v: Option<&Value>) -> Usage {
        let get = |k: &str| {
            v.and_then(|u| u.get(k))
                .and_then(Value::as_u64)
                .unwrap_or(0)
        };
        let (prompt, completion) = (get("prompt_tokens"), get("completion_tokens"));
        Usage {
            prompt_tokens: prompt,
            completion_tokens: completion,
            total_tokens: v
                .and_then(|u| u.get("total_tokens"))
                .and_then(Value::as_u64)
                .unwrap_or(prompt + completion),
            retries: 0,
            invalid_tool_calls: 0,
        }
    }
}

/// The answer to a request an external agent wrote itself
/// (`ModelHandle::forward`): the endpoint's JSON reply as received, for the
/// agent, and the same reply parsed, for usage and the trajectory.
#[derive(Debug, Clone)]
pub struct Forwarded {
    pub response: Value,
    pub reply: ChatReply,
}

/// One model reply: the assistant message exactly as received.
#[derive(Debug, Clone)]
pub struct ChatReply {
    pub message: Value,
    pub finish_reason: Option<String>,
    pub usage: Usage,
    /// What convoy keeps about this turn beside the message (the
    /// trajectory's `convoy.turns`): with `llm.logprobs` or
    /// `llm.return_token_ids`, the token data the endpoint returned (see
    /// `tokens`). Empty otherwise, and then nothing is recorded.
    pub record: Map<String, Value>,
}

/// A reply's `record` as one entry of the trajectory's `convoy.turns`:
/// `{"message": <its message's index in the trajectory's messages>,
/// ...record}`; `None` for an empty record, which is not recorded.
pub fn turn_record(message: usize, record: Map<String, Value>) -> Option<Value> {
    if record.is_empty() {
        return None;
    }
    let mut turn = Map::with_capacity(record.len() + 1);
    turn.insert("message".into(), Value::from(message));
    turn.extend(record);
    Some(Value::Object(turn))
}

#[derive(Debug, Error)]
pub enum LlmError {
    /// The endpoint rejected our credentials: no task can succeed, so the
    /// job stops (exit 4).
    #[error("the LLM endpoint rejected the credentials (HTTP {status}): {message}")]
    Auth {
        status: u16,
        message: String,
        body: String,
    },
    /// The conversation no longer fits the model's context.
    #[error("context limit: {message}")]
    ContextLimit {
        status: u16,
        message: String,
        body: String,
    },
    #[error("the LLM endpoint refused the request (HTTP {status}): {message}")]
    Rejected {
        status: u16,
        message: String,
        body: String,
    },
    /// A 5xx that came back with the same body for the same request: the
    /// server fails on this input, and more attempts would too.
    #[error("the LLM endpoint answered HTTP {status} twice with the same error, so it is not retried: {message}")]
    Deterministic {
        status: u16,
        message: String,
        body: String,
    },
    /// The check before the job found the endpoint unusable; the message
    /// says what to check. `reachable`: it answered (refused the key, the
    /// path or the model), rather than not answering at all.
    #[error("{message}")]
    Preflight { message: String, reachable: bool },
    #[error("the LLM request failed after {attempts} attempts: {last}")]
    Exhausted { attempts: u32, last: String },
    /// The endpoint stayed unreachable past `llm.outage_timeout`.
    #[error("{0}")]
    Outage(String),
    #[error("LLM configuration: {0}")]
    Config(String),
}

impl LlmError {
    /// Errors after which no other task can succeed either.
    pub fn is_fatal(&self) -> bool {
        matches!(self, LlmError::Auth { .. } | LlmError::Outage(_))
    }

    /// The HTTP status and the raw body of an error the endpoint itself
    /// answered and convoy did not retry (credentials, context limit, any
    /// other 4xx, a deterministic 5xx): what the model gateway hands back
    /// to an external agent as is, so its client reads the endpoint's own
    /// `error.code`. `None` for errors without such an answer (retries
    /// used up, outage, configuration).
    pub fn upstream(&self) -> Option<(u16, &str)> {
        match self {
            LlmError::Auth { status, body, .. }
            | LlmError::ContextLimit { status, body, .. }
            | LlmError::Rejected { status, body, .. }
            | LlmError::Deterministic { status, body, .. } => Some((*status, body)),
            _ => None,
        }
    }
}
