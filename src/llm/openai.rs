//! OpenAI-compatible `/chat/completions` over one shared reqwest client.
//!
//! Retries: 429, 408, 5xx, connection errors, timeouts and replies without
//! a usable choice, with exponential backoff and full jitter, honouring
//! `Retry-After`; a 5xx that repeats its body for the same request is not
//! retried further (`failure`). 401/403 are fatal for the job; a
//! context-length 400 ends the task as `context_limit`; any other 4xx fails
//! the task with the endpoint's message. Before each attempt a request
//! passes, in order: the rate buckets, then routing (`route`): an endpoint
//! that is up, a slot in its adaptive in-flight limit, a slot in the job's.
//! With several endpoints, a request whose endpoint went down or refused
//! the key (401/403: taken out for the rest of the job) is sent elsewhere
//! without spending its retries. The body is built in `request`, or for a
//! request an external agent wrote, in `forward`; both go through the same
//! attempts (`send`).

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper::body::Bytes;

use reqwest::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE};
use reqwest::StatusCode;
use serde_json::{Map, Value};

use super::bucket::Bucket;
use super::endpoint::{key_hint, read_key, EndpointReport, Secret, Upstream};
use super::failure::{
    backoff, error_message, first_line, is_context_limit, may_be_deterministic, parse_reply,
    retry_after, transport_failure, Attempt, Reason,
};
use super::forward::ForwardRules;
use super::limiter::LimiterStats;
use super::preflight;
use super::request::{self, Body, Outgoing};
use super::route::{Pool, Sticky};
use super::tokens;
use super::types::{ChatReply, Forwarded, LlmError};
use crate::manifest::LlmSpec;

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
    /// The endpoints, the job's ceiling, routing.
    pool: Pool,
    max_retries: u32,
    /// Sampling and extra fields, merged into every request body.
    options: Map<String, Value>,
    /// The requests ask for token data (`tokens`): each reply's is kept
    /// in its `record`, an external agent's requests' too.
    keep_tokens: bool,
    /// What the manifest changes in an external agent's request.
    forward: ForwardRules,
    send_reasoning: bool,
    requests_bucket: Option<Bucket>,
    tokens_bucket: Option<Bucket>,
    retries: Mutex<BTreeMap<String, u64>>,
}

impl OpenAiClient {
    pub fn new(spec: &LlmSpec) -> Result<OpenAiClient, LlmError> {
        let keys = spec
            .endpoints()
            .iter()
            .map(read_key)
            .collect::<Result<_, _>>()?;
        OpenAiClient::build(spec, keys)
    }

    /// Checks everything `new` checks but the key, for `convoy validate`,
    /// which must work where the key is not set: a missing key is a warning.
    pub fn check(spec: &LlmSpec) -> Result<Option<String>, LlmError> {
        OpenAiClient::build(spec, Vec::new())?;
        let missing: Vec<String> = spec
            .endpoints()
            .iter()
            .filter_map(|e| read_key(e).err())
            .map(|e| e.to_string())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        Ok((!missing.is_empty())
            .then(|| format!("{}: `convoy run` will need it", missing.join("; "))))
    }

    /// `keys`: one per endpoint, in order (none at all for `check`).
    fn build(spec: &LlmSpec, keys: Vec<Option<Secret>>) -> Result<OpenAiClient, LlmError> {
        let endpoints = spec.endpoints();
        if endpoints.is_empty() {
            return Err(LlmError::Config(
                "llm.base_url (or llm.endpoints) is required".into(),
            ));
        }
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
        let changed = Arc::default();
        let several = endpoints.len() > 1;
        let upstreams = endpoints
            .iter()
            .enumerate()
            .map(|(i, e)| {
                let key = keys.get(i).cloned().flatten();
                Arc::new(Upstream::new(
                    i,
                    e,
                    spec,
                    key,
                    several,
                    Arc::clone(&changed),
                ))
            })
            .collect();
        let options = request::options(spec);
        Ok(OpenAiClient {
            http: std::sync::RwLock::new(http_config.build()?),
            http_config,
            pool: Pool::new(
                upstreams,
                !spec.endpoints.is_empty(),
                spec.max_in_flight as usize,
                spec.sticky_wait,
                changed,
            ),
            max_retries: spec.max_retries,
            keep_tokens: tokens::asked(&options),
            options,
            forward: ForwardRules::new(spec),
            send_reasoning: spec.send_reasoning_content,
            requests_bucket: spec
                .requests_per_minute
                .map(|n| Bucket::per_minute(n as f64)),
            tokens_bucket: spec.tokens_per_minute.map(|n| Bucket::per_minute(n as f64)),
            retries: Mutex::default(),
        })
    }

    /// Requests in flight now, job-wide.
    pub fn in_flight(&self) -> usize {
        self.pool.in_flight()
    }

    /// The most requests in flight since the last call.
    pub fn take_in_flight_peak(&self) -> usize {
        self.pool.take_in_flight_peak()
    }

    /// Requests allowed in flight now (the adaptive limits).
    pub fn limit(&self) -> usize {
        self.pool.limit()
    }

