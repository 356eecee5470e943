//! Is the endpoint up? After `llm.outage_after` consecutive connection
//! failures (across all conversations) it counts as down: no request is
//! sent and no task is dispatched, while one probe (`GET {base_url}/models`,
//! where any HTTP answer counts as up) asks every few seconds. When it
//! answers, everything resumes; after `llm.outage_timeout` the job gives up.
//!
//! Requests that wait out an outage do not spend their retries on it: the
//! outage has its own deadline. Each endpoint of the job has its own; with
//! several, one past its deadline keeps being probed (it may come back
//! while the others carry the job), and the job gives up only when every
//! endpoint is past its deadline (`route`).

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{watch, Notify};

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
    /// When the outage going on now began (for `outages` while it lasts).
    down_since: std::sync::Mutex<Option<Instant>>,
    probe_url: String,
    /// Told of every change of state.
    changed: Arc<Notify>,
    /// Go on probing past the deadline (a job with several endpoints).
    keep_probing: bool,
    /// How log lines name it: "the LLM endpoint", or with several,
    /// "LLM endpoint 1 (gpu-b:8000)".
    name: String,
}

impl Health {
    pub fn new(base_url: &str, threshold: u32, timeout: Duration, changed: Arc<Notify>) -> Health {
        Health {
            state: watch::Sender::new(State::Up),
            consecutive: AtomicU32::new(0),
            ever_answered: std::sync::atomic::AtomicBool::new(false),
            threshold: threshold.max(1),
            timeout,
            outages: AtomicU64::new(0),
            outage_ms: AtomicU64::new(0),
            down_since: std::sync::Mutex::new(None),
            probe_url: format!("{}/models", base_url.trim_end_matches('/')),
            changed,
            keep_probing: false,
            name: "the LLM endpoint".into(),
        }
    }

    /// One of several endpoints, named `name` in log lines: probed on past
    /// the deadline, since it may come back while the others carry the job.
    pub fn one_of_several(mut self, name: String) -> Health {
        self.keep_probing = true;
        self.name = format!("LLM {name}");
        self
    }

    fn set(&self, state: State) {
        self.state.send_replace(state);
        self.changed.notify_waiters();
    }

    pub fn is_down(&self) -> bool {
        *self.state.borrow() == State::Down
    }

    pub fn is_up(&self) -> bool {
        *self.state.borrow() == State::Up
    }

    /// Down past its deadline; `Some(why)`.
    pub fn gone_why(&self) -> Option<String> {
        match &*self.state.borrow() {
            State::Gone(why) => Some(why.clone()),
            _ => None,
        }
    }

    pub fn is_gone(&self) -> bool {
        self.gone_why().is_some()
    }

    /// Any HTTP answer: the endpoint is reachable.
    pub fn on_answer(&self) {
        self.consecutive.store(0, Ordering::Relaxed);
        self.ever_answered.store(true, Ordering::Relaxed);
    }

    /// The check before the job could not reach it: down from the start.
    pub fn declare_down(self: &Arc<Self>, http: &reqwest::Client) {
        self.consecutive.store(self.threshold, Ordering::Relaxed);
        self.went_down("it did not answer the check before the job", http);
    }

    /// A request could not reach the endpoint. The `threshold`-th in a row
    /// declares an outage and starts the probe, which asks through `http`.
    pub fn on_connection_failure(self: &Arc<Self>, http: &reqwest::Client) {
        let n = self.consecutive.fetch_add(1, Ordering::Relaxed) + 1;
        if n < self.threshold {
            return;
        }
        self.went_down(&format!("{n} connection failures in a row"), http);
    }

    fn went_down(self: &Arc<Self>, why: &str, http: &reqwest::Client) {
        let went_down = self.state.send_if_modified(|s| {
            if *s == State::Up {
                *s = State::Down;
                true
            } else {
                false
            }
        });
        if went_down {
            *self.down_since.lock().expect("down_since lock") = Some(Instant::now());
            self.changed.notify_waiters();
            self.outages.fetch_add(1, Ordering::Relaxed);
            let deadline = humantime::format_duration(self.give_up_after());
            let since = if self.ever_answered.load(Ordering::Relaxed) {
                ", llm.outage_timeout"
            } else {
                ": it has not answered since the job started"
            };
            if self.keep_probing {
                tracing::error!(
                    "{} is down ({why}): its conversations go to the other endpoints; probing {} (counted as gone after {deadline}{since}; the job stops only when every endpoint is)",
                    self.name,
                    self.probe_url,
                );
            } else {
                tracing::error!(
                    "{} is down ({why}): no new requests; probing {} (giving up after {deadline}{since})",
                    self.name,
                    self.probe_url,
                );
            }
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
            let pause = if self.is_gone() {
                PROBE_MAX
            } else {
                every.min(left)
            };
            tokio::time::sleep(pause).await;
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
                *self.down_since.lock().expect("down_since lock") = None;
                self.on_answer();
                tracing::warn!(
                    "{} answers again after {:.1}s; resuming",
                    self.name,
                    down_for.as_secs_f64()
                );
                self.set(State::Up);
                return;
            }
            if down_for < self.give_up_after() || self.is_gone() {
                continue;
            }
            let why = if self.ever_answered.load(Ordering::Relaxed) {
                format!(
                    "{} has been unreachable for {} (llm.outage_timeout); results so far are kept",
                    self.name,
                    humantime::format_duration(Duration::from_secs(down_for.as_secs()))
                )
            } else {
                format!(
                    "{} {} has not answered once in {}s since the job started: check {} and that the server is running",
                    self.name,
                    self.probe_url.trim_end_matches("/models"),
                    down_for.as_secs(),
                    if self.keep_probing { "its base_url in llm.endpoints" } else { "llm.base_url" }
                )
            };
            if self.keep_probing {
                tracing::error!(
                    "{why}; the job goes on with the other endpoints, and this one is still probed"
                );
            }
            self.set(State::Gone(why));
            if !self.keep_probing {
                self.outage_ms
                    .fetch_add(down_for.as_millis() as u64, Ordering::Relaxed);
                *self.down_since.lock().expect("down_since lock") = None;
                return;
            }
        }
    }

    /// Outages so far and their total length in seconds, the one going
    /// on now included.
    pub fn outages(&self) -> (u64, f64) {
        let ongoing = self
            .down_since
            .lock()
            .expect("down_since lock")
            .map_or(0.0, |t| t.elapsed().as_secs_f64());
        (
            self.outages.load(Ordering::Relaxed),
            self.outage_ms.load(Ordering::Relaxed) as f64 / 1000.0 + ongoing,
        )
    }
}
