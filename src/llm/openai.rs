//! OpenAI-compatible `/chat/completions` over one shared reqwest client.
//!
//! Retries: 429, 408, 5xx, connection errors, timeouts and replies without
//! a usable choice, with exponential backoff and full jitter, honouring
//! `Retry-After`; a 5xx that repeats its body for the same request is not
//! retried further (`failure`). 401/403 are fatal for the job; a
//! context-length 400 ends the task as `context_limit`; any other 4xx fails
//! the task with the endpoint's message. Before each attempt a request
//! passes, in order: the outage gate (`health`), the rate buckets, the
//! adaptive in-flight limit. The body is built in `request`, or for a
//! request an external agent wrote, in `forward`; both go through the same
//! attempts (`send`).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use reqwest::StatusCode;
use serde_json::{Map, Value};

use super::bucket::Bucket;
use super::failure::{
    backoff, error_message, first_line, is_context_limit, may_be_deterministic, parse_reply,
    retry_after, transport_failure, Attempt, Reason,
};
use super::forward::ForwardRules;
use super::health::Health;
use super::limiter::{Limiter, LimiterStats};
use super::preflight;
use super::request::{self, Body, Outgoing};
use super::tokens;
use super::types::{ChatReply, Forwarded, LlmError};
use crate::manifest::LlmSpec;

