//! Is the endpoint up? After `llm.outage_after` consecutive connection
//! failures (across all conversations) it counts as down: no request is
//! sent and no task is dispatched, while one probe (`GET {base_url}/models`,
//! where any HTTP answer counts as up) asks every few seconds. When it
//! answers, everything resumes; after `llm.outage_timeout` the job gives up.
//!
//! Requests that wait out an outage do not spend their retries on it: the
//! outage has its own deadline.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::types::LlmError;

const PROBE_FIRST: Duration = Duration::from_millis(500);
/// An endpoint that never answered since the job started is most likely a
/// wrong `base_url`, not an outage: give up after this, not after
/// `outage_timeout`.
const NEVER_ANSWERED_TIMEOUT: Duration = Duration::from_secs(30);
const PROBE_MAX: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, PartialEq)]
enum State {
    Up,
    Down,
    /// The outage outlived `outage_timeout`; the message says so.
    Gone(String),
}

#[derive(Debug)]
pub struct Health {
    state: watch::Sender<State>,
    consecutive: AtomicU32,
    ever_answered: std::sync::atomic::AtomicBool,
    threshold: u32,
    timeout: Duration,
    outages: AtomicU64,
    outage_ms: AtomicU64,
    probe_url: String,
}

impl Health {
    pub fn new(base_url: &str, threshold: u32, timeout: Duration) -> Health {
        Health {
            state: watch::Sender::new(State::Up),
            consecutive: AtomicU32::new(0),
            ever_answered: std::sync::atomic::AtomicBool::new(false),
            threshold: threshold.max(1),
            timeout,
            outages: AtomicU64::new(0),
            outage_ms: AtomicU64::new(0),
            probe_url: format!("{}/models", base_url.trim_end_matches('/')),
        }
    }

    /// Waits while the endpoint is down; an error once the job gave up on it.
    pub async fn wait_up(&self) -> Result<(), LlmError> {
        let mut rx = self.state.subscribe();
        loop {
            match &*rx.borrow_and_update() {
                State::Up => return Ok(()),
                State::Gone(why) => return Err(LlmError::Outage(why.clone())),
                State::Down => {}
            }
            if rx.changed().await.is_err() {
                return Err(LlmError::Outage("the LLM client shut down".into()));
            }
        }
    }

    pub fn is_down(&self) -> bool {
        *self.state.borrow() == State::Down
    }

    /// Any HTTP answer: the endpoint is reachable.
    pub fn on_answer(&self) {
        self.consecutive.store(0, Ordering::Relaxed);
        self.ever_answered.store(true, Ordering::Relaxed);
    }

    /// A request could not reach the endpoint. The `threshold`-th in a row
    /// declares an outage and starts the probe, which asks through `http`.
    pub fn on_connection_failure(self: &Arc<Self>, http: &reqwest::Client) {
        let n = self.consecutive.fetch_add(1, Ordering::Relaxed) + 1;
        if n < self.threshold {
            return;
        }
        let went_down = self.state.send_if_modified(|s| {
            if *s == State::Up {
                *s = State::Down;
                true
            } else {
                false
            }
        });
        if went_down {
            self.outages.fetch_add(1, Ordering::Relaxed);
            tracing::error!(
                "the LLM endpoint is down ({n} connection failures in a row): no new requests; probing {} (giving up after {}{})",
                self.probe_url,
                humantime::format_duration(self.give_up_after()),
                if self.ever_answered.load(Ordering::Relaxed) {
                    ", llm.outage_timeout"
                } else {
                    ": it has not answered since the job started"
                }
            );
            tokio::spawn(self.clone().probe(http.clone()));
        }
    }

    /// How long an outage may last: `outage_timeout`, or less for an
    /// endpoint that never answered (most likely a wrong `base_url`).
    fn give_up_after(&self) -> Duration {
        if self.ever_answered.load(Ordering::Relaxed) {
            self.timeout
        } else {
            NEVER_ANSWERED_TIMEOUT.min(self.timeout)
        }
    }

    /// Probes with growing pauses; the last probe lands on the deadline,
    /// so the job gives up when the log said it would, not a pause later.
    async fn probe(self: Arc<Self>, http: reqwest::Client) {
        let since = Instant::now();
        let mut every = PROBE_FIRST;
        loop {
            let left = self.give_up_after().saturating_sub(since.elapsed());
            tokio::time::sleep(every.min(left)).await;
            every = (every * 2).min(PROBE_MAX);
            let left = self.give_up_after().saturating_sub(since.elapsed());
            let answered = http
                .get(&self.probe_url)
                .timeout(PROBE_MAX.min(left).max(PROBE_FIRST))
                .send()
                .await
                .is_ok();
            let down_for = since.elapsed();
            if answered {
                self.outage_ms
                    .fetch_add(down_for.as_millis() as u64, Ordering::Relaxed);
                self.on_answer();
                tracing::warn!(
                    "the LLM endpoint answers again after {:.1}s; resuming",
                    down_for.as_secs_f64()
                );
                self.state.send_replace(State::Up);
                return;
            }
            if down_for < self.give_up_after() {
                continue;
            }
            let why = if self.ever_answered.load(Ordering::Relaxed) {
                format!(
                    "the LLM endpoint has been unreachable for {} (llm.outage_timeout); results so far are kept",
                    humantime::format_duration(Duration::from_secs(down_for.as_secs()))
                )
            } else {
                format!(
                    "the LLM endpoint {} has not answered once in {}s since the job started: check llm.base_url and that the server is running",
                    self.probe_url.trim_end_matches("/models"),
                    down_for.as_secs()
                )
            };
            self.outage_ms
                .fetch_add(down_for.as_millis() as u64, Ordering::Relaxed);
            self.state.send_replace(State::Gone(why));
            return;
        }
    }

    /// Outages so far and their total length in seconds.
    pub fn outages(&self) -> (u64, f64) {
        (
            self.outages.load(Ordering::Relaxed),
            self.outage_ms.load(Ordering::Relaxed) as f64 / 1000.0,
        )
    }
}
