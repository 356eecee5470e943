//! Which endpoint a request goes to.
//!
//! A conversation is assigned the eligible endpoint with the fewest
//! outstanding requests (waiting for a slot or in flight) for its weight,
//! ties going to the one that was sent fewer requests for its weight; it
//! stays there (each turn extends the same prompt, so the server's prefix
//! cache hits) unless that endpoint is down, taken out, or has had no room
//! in its limiter for `llm.sticky_wait`; then it moves to one with room
//! and stays there. Eligible: a primary that is up; a fallback only while
//! every primary is down or taken out. The job-wide ceiling
//! (`llm.max_in_flight`) is a second, fixed limit every request also
//! passes; each endpoint adapts its own.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

use super::endpoint::{Upstream, RECHECK};
use super::limiter::{Limiter, LimiterStats, Permit};
use super::types::LlmError;
use crate::manifest::Role;

const NONE: usize = usize::MAX;

/// The endpoint one conversation is on (none before its first request).
#[derive(Debug)]
pub struct Sticky(AtomicUsize);

impl Default for Sticky {
    fn default() -> Sticky {
        Sticky(AtomicUsize::new(NONE))
    }
}

impl Sticky {
    fn get(&self) -> Option<usize> {
        Some(self.0.load(Ordering::Relaxed)).filter(|i| *i != NONE)
    }

    fn set(&self, i: usize) {
        self.0.store(i, Ordering::Relaxed);
    }
}

#[derive(Debug)]
pub(super) struct Pool {
    pub upstreams: Vec<Arc<Upstream>>,
    /// The job names its servers in `llm.endpoints` (even one): turns,
    /// the summary and metrics.csv then say which endpoint did what.
    pub listed: bool,
    /// `llm.max_in_flight` for the whole job: never cut, only a cap.
    job: Limiter,
    sticky_wait: Duration,
    changed: Arc<Notify>,
}

/// A request's place on its endpoint: the endpoint's slot and the job's,
/// and its count among the endpoint's outstanding requests; all released
/// when dropped.
pub(super) struct Routed<'a> {
    pub up: &'a Upstream,
    pub slot: Permit<'a>,
    _job: Permit<'a>,
    _outstanding: Outstanding<'a>,
}

struct Outstanding<'a>(&'a Upstream);

impl<'a> Outstanding<'a> {
    fn new(up: &'a Upstream) -> Outstanding<'a> {
        up.outstanding.fetch_add(1, Ordering::Relaxed);
        Outstanding(up)
    }
}

impl Drop for Outstanding<'_> {
    fn drop(&mut self) {
        self.0.outstanding.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Pool {
    pub fn new(
        upstreams: Vec<Arc<Upstream>>,
        listed: bool,
        ceiling: usize,
        sticky_wait: Duration,
        changed: Arc<Notify>,
    ) -> Pool {
        Pool {
            upstreams,
            listed,
            job: Limiter::new(ceiling),
            sticky_wait,
            changed,
        }
    }

    pub fn several(&self) -> bool {
        self.upstreams.len() > 1
    }

    fn any_primary_usable(&self) -> bool {
        self.upstreams
            .iter()
            .any(|u| u.role == Role::Primary && u.usable())
    }

    fn eligible(&self, up: &Upstream) -> bool {
        up.usable() && (up.role == Role::Primary || !self.any_primary_usable())
    }

    /// The eligible endpoint with the fewest outstanding requests for its
    /// weight (ties: fewer requests so far for its weight, then order);
    /// with `room_only`, only endpoints with a free slot now.
    fn choose(&self, except: &[usize], room_only: bool) -> Option<&Arc<Upstream>> {
        let key = |u: &Arc<Upstream>| {
            let w = u.weight as f64;
            let load = (u.outstanding.load(Ordering::Relaxed) + 1) as f64 / w;
            let history = u.routed.load(Ordering::Relaxed) as f64 / w;
            (load, history, u.index)
        };
        self.upstreams
            .iter()
            .filter(|u| !except.contains(&u.index) && self.eligible(u))
            .filter(|u| !room_only || u.limiter.in_flight() < u.limiter.limit())
            .min_by(|a, b| key(a).partial_cmp(&key(b)).expect("finite loads"))
    }

    /// The conversation's endpoint if it may still go there, else a new
    /// one (remembered).
    fn current(&self, sticky: &Sticky) -> Option<&Arc<Upstream>> {
        if let Some(up) = sticky.get().and_then(|i| self.upstreams.get(i)) {
            if self.eligible(up) {
                return Some(up);
            }
        }
        let chosen = self.choose(&[], false)?;
        sticky.set(chosen.index);
        Some(chosen)
    }

    /// Moves the conversation to an eligible endpoint not in `avoid` (those
    /// that failed its request); false when there is none.
    pub fn move_away(&self, sticky: &Sticky, avoid: &[usize]) -> bool {
        match self.choose(avoid, false) {
            Some(other) => {
                sticky.set(other.index);
                true
            }
            None => false,
        }
    }

    /// Every endpoint is out for good: why, as the job's error.
    fn all_gone(&self) -> Option<LlmError> {
        if !self.upstreams.iter().all(|u| u.gone()) {
            return None;
        }
        // An outage's reason names its endpoint already.
        let why = |u: &Upstream| {
            u.health
                .gone_why()
                .or_else(|| {
                    u.removed()
                        .map(|r| format!("{} was taken out: {r}", u.name()))
                })
                .unwrap_or_default()
        };
        Some(LlmError::Outage(match self.upstreams.as_slice() {
            [one] => why(one),
            all => format!(
                "every LLM endpoint is out: {}",
                all.iter().map(|u| why(u)).collect::<Vec<_>>().join("; ")
            ),
        }))
    }

    /// Waits until some endpoint may take requests; an error once every
    /// endpoint is out for good.
    /// (Some endpoint usable is enough: a usable primary is eligible, and
    /// without one a usable fallback is.) Every request passes here, so
    /// the usual case costs no waiter.
    pub async fn wait_usable(&self) -> Result<(), LlmError> {
        let any_usable = || self.upstreams.iter().any(|u| u.usable());
        if any_usable() {
            return Ok(());
        }
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if any_usable() {
                return Ok(());
            }
            if let Some(e) = self.all_gone() {
                return Err(e);
            }
            let _ = tokio::time::timeout(RECHECK, changed).await;
        }
    }

    /// A place for one request of the conversation `sticky` names.
    pub async fn route(&self, sticky: &Sticky) -> Result<Routed<'_>, LlmError> {
        loop {
            self.wait_usable().await?;
            let Some(up) = self.current(sticky) else {
                continue;
            };
            let outstanding = Outstanding::new(up);
            let slot = if self.several() {
                match self.slot_or_move(up, sticky).await {
                    Some(slot) => slot,
                    None => continue,
                }
            } else {
                up.limiter.acquire().await
            };
            let job = self.job.acquire().await;
            if !self.eligible(up) {
                // It went down, was taken out, or a primary came back
                // while we waited.
                continue;
            }
            up.routed.fetch_add(1, Ordering::Relaxed);
            return Ok(Routed {
                up,
                slot,
                _job: job,
                _outstanding: outstanding,
            });
        }
    }

