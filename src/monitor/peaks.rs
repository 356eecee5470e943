//! Counts kept as things happen, so the monitor sees the highest value
//! between two samples: a job shorter than `monitor.interval` still had
//! sessions open, and a sample every 5 s misses a burst that lasted 1 s.
//! Whoever opens and closes a thing moves its count; the monitor takes the
//! peak once per sample.

use std::sync::atomic::{AtomicU64, Ordering};

/// A count that goes up and down, with its peak since the monitor last
/// took it.
#[derive(Debug, Default)]
pub struct LiveCount {
    now: AtomicU64,
    peak: AtomicU64,
}

impl LiveCount {
    pub fn inc(&self) {
        let now = self.now.fetch_add(1, Ordering::Relaxed) + 1;
        self.peak.fetch_max(now, Ordering::Relaxed);
    }

    /// Never below zero: closing what was never counted (a stray session
    /// the final sweep closes) leaves the count at zero.
    pub fn dec(&self) {
        let _ = self
            .now
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                Some(n.saturating_sub(1))
            });
    }

    pub fn now(&self) -> u64 {
        self.now.load(Ordering::Relaxed)
    }

    /// The peak since the last call; the next window starts from now.
    pub fn take_peak(&self) -> u64 {
        let now = self.now.load(Ordering::Relaxed);
        self.peak.swap(now, Ordering::Relaxed).max(now)
    }
}

/// The highest of readings taken between two samples.
#[derive(Debug, Default)]
pub struct Peak(AtomicU64);

impl Peak {
    pub fn observe(&self, v: u64) {
        self.0.fetch_max(v, Ordering::Relaxed);
    }

    /// The highest reading since the last call.
    pub fn take(&self) -> u64 {
        self.0.swap(0, Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_live_count_keeps_the_peak_between_takes() {
        let g = LiveCount::default();
        g.inc();
        g.inc();
        g.inc();
        g.dec();
        g.dec();
        assert_eq!(g.now(), 1);
        assert_eq!(g.take_peak(), 3);
        // The next window starts from what is open now.
        assert_eq!(g.take_peak(), 1);
        g.dec();
        g.dec();
        assert_eq!(g.now(), 0);
        assert_eq!(g.take_peak(), 1);
        assert_eq!(g.take_peak(), 0);
    }

    #[test]
    fn a_peak_forgets_after_each_take() {
        let p = Peak::default();
        p.observe(5);
        p.observe(2);
        assert_eq!(p.take(), 5);
        assert_eq!(p.take(), 0);
    }
}
