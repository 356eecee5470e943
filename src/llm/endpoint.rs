//! One model server of the job at run time: where it is, its key, its own
//! adaptive in-flight limit and health, and what it did (for the summary).

use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use super::health::Health;
use super::latency::Latencies;
use super::limiter::{Limiter, LimiterStats};
use super::types::LlmError;
use crate::manifest::{Endpoint, LlmSpec, Role};

/// An API key. Its `Debug` never shows it.
#[derive(Clone)]
pub(super) struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

#[derive(Debug)]
pub(super) struct Upstream {
    pub index: usize,
    /// `host:port` of its URL: how logs and records name it.
    pub host: String,
    pub base: String,
    pub url: String,
    pub model: String,
    pub key: Option<Secret>,
    pub key_env: Option<String>,
    /// The manifest key naming it (`Endpoint::key_named`).
    pub key_named: String,
    pub role: Role,
    pub weight: u32,
    pub limiter: Limiter,
    pub health: Arc<Health>,
    /// Requests routed here and not finished (waiting for a slot or in
    /// flight): what routing balances.
    pub outstanding: AtomicUsize,
    /// Requests routed here so far (ties in routing go to the endpoint
    /// that had fewer for its weight).
    pub routed: AtomicU64,
    pub answered: AtomicU64,
    pub errors: AtomicU64,
    pub retries: AtomicU64,
    pub latencies: Latencies,
    /// Why it was taken out for the rest of the job (a 401/403).
    removed: Mutex<Option<String>>,
    /// Told whenever any endpoint's state changes (down, up, removed).
    changed: Arc<Notify>,
}

/// The key of endpoint `e`, from the variable it names; an error naming
/// the variable and the manifest key when it is unset.
pub(super) fn read_key(e: &Endpoint) -> Result<Option<Secret>, LlmError> {
    let Some(var) = e.api_key_env.as_deref() else {
        return Ok(None);
    };
    match std::env::var(var) {
        Ok(k) if !k.is_empty() => Ok(Some(Secret(k))),
        _ => Err(LlmError::Config(format!(
            "the environment variable `{var}` ({}) is not set",
            e.key_named
        ))),
    }
}

/// What to do about an endpoint refusing the key, naming the variable
/// and the manifest key (`Endpoint::key_named`).
pub(super) fn key_hint(key_env: Option<&str>, key_named: &str) -> String {
    match key_env {
        Some(var) => format!("check the key in `{var}` ({key_named})"),
        None => format!("the endpoint wants a key: name its environment variable in {key_named}"),
    }
}

/// `host:port` of a URL (the whole URL if it has no scheme).
fn host_of(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    rest.split('/').next().unwrap_or(rest).to_string()
}

impl Upstream {
    pub fn new(
        index: usize,
        e: &Endpoint,
        spec: &LlmSpec,
        key: Option<Secret>,
        several: bool,
        changed: Arc<Notify>,
    ) -> Upstream {
        let host = host_of(&e.base_url);
        let mut health = Health::new(
            &e.base_url,
            spec.outage_after,
            spec.outage_timeout,
            changed.clone(),
        );
        if several {
            health = health.one_of_several(format!("endpoint {index} ({host})"));
        }
        Upstream {
            index,
            host,
            base: e.base_url.clone(),
            url: format!("{}/chat/completions", e.base_url),
            model: e.model.clone(),
            key,
            key_env: e.api_key_env.clone(),
            key_named: e.key_named.clone(),
            role: e.role,
            weight: e.weight.max(1),
            limiter: Limiter::new(e.max_in_flight as usize),
            health: Arc::new(health),
            outstanding: AtomicUsize::new(0),
            routed: AtomicU64::new(0),
            answered: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            latencies: Latencies::default(),
            removed: Mutex::new(None),
            changed,
        }
    }

    /// `endpoint 1 (gpu-b:8000)`: how messages name it.
    pub fn name(&self) -> String {
        format!("endpoint {} ({})", self.index, self.host)
    }

    /// Takes it out for the rest of the job; false if it already was.
    pub fn remove(&self, why: String) -> bool {
        let mut removed = self.removed.lock().expect("removed lock");
        if removed.is_some() {
            return false;
        }
        *removed = Some(why);
        drop(removed);
        self.changed.notify_waiters();
        true
    }

    pub fn removed(&self) -> Option<String> {
        self.removed.lock().expect("removed lock").clone()
    }

    /// Up and not taken out: requests may go here.
    pub fn usable(&self) -> bool {
        self.health.is_up() && self.removed().is_none()
    }

    /// Past its outage deadline, or taken out.
    pub fn gone(&self) -> bool {
        self.health.is_gone() || self.removed().is_some()
    }

    pub fn report(&self) -> EndpointReport {
        let (outages, outage_s) = self.health.outages();
        EndpointReport {
            index: self.index,
            host: self.host.clone(),
            model: self.model.clone(),
            role: self.role,
            requests: self.answered.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            retries: self.retries.load(Ordering::Relaxed),
            limiter: self.limiter.stats(),
            latency_p50_s: self.latencies.quantile(0.5),
            latency_p99_s: self.latencies.quantile(0.99),
            outages,
            outage_s,
            removed: self.removed(),
        }
    }
}

/// One endpoint in `summary.json` (`llm.endpoints`) and `convoy report`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EndpointReport {
    pub index: usize,
    pub host: String,
    pub model: String,
    pub role: Role,
    /// Requests it answered with a usable reply.
    pub requests: u64,
    /// Attempts that failed here: an error status, no connection, a
    /// malformed reply.
    pub errors: u64,
    /// Of those, the ones sent again (here or elsewhere).
    pub retries: u64,
    pub limiter: LimiterStats,
    pub latency_p50_s: Option<f64>,
    pub latency_p99_s: Option<f64>,
    pub outages: u64,
    pub outage_s: f64,
    /// Why it was taken out for the rest of the job, if it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub removed: Option<String>,
}

impl EndpointReport {
    /// One line for people.
    pub fn render(&self) -> String {
        let ms = |s: Option<f64>| s.map_or("-".into(), |s| format!("{:.0} ms", s * 1000.0));
        let mut line = format!(
            "endpoint {} {} ({}{}): {} requests, {} errors, {} retries, p50 {}, p99 {}, limit {} (lowest {}, {} cuts)",
            self.index,
            self.host,
            self.model,
            if self.role == Role::Fallback { ", fallback" } else { "" },
            self.requests,
            self.errors,
            self.retries,
            ms(self.latency_p50_s),
            ms(self.latency_p99_s),
            self.limiter.current,
            self.limiter.lowest,
            self.limiter.cuts,
        );
        if self.outages > 0 {
            line.push_str(&format!(
                ", {} outages ({:.1}s)",
                self.outages, self.outage_s
            ));
        }
        if let Some(why) = &self.removed {
            line.push_str(&format!("; taken out: {why}"));
        }
        line
    }
}

/// A wait long enough to notice a state change we were not told of.
pub(super) const RECHECK: Duration = Duration::from_millis(200);
