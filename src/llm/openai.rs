//! OpenAI-compatible `/chat/completions` over one shared reqwest client.
//!
//! Retries: 429, 408, 5xx, connection errors, timeouts and replies without
//! a usable choice, with exponential backoff and full jitter, honouring
//! `Retry-After`. 401/403 are fatal for the job; a context-length 400 ends
//! the task as `context_limit`; any other 4xx fails the task with the
//! endpoint's message. Before each attempt a request passes, in order: the
//! outage gate (`health`), the rate buckets, the adaptive in-flight limit.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderName, HeaderValue, RETRY_AFTER};
use reqwest::StatusCode;
use serde::ser::{SerializeMap, SerializeSeq};
use serde::{Serialize, Serializer};
use serde_json::{json, Map, Value};

use super::bucket::Bucket;
use super::health::Health;
use super::limiter::{Limiter, LimiterStats};
use super::types::{ChatReply, LlmError, Usage};
use crate::manifest::LlmSpec;

/// An API key. Its `Debug` never shows it.
#[derive(Clone)]
struct Secret(String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

const BACKOFF_BASE: Duration = Duration::from_millis(500);
const BACKOFF_CAP: Duration = Duration::from_secs(60);
/// A Retry-After longer than this is capped: a misconfigured proxy must not
/// park a conversation for hours.
const RETRY_AFTER_CAP: Duration = Duration::from_secs(600);

/// Keys of a received assistant message that are not sent back: DeepSeek-
/// style endpoints refuse a request that carries them. The trajectory keeps
/// them.
const NOT_SENT_BACK: &[&str] = &["reasoning_content"];

#[derive(Debug)]
pub struct OpenAiClient {
    http: reqwest::Client,
    url: String,
    model: String,
    key: Option<Secret>,
    max_retries: u32,
    /// Sampling and extra fields, merged into every request body.
    options: Map<String, Value>,
    limiter: Limiter,
    health: Arc<Health>,
    requests_bucket: Option<Bucket>,
    tokens_bucket: Option<Bucket>,
    retries: Mutex<BTreeMap<String, u64>>,
}

impl OpenAiClient {
    pub fn new(spec: &LlmSpec) -> Result<OpenAiClient, LlmError> {
        let base = spec
            .base_url
            .as_deref()
            .ok_or_else(|| LlmError::Config("llm.base_url is required".into()))?;
        let key = match &spec.api_key_env {
            Some(var) => match std::env::var(var) {
                Ok(k) if !k.is_empty() => Some(Secret(k)),
                _ => {
                    return Err(LlmError::Config(format!(
                        "the environment variable `{var}` (llm.api_key_env) is not set"
                    )))
                }
            },
            None => None,
        };
        let mut headers = HeaderMap::new();
        for (name, value) in &spec.extra_headers {
            let bad =
                || LlmError::Config(format!("llm.extra_headers: `{name}` is not a valid header"));
            headers.insert(
                HeaderName::from_bytes(name.as_bytes()).map_err(|_| bad())?,
                HeaderValue::from_str(value).map_err(|_| bad())?,
            );
        }
        // No pool cap: the limiter is the only bound on connections, so 256
        // workers get 256 connections, not 100.
        let http = reqwest::Client::builder()
            .connect_timeout(spec.connect_timeout)
            .timeout(spec.timeout)
            .pool_idle_timeout(Duration::from_secs(90))
            .default_headers(headers)
            .build()
            .map_err(|e| LlmError::Config(format!("cannot build the HTTP client: {e}")))?;
        let mut options = Map::new();
        let mut set = |k: &str, v: Option<Value>| {
            if let Some(v) = v {
                options.insert(k.to_string(), v);
            }
        };
        set("temperature", spec.temperature.map(|v| json!(v)));
        set("top_p", spec.top_p.map(|v| json!(v)));
        set("max_tokens", spec.max_tokens.map(|v| json!(v)));
        set("seed", spec.seed.map(|v| json!(v)));
        set("tool_choice", spec.tool_choice.clone());
        set(
            "parallel_tool_calls",
            spec.parallel_tool_calls.map(|v| json!(v)),
        );
        for (k, v) in &spec.extra_body {
            options.insert(k.clone(), v.clone());
        }
        let health = Arc::new(Health::new(
            http.clone(),
            base,
            spec.outage_after,
            spec.outage_timeout,
        ));
        Ok(OpenAiClient {
            http,
            url: format!("{}/chat/completions", base.trim_end_matches('/')),
            model: spec.model.clone().unwrap_or_default(),
            key,
            max_retries: spec.max_retries,
            options,
            limiter: Limiter::new(spec.max_in_flight as usize),
            health,
            requests_bucket: spec
                .requests_per_minute
                .map(|n| Bucket::per_minute(n as f64)),
            tokens_bucket: spec.tokens_per_minute.map(|n| Bucket::per_minute(n as f64)),
            retries: Mutex::default(),
        })
    }

    /// Requests in flight to the endpoint now.
    pub fn in_flight(&self) -> usize {
        self.limiter.in_flight()
    }

    /// The most requests in flight since the last call.
    pub fn take_in_flight_peak(&self) -> usize {
        self.limiter.take_peak()
    }

    /// Requests allowed in flight now (the adaptive limit).
    pub fn limit(&self) -> usize {
        self.limiter.limit()
    }

    pub fn limiter_stats(&self) -> LimiterStats {
        self.limiter.stats()
    }

    /// Retries so far, by reason (`http_429`, `timeout`, ...).
    pub fn retries_by_reason(&self) -> BTreeMap<String, u64> {
        self.retries.lock().expect("retries lock").clone()
    }

    /// Outages so far and their total length in seconds.
    pub fn outages(&self) -> (u64, f64) {
        self.health.outages()
    }

    /// Waits while the endpoint is down (the scheduler dispatches no task
    /// meanwhile); an error once the job gave up on it.
    pub async fn wait_up(&self) -> Result<(), LlmError> {
        self.health.wait_up().await
    }

    pub async fn complete(&self, messages: &[Value], tools: &Value) -> Result<ChatReply, LlmError> {
        let body = Body {
            model: &self.model,
            messages: Outgoing(messages),
            tools,
            options: &self.options,
        };
        // `retries` counts every resend (reported in usage.retries);
        // `spent` only those charged to llm.max_retries: waiting out an
        // outage is not.
        let (mut retries, mut spent) = (0u32, 0u32);
        loop {
            self.health.wait_up().await?;
            if let Some(b) = &self.requests_bucket {
                b.take(1.0).await;
            }
            if let Some(b) = &self.tokens_bucket {
                b.take(0.0).await;
            }
            let outcome = {
                let permit = self.limiter.acquire().await;
                let outcome = self.send_once(&body).await;
                match &outcome {
                    Attempt::Done(_) => permit.success(),
                    Attempt::Retry {
                        reason: Reason::Status(429),
                        ..
                    } => permit.throttled(),
                    _ => {}
                }
                outcome
            };
            let (reason, detail, after) = match outcome {
                Attempt::Done(mut reply) => {
                    reply.usage.retries = retries as u64;
                    if let Some(b) = &self.tokens_bucket {
                        b.charge(reply.usage.total_tokens as f64);
                    }
                    return Ok(reply);
                }
                Attempt::Fail(e) => return Err(e),
                Attempt::Retry {
                    reason,
                    detail,
                    after,
                } => (reason, detail, after),
            };
            if reason == Reason::Connection {
                self.health.on_connection_failure();
            }
            let waiting_out_outage = reason == Reason::Connection && self.health.is_down();
            if !waiting_out_outage && spent >= self.max_retries {
                return Err(LlmError::Exhausted {
                    attempts: spent + 1,
                    last: detail,
                });
            }
            *self
                .retries
                .lock()
                .expect("retries lock")
                .entry(reason.key())
                .or_default() += 1;
            retries += 1;
            if waiting_out_outage {
                tracing::info!("LLM request waits for the endpoint to come back: {detail}");
                continue;
            }
            let wait = after.unwrap_or_else(|| backoff(spent));
            spent += 1;
            tracing::info!(
                "LLM request retry {spent}/{} in {:.1}s: {detail}",
                self.max_retries,
                wait.as_secs_f64()
            );
            tokio::time::sleep(wait).await;
        }
    }

    async fn send_once(&self, body: &Body<'_>) -> Attempt {
        let mut req = self.http.post(&self.url).json(body);
        if let Some(Secret(k)) = &self.key {
            req = req.bearer_auth(k);
        }
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) => return transport_failure(&e),
        };
        let status = resp.status();
        let after = retry_after(resp.headers()).map(|d| d.min(RETRY_AFTER_CAP));
        let text = match resp.text().await {
            Ok(t) => t,
            Err(e) => return transport_failure(&e),
        };
        self.health.on_answer();
        if status.is_success() {
            return match parse_reply(&text) {
                Ok(r) => Attempt::Done(r),
                Err(why) => Attempt::Retry {
                    reason: Reason::Malformed,
                    detail: format!("the reply is malformed: {why}"),
                    after: None,
                },
            };
        }
        let message = error_message(&text);
        match status {
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Attempt::Fail(LlmError::Auth {
                status: status.as_u16(),
                message,
            }),
            s if s == StatusCode::TOO_MANY_REQUESTS
                || s == StatusCode::REQUEST_TIMEOUT
                || s.is_server_error() =>
            {
                Attempt::Retry {
                    reason: Reason::Status(s.as_u16()),
                    detail: format!("HTTP {}: {message}", s.as_u16()),
                    after,
                }
            }
            StatusCode::BAD_REQUEST if is_context_limit(&message) => {
                Attempt::Fail(LlmError::ContextLimit(message))
            }
            s => Attempt::Fail(LlmError::Rejected {
                status: s.as_u16(),
                message,
            }),
        }
    }
}