    /// The job-wide ceiling (`llm.max_in_flight`).
    pub fn ceiling(&self) -> usize {
        self.pool.ceiling()
    }

    pub fn limiter_stats(&self) -> LimiterStats {
        self.pool.limiter_stats()
    }

    /// Per endpoint, in flight now and its limit (for the monitor); empty
    /// for a job on `llm.base_url`, whose figures are the job's.
    pub fn endpoint_load(&self) -> Vec<(usize, usize)> {
        if !self.pool.listed {
            return Vec::new();
        }
        self.pool
            .upstreams
            .iter()
            .map(|u| (u.limiter.in_flight(), u.limiter.limit()))
            .collect()
    }

    /// What each endpoint did; empty for a job on `llm.base_url`.
    pub fn endpoint_reports(&self) -> Vec<EndpointReport> {
        if !self.pool.listed {
            return Vec::new();
        }
        self.pool.upstreams.iter().map(|u| u.report()).collect()
    }

    /// Retries so far, by reason (`http_429`, `timeout`, ...).
    pub fn retries_by_reason(&self) -> BTreeMap<String, u64> {
        self.retries.lock().expect("retries lock").clone()
    }

    /// Outages so far (of every endpoint) and their total length in seconds.
    pub fn outages(&self) -> (u64, f64) {
        self.pool
            .upstreams
            .iter()
            .map(|u| u.health.outages())
            .fold((0, 0.0), |(n, s), (m, t)| (n + m, s + t))
    }

    /// Waits while no endpoint can take requests (the engine dispatches
    /// no task meanwhile); an error once the job gave up on every one.
    pub async fn wait_up(&self) -> Result<(), LlmError> {
        self.pool.wait_usable().await
    }

