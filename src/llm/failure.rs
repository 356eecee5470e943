//! How one request attempt ended and what convoy does about it: the reason
//! a request is sent again (named in `retries_by_reason`), backoff with full
//! jitter, `Retry-After`, the endpoint's error message, and which failures
//! are deterministic.
//!
//! Deterministic: an HTTP 500 (or any 5xx but the transient 502, 503 and
//! 504) whose body is the same for the same request twice in a row is the
//! server failing on this input (llama.cpp answers 500 to a message it
//! cannot template): sending it `max_retries` more times only wastes the
//! backoff, so the task fails with the body's first line. 429, 408 and
//! 502-504 are transient by definition and always retried.

use std::time::Duration;

use reqwest::header::{HeaderMap, RETRY_AFTER};
use serde_json::Value;

use super::types::{ChatReply, Forwarded, LlmError, Usage};

const BACKOFF_BASE: Duration = Duration::from_millis(500);
const BACKOFF_CAP: Duration = Duration::from_secs(60);

/// Why a request is sent again; `key()` names it in the summary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Reason {
    Status(u16),
    Timeout,
    Connection,
    Malformed,
}

impl Reason {
    pub(super) fn key(self) -> String {
        match self {
            Reason::Status(s) => format!("http_{s}"),
            Reason::Timeout => "timeout".into(),
            Reason::Connection => "connection".into(),
            Reason::Malformed => "malformed_reply".into(),
        }
    }
}

/// The outcome of one attempt. (A reply is boxed: it is much larger than
/// the other outcomes.)
pub(super) enum Attempt {
    Done(Box<Forwarded>),
    Retry {
        reason: Reason,
        detail: String,
        after: Option<Duration>,
        /// The raw error body of a status that may be deterministic, to
        /// compare with the next attempt's.
        body: Option<String>,
    },
    Fail(LlmError),
}

/// Statuses that may be the server failing on this very request.
pub(super) fn may_be_deterministic(status: u16) -> bool {
    (500..600).contains(&status) && !matches!(status, 502..=504)
}

/// The first line of an error message, for the task's error.
pub(super) fn first_line(message: &str) -> String {
    let line = message.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
    line.trim().chars().take(300).collect()
}

/// A request that never got an HTTP answer. Timeouts are the model being
/// slow, not the endpoint being gone, so they do not count toward an outage.
pub(super) fn transport_failure(e: &reqwest::Error) -> Attempt {
    let (reason, detail) = if e.is_timeout() {
        (
            Reason::Timeout,
            "the request timed out (llm.timeout)".to_string(),
        )
    } else if e.is_connect() {
        (
            Reason::Connection,
            "cannot connect to the endpoint".to_string(),
        )
    } else {
        (
            Reason::Connection,
            format!("the connection broke: {}", error_chain(e)),
        )
    };
    Attempt::Retry {
        reason,
        detail,
        after: None,
        body: None,
    }
}

/// An error and its sources, joined: reqwest's own message rarely says
/// what the OS said.
pub(super) fn error_chain(e: &reqwest::Error) -> String {
    let mut detail = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(inner) = source {
        detail.push_str(&format!(": {inner}"));
        source = inner.source();
    }
    detail
}

/// Full jitter: a random wait in [0, min(cap, base * 2^n)].
pub(super) fn backoff(retry: u32) -> Duration {
    let ceiling = BACKOFF_BASE
        .saturating_mul(1u32 << retry.min(16))
        .min(BACKOFF_CAP);
    ceiling.mul_f64(fastrand::f64())
}

/// `Retry-After` as seconds or an HTTP date.
pub(super) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let v = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = v.parse::<f64>() {
        return (secs >= 0.0 && secs.is_finite()).then(|| Duration::from_secs_f64(secs));
    }
    let when = httpdate::parse_http_date(v).ok()?;
    Some(
        when.duration_since(std::time::SystemTime::now())
            .unwrap_or_default(),
    )
}

/// The endpoint's error message: OpenAI's `error.message`, FastAPI's
/// `detail`, or the start of the body.
pub(super) fn error_message(body: &str) -> String {
    serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| {
            v.pointer("/error/message")
                .or_else(|| v.get("message"))
                .or_else(|| v.get("detail"))
                .or_else(|| v.get("error"))
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .unwrap_or_else(|| body.chars().take(500).collect())
}

pub(super) fn is_context_limit(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    [
        "context length",
        "context_length",
        "maximum context",
        "context window",
        "too many tokens",
    ]
    .iter()
    .any(|p| m.contains(p))
}

/// The reply, and its first choice's message. A reply without one (empty
/// `choices`, a proxy's HTML page) is retried: endpoints send those under
/// load.
pub(super) fn parse_reply(text: &str) -> Result<Forwarded, String> {
    let v: Value = serde_json::from_str(text).map_err(|e| format!("not JSON ({e})"))?;
    let choice = v
        .get("choices")
        .and_then(Value::as_array)
        .and_then(|c| c.first())
        .ok_or("no choices")?;
    let message = choice
        .get("message")
        .filter(|m| m.is_object())
        .cloned()
        .ok_or("the choice has no message")?;
    let reply = ChatReply {
        message,
        finish_reason: choice
            .get("finish_reason")
            .and_then(Value::as_str)
            .map(str::to_string),
        usage: Usage::from_json(v.get("usage")),
        record: serde_json::Map::new(),
    };
    Ok(Forwarded { response: v, reply })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_seconds_and_date() {
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, "2".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(2)));
        let later = std::time::SystemTime::now() + Duration::from_secs(30);
        h.insert(RETRY_AFTER, httpdate::fmt_http_date(later).parse().unwrap());
        let d = retry_after(&h).unwrap();
        assert!(
            d > Duration::from_secs(25) && d <= Duration::from_secs(30),
            "{d:?}"
        );
    }

    #[test]
    fn backoff_stays_under_its_ceiling() {
        for n in 0..20 {
            assert!(backoff(n) <= BACKOFF_CAP);
        }
        assert!(backoff(0) <= BACKOFF_BASE);
    }

    #[test]
    fn replies_without_a_choice_are_refused() {
        assert_eq!(parse_reply(r#"{"choices": []}"#).unwrap_err(), "no choices");
        assert!(parse_reply("<html>").is_err());
        let ok = parse_reply(r#"{"choices":[{"message":{"role":"assistant","content":null,"tool_calls":[]},"finish_reason":"length"}]}"#).unwrap();
        assert_eq!(ok.reply.finish_reason.as_deref(), Some("length"));
    }

    #[test]
    fn context_limit_is_recognised() {
        assert!(is_context_limit(
            "This model's maximum context length is 8192 tokens"
        ));
        assert!(!is_context_limit("invalid tool schema"));
    }

    #[test]
    fn only_non_gateway_5xx_may_be_deterministic() {
        assert!(may_be_deterministic(500));
        assert!(may_be_deterministic(501));
        for s in [429, 408, 502, 503, 504, 400] {
            assert!(!may_be_deterministic(s), "{s}");
        }
        assert_eq!(first_line("\n  boom: bad\ntraceback..."), "boom: bad");
    }
}