/// An API key. Its `Debug` never shows it.
#[derive(Clone)]
struct Secret(String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// A Retry-After longer than this is capped: a misconfigured proxy must not
/// park a conversation for hours.
const RETRY_AFTER_CAP: Duration = Duration::from_secs(600);

/// What the HTTP client is built from, kept to build it again when the
/// idle connections are dropped.
#[derive(Debug)]
struct HttpConfig {
    connect_timeout: Duration,
    timeout: Duration,
    headers: HeaderMap,
}

impl HttpConfig {
    /// No pool cap: the limiter is the only bound on connections, so 256
    /// workers get 256 connections, not 100.
    fn build(&self) -> Result<reqwest::Client, LlmError> {
        reqwest::Client::builder()
            .connect_timeout(self.connect_timeout)
            .timeout(self.timeout)
            .pool_idle_timeout(Duration::from_secs(90))
            .default_headers(self.headers.clone())
            .build()
            .map_err(|e| LlmError::Config(format!("cannot build the HTTP client: {e}")))
    }
}

#[derive(Debug)]
pub struct OpenAiClient {
    /// Replaced (with its pool) by `drop_idle_connections`; a request
    /// takes a clone (an `Arc` inside), so none holds the lock across I/O.
    http: std::sync::RwLock<reqwest::Client>,
    http_config: HttpConfig,
    base: String,
    url: String,
    model: String,
    key: Option<Secret>,
    key_env: Option<String>,
    max_retries: u32,
    /// Sampling and extra fields, merged into every request body.
    options: Map<String, Value>,
    /// The requests ask for token data (`tokens`): each reply's is kept
    /// in its `record`, an external agent's requests' too.
    keep_tokens: bool,
    /// What the manifest changes in an external agent's request.
    forward: ForwardRules,
    send_reasoning: bool,
    limiter: Limiter,
    health: Arc<Health>,
    requests_bucket: Option<Bucket>,
    tokens_bucket: Option<Bucket>,
    retries: Mutex<BTreeMap<String, u64>>,
}

/// The key named by `llm.api_key_env`; an error when the variable is unset.
fn read_key(spec: &LlmSpec) -> Result<Option<Secret>, LlmError> {
    let Some(var) = &spec.api_key_env else {
        return Ok(None);
    };
    match std::env::var(var) {
        Ok(k) if !k.is_empty() => Ok(Some(Secret(k))),
        _ => Err(LlmError::Config(format!(
            "the environment variable `{var}` (llm.api_key_env) is not set"
        ))),
    }
}

impl OpenAiClient {
    pub fn new(spec: &LlmSpec) -> Result<OpenAiClient, LlmError> {
        let key = read_key(spec)?;
        OpenAiClient::build(spec, key)
    }

    /// Checks everything `new` checks but the key, for `convoy validate`,
    /// which must work where the key is not set: a missing key is a warning.
    pub fn check(spec: &LlmSpec) -> Result<Option<String>, LlmError> {
        OpenAiClient::build(spec, None)?;
        Ok(read_key(spec)
            .err()
            .map(|e| format!("{e}: `convoy run` will need it")))
    }

    fn build(spec: &LlmSpec, key: Option<Secret>) -> Result<OpenAiClient, LlmError> {
        let base = spec
            .base_url
            .as_deref()
            .ok_or_else(|| LlmError::Config("llm.base_url is required".into()))?
            .trim_end_matches('/');
        let mut headers = HeaderMap::new();
        for (name, value) in &spec.extra_headers {
            let bad =
                || LlmError::Config(format!("llm.extra_headers: `{name}` is not a valid header"));
            headers.insert(
                HeaderName::from_bytes(name.as_bytes()).map_err(|_| bad())?,
                HeaderValue::from_str(value).map_err(|_| bad())?,
            );
        }
        let http_config = HttpConfig {
            connect_timeout: spec.connect_timeout,
            timeout: spec.timeout,
            headers,
        };
        let options = request::options(spec);
        Ok(OpenAiClient {
            http: std::sync::RwLock::new(http_config.build()?),
            http_config,
            base: base.to_string(),
            url: format!("{base}/chat/completions"),
            model: spec.model.clone().unwrap_or_default(),
            key,
            key_env: spec.api_key_env.clone(),
            max_retries: spec.max_retries,
            keep_tokens: tokens::asked(&options),
            options,
            forward: ForwardRules::new(spec),
            send_reasoning: spec.send_reasoning_content,
            limiter: Limiter::new(spec.max_in_flight as usize),
            health: Arc::new(Health::new(base, spec.outage_after, spec.outage_timeout)),
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

    /// Waits while the endpoint is down (the engine dispatches no task
    /// meanwhile); an error once the job gave up on it.
    pub async fn wait_up(&self) -> Result<(), LlmError> {
        self.health.wait_up().await
    }

    /// One look at the endpoint before the job starts (see `preflight`).
    pub async fn preflight(&self) -> Result<(), LlmError> {
        let key = self.key.as_ref().map(|Secret(k)| k.as_str());
        let http = self.http();
        let probe = preflight::Probe {
            http: &http,
            base: &self.base,
            model: &self.model,
            key,
            key_env: self.key_env.as_deref(),
            connect_timeout: self.http_config.connect_timeout,
        };
        probe.run().await?;
        self.health.on_answer();
        Ok(())
    }

    /// Closes every idle connection by replacing the client (and with it
    /// its pool), once no request is in flight (the engine calls it after
    /// the last conversation). Each connection is closed by its own task a
    /// moment later; whoever measures waits for that
    /// (`monitor::settle_fds`).
    pub fn drop_idle_connections(&self) -> Result<(), LlmError> {
        *self.http.write().expect("http lock") = self.http_config.build()?;
        Ok(())
    }

    fn http(&self) -> reqwest::Client {
        self.http.read().expect("http lock").clone()
    }

    fn count_retry(&self, key: String) {
        *self
            .retries
            .lock()
            .expect("retries lock")
            .entry(key)
            .or_default() += 1;
    }

    pub async fn complete(&self, messages: &[Value], tools: &Value) -> Result<ChatReply, LlmError> {
        let body = Body {
            model: &self.model,
            messages: Outgoing {
                messages,
                send_reasoning: self.send_reasoning,
            },
            tools,
            options: &self.options,
        };
        Ok(self.send(&body).await?.reply)
    }

    /// Sends a request an external agent wrote, as `forward` changes it,
    /// with the same retries, limits and gates as `complete`.
    pub async fn forward(&self, request: Map<String, Value>) -> Result<Forwarded, LlmError> {
        self.send(&self.forward.body(request)).await
    }

    /// Sends `body` until the endpoint gives a usable reply or a reason to
    /// stop. An error the endpoint answered carries its status and body
    /// (`LlmError::upstream`).
    async fn send(&self, body: &impl serde::Serialize) -> Result<Forwarded, LlmError> {
        // `retries` counts every resend (reported in usage.retries);
        // `spent` only those charged to llm.max_retries: waiting out an
        // outage is not.
        let (mut retries, mut spent) = (0u32, 0u32);
        // The previous attempt's error (status, body), when it may have
        // been deterministic.
        let mut previous: Option<(u16, String)> = None;
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
                let outcome = self.send_once(body).await;
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
            let (reason, detail, after, error_body) = match outcome {
                Attempt::Done(mut done) => {
                    done.reply.usage.retries = retries as u64;
                    if self.keep_tokens {
                        tokens::keep(&done.response, &mut done.reply.record);
                    }
                    if let Some(b) = &self.tokens_bucket {
                        b.charge(done.reply.usage.total_tokens as f64);
                    }
                    return Ok(*done);
                }
                Attempt::Fail(e) => return Err(e),
                Attempt::Retry {
                    reason,
                    detail,
                    after,
                    body,
                } => (reason, detail, after, body),
            };
            let this = match (reason, error_body) {
                (Reason::Status(s), Some(b)) => Some((s, b)),
                _ => None,
            };
            if let Some((status, text)) = this.as_ref().filter(|t| previous.as_ref() == Some(*t)) {
                self.count_retry(format!("deterministic_{}", reason.key()));
                return Err(LlmError::Deterministic {
                    status: *status,
                    message: first_line(&error_message(text)),
                    body: text.clone(),
                });
            }
            previous = this;
            if reason == Reason::Connection {
                self.health.on_connection_failure(&self.http());
            }
            let waiting_out_outage = reason == Reason::Connection && self.health.is_down();
            if !waiting_out_outage && spent >= self.max_retries {
                return Err(LlmError::Exhausted {
                    attempts: spent + 1,
                    last: detail,
                });
            }
            self.count_retry(reason.key());
            retries += 1;
            if waiting_out_outage {
                tracing::debug!("LLM request waits for the endpoint to come back: {detail}");
                continue;
            }
            let wait = after.unwrap_or_else(|| backoff(spent));
            spent += 1;
            tracing::debug!(
                "LLM request retry {spent}/{} in {:.1}s: {detail}",
                self.max_retries,
                wait.as_secs_f64()
            );
            tokio::time::sleep(wait).await;
        }
    }

    async fn send_once(&self, body: &impl serde::Serialize) -> Attempt {
        let mut req = self.http().post(&self.url).json(body);
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
                Ok(r) => Attempt::Done(Box::new(r)),
                Err(why) => Attempt::Retry {
                    reason: Reason::Malformed,
                    detail: format!("the reply is malformed: {why}"),
                    after: None,
                    body: None,
                },
            };
        }
        let message = error_message(&text);
        match status {
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Attempt::Fail(LlmError::Auth {
                status: status.as_u16(),
                message,
                body: text,
            }),
            s if s == StatusCode::TOO_MANY_REQUESTS
                || s == StatusCode::REQUEST_TIMEOUT
                || s.is_server_error() =>
            {
                Attempt::Retry {
                    reason: Reason::Status(s.as_u16()),
                    detail: format!("HTTP {}: {}", s.as_u16(), first_line(&message)),
                    after,
                    body: may_be_deterministic(s.as_u16()).then_some(text),
                }
            }
            StatusCode::BAD_REQUEST if is_context_limit(&message) => {
                Attempt::Fail(LlmError::ContextLimit {
                    status: status.as_u16(),
                    message,
                    body: text,
                })
            }
            s => Attempt::Fail(LlmError::Rejected {
                status: s.as_u16(),
                message,
                body: text,
            }),
        }
    }
}
