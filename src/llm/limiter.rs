//! The job's adaptive limit on requests in flight to the endpoint (AIMD).
//!
//! `llm.max_in_flight` is the ceiling. A 429 halves the limit (at most once
//! per `CUT_COOLDOWN`: the 429s of one congestion event arrive together and
//! must not each halve it again), every success adds `GROWTH / limit`, so a
//! halved limit climbs back over a few times its own size in successes. The
//! limit never drops below 1, so the job always makes progress.
//!
//! Written here rather than taken from a crate: the crates we found are
//! tower layers (one service per client), while convoy needs one limit
//! shared by every conversation and visible to the monitor.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::Notify;

const CUT_COOLDOWN: Duration = Duration::from_secs(1);
const DECREASE: f64 = 0.5;
/// Additive increase per success is `GROWTH / limit`: from 128 back to 256
/// takes ~1,500 successes, from 4 to 8 about 2.
const GROWTH: f64 = 16.0;

#[derive(Debug)]
pub struct Limiter {
    ceiling: f64,
    state: Mutex<State>,
    freed: Notify,
}

#[derive(Debug)]
struct State {
    limit: f64,
    in_flight: usize,
    /// The most in flight since the monitor last took it.
    peak: usize,
    last_cut: Option<Instant>,
    cuts: u64,
    lowest: f64,
}

/// What the limiter did so far, for the summary.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
pub struct LimiterStats {
    pub ceiling: usize,
    pub current: usize,
    pub lowest: usize,
    pub cuts: u64,
}

impl Limiter {
    pub fn new(ceiling: usize) -> Limiter {
        let ceiling = ceiling.max(1) as f64;
        Limiter {
            ceiling,
            state: Mutex::new(State {
                limit: ceiling,
                in_flight: 0,
                peak: 0,
                last_cut: None,
                cuts: 0,
                lowest: ceiling,
            }),
            freed: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("limiter lock")
    }

    /// Waits for a slot under the current limit.
    pub async fn acquire(&self) -> Permit<'_> {
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if let Some(permit) = self.try_acquire() {
                return permit;
            }
            freed.await;
        }
    }

    /// A slot if one is free now.
    pub fn try_acquire(&self) -> Option<Permit<'_>> {
        let mut s = self.lock();
        if s.in_flight < s.limit as usize {
            s.in_flight += 1;
            s.peak = s.peak.max(s.in_flight);
            return Some(Permit { limiter: self });
        }
        None
    }

    pub fn in_flight(&self) -> usize {
        self.lock().in_flight
    }

    /// The most requests in flight since the last call (each holds one
    /// HTTP connection, so this bounds what the pool can have opened).
    pub fn take_peak(&self) -> usize {
        let mut s = self.lock();
        let in_flight = s.in_flight;
        std::mem::replace(&mut s.peak, in_flight)
    }

    /// The allowed requests in flight now.
    pub fn limit(&self) -> usize {
        self.lock().limit as usize
    }

    pub fn stats(&self) -> LimiterStats {
        let s = self.lock();
        LimiterStats {
            ceiling: self.ceiling as usize,
            current: s.limit as usize,
            lowest: s.lowest as usize,
            cuts: s.cuts,
        }
    }

    fn release(&self) {
        self.lock().in_flight -= 1;
        self.freed.notify_one();
    }
}

/// One request's slot; released when dropped. Report how the request went
/// first, so the limit adapts.
#[derive(Debug)]
pub struct Permit<'a> {
    limiter: &'a Limiter,
}

impl Permit<'_> {
    /// The endpoint answered: grow the limit a little.
    pub fn success(&self) {
        let l = self.limiter;
        let grew = {
            let mut s = l.lock();
            let before = s.limit as usize;
            s.limit = (s.limit + GROWTH / s.limit).min(l.ceiling);
            s.limit as usize > before
        };
        if grew {
            l.freed.notify_one();
        }
    }

    /// The endpoint said 429: halve the limit, once per congestion event.
    /// The new limit when it was cut, for the caller to log with the
    /// endpoint's name.
    pub fn throttled(&self) -> Option<usize> {
        let l = self.limiter;
        let mut s = l.lock();
        let now = Instant::now();
        if s.last_cut
            .is_some_and(|t| now.duration_since(t) < CUT_COOLDOWN)
        {
            return None;
        }
        s.last_cut = Some(now);
        s.cuts += 1;
        s.limit = (s.limit * DECREASE).max(1.0);
        s.lowest = s.lowest.min(s.limit);
        Some(s.limit as usize)
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        self.limiter.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_429_halves_the_limit_once_per_event_and_successes_grow_it_back() {
        let l = Limiter::new(64);
        let p = l.acquire().await;
        assert_eq!(p.throttled(), Some(32));
        assert_eq!(p.throttled(), None, "same congestion event: no second cut");
        assert_eq!(l.limit(), 32);
        for _ in 0..10_000 {
            p.success();
        }
        assert_eq!(l.limit(), 64, "grows back to the ceiling, never past it");
        let s = l.stats();
        assert_eq!((s.lowest, s.cuts), (32, 1));
    }

    #[tokio::test]
    async fn the_peak_holds_the_most_in_flight_between_takes() {
        let l = Limiter::new(8);
        let a = l.acquire().await;
        let b = l.acquire().await;
        drop(a);
        drop(b);
        let _c = l.acquire().await;
        assert_eq!(l.take_peak(), 2);
        assert_eq!(
            l.take_peak(),
            1,
            "the next window starts from what is in flight"
        );
    }

    #[tokio::test]
    async fn waiters_beyond_the_limit_wait_for_a_release() {
        let l = std::sync::Arc::new(Limiter::new(2));
        let a = l.acquire().await;
        let _b = l.acquire().await;
        let l2 = l.clone();
        let third = tokio::spawn(async move {
            let _p = l2.acquire().await;
        });
        tokio::task::yield_now().await;
        assert!(!third.is_finished());
        assert_eq!(l.in_flight(), 2);
        drop(a);
        third.await.unwrap();
        assert_eq!(l.in_flight(), 1);
    }

    #[tokio::test]
    async fn the_limit_never_drops_below_one() {
        let l = Limiter::new(4);
        for _ in 0..5 {
            l.lock().last_cut = None;
            l.acquire().await.throttled();
        }
        assert_eq!(l.limit(), 1);
    }
}