/// The request body, serialized straight from the conversation's messages.
#[derive(Serialize)]
struct Body<'a> {
    model: &'a str,
    messages: Outgoing<'a>,
    tools: &'a Value,
    #[serde(flatten)]
    options: &'a Map<String, Value>,
}

/// The messages as sent: each as received, minus `NOT_SENT_BACK` keys.
struct Outgoing<'a>(&'a [Value]);

impl Serialize for Outgoing<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.0.len()))?;
        for m in self.0 {
            match m.as_object() {
                Some(o) if NOT_SENT_BACK.iter().any(|k| o.contains_key(*k)) => {
                    seq.serialize_element(&Stripped(o))?
                }
                _ => seq.serialize_element(m)?,
            }
        }
        seq.end()
    }
}

struct Stripped<'a>(&'a Map<String, Value>);

impl Serialize for Stripped<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(None)?;
        for (k, v) in self.0 {
            if !NOT_SENT_BACK.contains(&k.as_str()) {
                map.serialize_entry(k, v)?;
            }
        }
        map.end()
    }
}

/// Why a request is sent again; `key()` names it in the summary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reason {
    Status(u16),
    Timeout,
    Connection,
    Malformed,
}

impl Reason {
    fn key(self) -> String {
        match self {
            Reason::Status(s) => format!("http_{s}"),
            Reason::Timeout => "timeout".into(),
            Reason::Connection => "connection".into(),
            Reason::Malformed => "malformed_reply".into(),
        }
    }
}

