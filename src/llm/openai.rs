//! OpenAI-compatible `/chat/completions` over one shared reqwest client.
//!
//! Retries: 429, 408, 5xx, connection errors and timeouts, with exponential
//! backoff and full jitter, honouring `Retry-After`. 401/403 are fatal for
//! the job; a context-length 400 ends the task as `context_limit`.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{HeaderMap, RETRY_AFTER};
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::sync::Semaphore;

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

#[derive(Debug)]
pub struct OpenAiClient {
    http: reqwest::Client,
    url: String,
    model: String,
    key: Option<Secret>,
    max_retries: u32,
    temperature: Option<f64>,
    max_tokens: Option<u32>,
    /// The whole job's cap on requests in flight to the endpoint.
    limiter: Arc<Semaphore>,
    max_in_flight: usize,
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
        // No pool cap: the limiter below is the only bound on connections,
        // so 256 workers get 256 connections, not 100.
        let http = reqwest::Client::builder()
            .connect_timeout(spec.connect_timeout)
            .timeout(spec.timeout)
            .pool_idle_timeout(Duration::from_secs(90))
            .build()
            .map_err(|e| LlmError::Config(format!("cannot build the HTTP client: {e}")))?;
        Ok(OpenAiClient {
            http,
            url: format!("{}/chat/completions", base.trim_end_matches('/')),
            model: spec.model.clone().unwrap_or_default(),
            key,
            max_retries: spec.max_retries,
            temperature: spec.temperature,
            max_tokens: spec.max_tokens,
            limiter: Arc::new(Semaphore::new(spec.max_in_flight as usize)),
            max_in_flight: spec.max_in_flight as usize,
        })
    }

    /// Requests in flight to the endpoint now.
    pub fn in_flight(&self) -> usize {
        self.max_in_flight
            .saturating_sub(self.limiter.available_permits())
    }

    pub async fn complete(&self, messages: &[Value], tools: &Value) -> Result<ChatReply, LlmError> {
        let mut body = json!({
            "model": self.model,
            "messages": messages,
            "tools": tools,
        });
        if let Some(t) = self.temperature {
            body["temperature"] = json!(t);
        }
        if let Some(m) = self.max_tokens {
            body["max_tokens"] = json!(m);
        }
        let mut retries = 0u32;
        loop {
            let outcome = {
                let _permit = self.limiter.acquire().await.expect("limiter never closes");
                self.send_once(&body).await
            };
            let (reason, wait) = match outcome {
                Attempt::Done(mut reply) => {
                    reply.usage.retries = retries as u64;
                    return Ok(reply);
                }
                Attempt::Fail(e) => return Err(e),
                Attempt::Retry { reason, after } => (reason, after),
            };
            if retries >= self.max_retries {
                return Err(LlmError::Exhausted {
                    attempts: retries + 1,
                    last: reason,
                });
            }
            let wait = wait.unwrap_or_else(|| backoff(retries));
            retries += 1;
            tracing::info!(
                "LLM request retry {retries}/{} in {:.1}s: {reason}",
                self.max_retries,
                wait.as_secs_f64()
            );
            tokio::time::sleep(wait).await;
        }
    }

    async fn send_once(&self, body: &Value) -> Attempt {
        let mut req = self.http.post(&self.url).json(body);
        if let Some(Secret(k)) = &self.key {
            req = req.bearer_auth(k);
        }
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) => {
                return Attempt::Retry {
                    reason: transport_reason(&e),
                    after: None,
                }
            }
        };
        let status = resp.status();
        let after = retry_after(resp.headers());
        let text = match resp.text().await {
            Ok(t) => t,
            Err(e) => {
                return Attempt::Retry {
                    reason: transport_reason(&e),
                    after: None,
                }
            }
        };
        if status.is_success() {
            return match parse_reply(&text) {
                Ok(r) => Attempt::Done(r),
                Err(e) => Attempt::Fail(e),
            };
        }
        let message = error_message(&text);
        match status {
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Attempt::Fail(LlmError::Auth {
                status: status.as_u16(),
                message,
            }),
            StatusCode::TOO_MANY_REQUESTS | StatusCode::REQUEST_TIMEOUT => Attempt::Retry {
                reason: format!("HTTP {}", status.as_u16()),
                after: after.map(|d| d.min(RETRY_AFTER_CAP)),
            },
            s if s.is_server_error() => Attempt::Retry {
                reason: format!("HTTP {}", s.as_u16()),
                after: after.map(|d| d.min(RETRY_AFTER_CAP)),
            },
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

enum Attempt {
    Done(ChatReply),
    Retry {
        reason: String,
        after: Option<Duration>,
    },
    Fail(LlmError),
}

fn transport_reason(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "request timed out".into()
    } else if e.is_connect() {
        "connection failed".into()
    } else {
        format!("transport error: {e}")
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

fn parse_reply(text: &str) -> Result<ChatReply, LlmError> {
    let v: Value =
        serde_json::from_str(text).map_err(|e| LlmError::Malformed(format!("not JSON ({e})")))?;
    let choice = v
        .get("choices")
        .and_then(Value::as_array)
        .and_then(|c| c.first())
        .ok_or_else(|| LlmError::Malformed("no choices".into()))?;
    let message = choice
        .get("message")
        .filter(|m| m.is_object())
        .cloned()
        .ok_or_else(|| LlmError::Malformed("the choice has no message".into()))?;
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
    fn context_limit_is_recognised() {
        assert!(is_context_limit(
            "This model's maximum context length is 8192 tokens"
        ));
        assert!(!is_context_limit("invalid tool schema"));
    }
}