    /// One look at each endpoint before the job starts (see `preflight`).
    /// With one endpoint its error ends the run; with several, an endpoint
    /// that fails is taken out (a rejected key) or counted down (probed
    /// until it answers), and only all of them failing ends the run.
    pub async fn preflight(&self) -> Result<(), LlmError> {
        let http = self.http();
        let probes = self.pool.upstreams.iter().map(|u| {
            let http = &http;
            async move {
                let probe = preflight::Probe {
                    http,
                    base: &u.base,
                    model: &u.model,
                    key: u.key.as_ref().map(|Secret(k)| k.as_str()),
                    key_env: u.key_env.as_deref(),
                    key_named: &u.key_named,
                    connect_timeout: self.http_config.connect_timeout,
                };
                (u, probe.run().await)
            }
        });
        let outcomes = futures::future::join_all(probes).await;
        let mut first_error = None;
        let mut any_ok = false;
        for (u, outcome) in outcomes {
            match outcome {
                Ok(()) => {
                    u.health.on_answer();
                    any_ok = true;
                }
                Err(e) if self.pool.several() => {
                    if let LlmError::Preflight {
                        reachable: false, ..
                    } = e
                    {
                        tracing::warn!("{}: {e}; counted as down until it answers", u.name());
                        u.health.declare_down(&http);
                    } else {
                        // It answered, but refused the key, the path or the
                        // model: every request there would fail the same way.
                        tracing::error!("{}: {e}; taken out for the rest of the job", u.name());
                        u.remove(e.to_string());
                    }
                    first_error.get_or_insert(e);
                }
                Err(e) => return Err(e),
            }
        }
        match first_error {
            Some(e) if !any_ok => Err(e),
            _ => Ok(()),
        }
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

    /// The model's next reply to `messages`, for the conversation whose
    /// endpoint `sticky` holds.
    pub async fn complete(
        &self,
        sticky: &Sticky,
        messages: &[Value],
        tools: &Value,
    ) -> Result<ChatReply, LlmError> {
        let body = |model: &str| {
            json_bytes(&Body {
                model,
                messages: Outgoing {
                    messages,
                    send_reasoning: self.send_reasoning,
                },
                tools,
                options: &self.options,
            })
        };
        Ok(self.send(sticky, body).await?.reply)
    }

    /// Sends a request an external agent wrote, as `forward` changes it,
    /// with the same retries, limits and gates as `complete`.
    pub async fn forward(
        &self,
        sticky: &Sticky,
        request: Map<String, Value>,
    ) -> Result<Forwarded, LlmError> {
        let mut request = self.forward.body(request);
        let body = move |model: &str| {
            request.insert("model".into(), Value::String(model.to_string()));
            json_bytes(&request)
        };
        self.send(sticky, body).await
    }

    /// Sends the body `body` writes for an endpoint's model until an
    /// endpoint gives a usable reply or a reason to stop. An error the
    /// endpoint answered carries its status and body (`LlmError::upstream`).
    async fn send(
        &self,
        sticky: &Sticky,
        mut body: impl FnMut(&str) -> Bytes,
    ) -> Result<Forwarded, LlmError> {
        // `retries` counts every resend (reported in usage.retries);
        // `spent` only those charged to llm.max_retries: waiting out an
        // outage, or going to another endpoint, is not.
        let (mut retries, mut spent) = (0u32, 0u32);
        // The previous attempt's error (status, body), when it may have
        // been deterministic.
        let mut previous: Option<(u16, String)> = None;
        // The body, written once per model name.
        let mut written: Option<(String, Bytes)> = None;
        // The endpoints this request failed on (see below).
        let mut broke_on: Vec<usize> = Vec::new();
        loop {
            // The gate first: a request waiting out an outage must not
            // hold a token of the rate buckets meanwhile.
            self.pool.wait_usable().await?;
            if let Some(b) = &self.requests_bucket {
                b.take(1.0).await;
            }
            if let Some(b) = &self.tokens_bucket {
                b.take(0.0).await;
            }
            let routed = self.pool.route(sticky).await?;
            let up = routed.up;
            let bytes = match &written {
                Some((model, bytes)) if *model == up.model => bytes.clone(),
                _ => {
                    let bytes = body(&up.model);
                    written = Some((up.model.clone(), bytes.clone()));
                    bytes
                }
            };
            let started = Instant::now();
            let outcome = self.send_once(up, bytes).await;
            match &outcome {
                Attempt::Done(_) => {
                    routed.slot.success();
                    up.answered.fetch_add(1, Ordering::Relaxed);
                    up.latencies.record(started.elapsed());
                }
                Attempt::Retry {
                    reason: Reason::Status(429),
                    ..
                } => {
                    if let Some(limit) = routed.slot.throttled() {
                        let whose = if self.pool.several() {
                            format!("{} throttles", up.name())
                        } else {
                            "LLM endpoint throttles".to_string()
                        };
                        tracing::info!("{whose} (429): in-flight limit cut to {limit}");
                    }
                }
                _ => {}
            }
            if !matches!(outcome, Attempt::Done(_)) {
                up.errors.fetch_add(1, Ordering::Relaxed);
            }
            drop(routed);
            let (reason, detail, after, error_body) = match outcome {
                Attempt::Done(mut done) => {
                    done.reply.usage.retries = retries as u64;
                    if self.keep_tokens {
                        tokens::keep(&done.response, &mut done.reply.record);
                    }
                    if self.pool.listed {
                        // Which server answered, beside the message.
                        let r = &mut done.reply.record;
                        r.insert("endpoint".into(), up.index.into());
                        r.insert("host".into(), up.host.clone().into());
                        r.insert("model".into(), up.model.clone().into());
                    }
                    if let Some(b) = &self.tokens_bucket {
                        b.charge(done.reply.usage.total_tokens as f64);
                    }
                    return Ok(*done);
                }
                Attempt::Fail(e @ LlmError::Auth { .. }) if self.pool.several() => {
                    // This endpoint refuses the key: out for the rest of the
                    // job; the request goes elsewhere, or the job stops
                    // when no endpoint is left.
                    if up.remove(e.to_string()) {
                        tracing::error!(
                            "{}: {e}; taken out for the rest of the job ({})",
                            up.name(),
                            key_hint(up.key_env.as_deref(), &up.key_named)
                        );
                    }
                    if self.pool.upstreams.iter().all(|u| u.gone()) {
                        return Err(e);
                    }
                    if let Some((status, _)) = e.upstream() {
                        self.count_retry(format!("http_{status}"));
                    }
                    up.retries.fetch_add(1, Ordering::Relaxed);
                    retries += 1;
                    continue;
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
                up.health.on_connection_failure(&self.http());
            }
            // Its endpoint is down: the request waits for it (one
            // endpoint) or goes to another, without spending a retry. With
            // several, a broken connection moves the request to an
            // endpoint it has not broken on yet, also without spending one
            // (a killed server's requests in flight); once it has broken
            // everywhere, or on a timeout (a hung server), it still moves
            // but spends its retries, so a request that fails everywhere
            // ends.
            let mut rerouted = reason == Reason::Connection && up.health.is_down();
            if !rerouted && matches!(reason, Reason::Connection | Reason::Timeout) {
                let first_break = reason == Reason::Connection && !broke_on.contains(&up.index);
                broke_on.push(up.index);
                if first_break && self.pool.move_away(sticky, &broke_on) {
                    rerouted = true;
                } else {
                    self.pool.move_away(sticky, &[up.index]);
                }
            }
            if !rerouted && spent >= self.max_retries {
                return Err(LlmError::Exhausted {
                    attempts: spent + 1,
                    last: detail,
                });
            }
            self.count_retry(reason.key());
            up.retries.fetch_add(1, Ordering::Relaxed);
            retries += 1;
            if rerouted {
                tracing::debug!("LLM request goes on once an endpoint is up: {detail}");
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

    async fn send_once(&self, up: &Upstream, body: Bytes) -> Attempt {
        let mut req = self
            .http()
            .post(&up.url)
            .header(CONTENT_TYPE, "application/json")
            .body(body);
        if let Some(Secret(k)) = &up.key {
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
        up.health.on_answer();
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

/// A request body as JSON bytes. Serializing a `serde_json` value or the
/// request structs cannot fail (string keys, finite numbers).
fn json_bytes(body: &impl serde::Serialize) -> Bytes {
    Bytes::from(serde_json::to_vec(body).expect("a request body serializes"))
}