enum Attempt {
    Done(ChatReply),
    Retry {
        reason: Reason,
        detail: String,
        after: Option<Duration>,
    },
    Fail(LlmError),
}

/// A request that never got an HTTP answer. Timeouts are the model being
/// slow, not the endpoint being gone, so they do not count toward an outage.
fn transport_failure(e: &reqwest::Error) -> Attempt {
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
        // Reset or closed mid-request: the chain says which.
        let mut detail = format!("the connection broke: {e}");
        let mut source = std::error::Error::source(e);
        while let Some(inner) = source {
            detail.push_str(&format!(": {inner}"));
            source = inner.source();
        }
        (Reason::Connection, detail)
    };
    Attempt::Retry {
        reason,
        detail,
        after: None,
    }
}

/// Full jitter: a random wait in [0, min(cap, base * 2^n)].
fn backoff(retry: u32) -> Duration {
    let ceiling = BACKOFF_BASE
        .saturating_mul(1u32 << retry.min(16))
        .min(BACKOFF_CAP);
    ceiling.mul_f64(fastrand::f64())
}

/// `Retry-After` as seconds or an HTTP date.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
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

fn error_message(body: &str) -> String {
    serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| {
            v.pointer("/error/message")
                .or_else(|| v.get("message"))
                .or_else(|| v.get("detail"))
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .unwrap_or_else(|| body.chars().take(500).collect())
}

fn is_context_limit(message: &str) -> bool {
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

/// The first choice's message. A reply without one (empty `choices`, a
/// proxy's HTML page) is retried: endpoints send those under load.
fn parse_reply(text: &str) -> Result<ChatReply, String> {
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
    Ok(ChatReply {
        message,
        finish_reason: choice
            .get("finish_reason")
            .and_then(Value::as_str)
            .map(str::to_string),
        usage: Usage::from_json(v.get("usage")),
    })
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
    fn reasoning_content_is_kept_but_not_sent_back() {
        let messages = vec![
            json!({"role": "user", "content": "hi"}),
            json!({"role": "assistant", "content": "x", "reasoning_content": "think"}),
        ];
        let mut options = Map::new();
        options.insert("reasoning_effort".into(), json!("high"));
        let body = Body {
            model: "m",
            messages: Outgoing(&messages),
            tools: &json!([]),
            options: &options,
        };
        let sent = serde_json::to_value(&body).unwrap();
        assert_eq!(
            sent["messages"][1],
            json!({"role": "assistant", "content": "x"})
        );
        assert_eq!(sent["reasoning_effort"], "high");
        assert_eq!(messages[1]["reasoning_content"], "think");
    }

    #[test]
    fn replies_without_a_choice_are_refused() {
        assert_eq!(parse_reply(r#"{"choices": []}"#).unwrap_err(), "no choices");
        assert!(parse_reply("<html>").is_err());
        let ok = parse_reply(r#"{"choices":[{"message":{"role":"assistant","content":null,"tool_calls":[]},"finish_reason":"length"}]}"#).unwrap();
        assert_eq!(ok.finish_reason.as_deref(), Some("length"));
    }

    #[test]
    fn context_limit_is_recognised() {
        assert!(is_context_limit(
            "This model's maximum context length is 8192 tokens"
        ));
        assert!(!is_context_limit("invalid tool schema"));
    }
}