    /// A slot on `up`, keeping the conversation's place in its queue; `None`
    /// when the conversation should go elsewhere: `up` went down, was taken
    /// out or is a fallback whose primary came back, or it had no room for
    /// `sticky_wait` while another endpoint has room now (the conversation
    /// moves there and stays).
    async fn slot_or_move<'a>(&'a self, up: &'a Upstream, sticky: &Sticky) -> Option<Permit<'a>> {
        if let Some(slot) = up.limiter.try_acquire() {
            return Some(slot);
        }
        let deadline = tokio::time::Instant::now() + self.sticky_wait;
        let acquire = up.limiter.acquire();
        tokio::pin!(acquire);
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            tokio::select! {
                slot = &mut acquire => return Some(slot),
                _ = tokio::time::sleep(RECHECK) => {}
                _ = changed => {}
            }
            if !self.eligible(up) {
                return None;
            }
            if tokio::time::Instant::now() >= deadline {
                if let Some(other) = self.choose(&[up.index], true) {
                    tracing::debug!(
                        "a conversation moves from {} (no room for {:?}) to {}",
                        up.name(),
                        self.sticky_wait,
                        other.name()
                    );
                    sticky.set(other.index);
                    return None;
                }
            }
        }
    }

    /// Requests in flight now, job-wide.
    pub fn in_flight(&self) -> usize {
        self.job.in_flight()
    }

    pub fn take_in_flight_peak(&self) -> usize {
        self.job.take_peak()
    }

    pub fn ceiling(&self) -> usize {
        self.job.stats().ceiling
    }

    /// Requests allowed in flight now: the endpoints' adaptive limits (of
    /// those that may take requests), within the job's ceiling.
    pub fn limit(&self) -> usize {
        match self.upstreams.as_slice() {
            [one] => one.limiter.limit(),
            all => all
                .iter()
                .filter(|u| u.usable())
                .map(|u| u.limiter.limit())
                .sum::<usize>()
                .min(self.ceiling()),
        }
    }

    /// The limiter figures for the summary: the endpoint's own with one;
    /// with several, their sums within the job's ceiling.
    pub fn limiter_stats(&self) -> LimiterStats {
        if let [one] = self.upstreams.as_slice() {
            return one.limiter.stats();
        }
        let ceiling = self.ceiling();
        let all: Vec<LimiterStats> = self.upstreams.iter().map(|u| u.limiter.stats()).collect();
        LimiterStats {
            ceiling,
            current: self.limit(),
            lowest: all.iter().map(|s| s.lowest).sum::<usize>().min(ceiling),
            cuts: all.iter().map(|s| s.cuts).sum(),
        }
    }
}
