//! The periodic summary of LLM retries. Each retry is a debug line (a
//! storm of 429s would otherwise bury every other log line); at info level
//! people see, at most once per monitor interval, how many retries of each
//! reason happened since the last summary.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Turns the job's running retry counts into "since the last summary" lines.
#[derive(Debug)]
pub struct RetryDigest {
    every: Duration,
    seen: BTreeMap<String, u64>,
    /// When the last summary was given (or the digest created).
    since: Instant,
}

impl RetryDigest {
    pub fn new(every: Duration) -> RetryDigest {
        RetryDigest {
            every,
            seen: BTreeMap::new(),
            since: Instant::now(),
        }
    }

    /// A summary of the retries counted since the last one, if there were
    /// any and an interval has passed (or `force`, for the last word).
    /// `totals` are the job's counts by reason so far.
    pub fn observe(
        &mut self,
        now: Instant,
        totals: &BTreeMap<String, u64>,
        force: bool,
    ) -> Option<String> {
        let waited = now.saturating_duration_since(self.since);
        if !force && waited < self.every {
            return None;
        }
        let new: Vec<String> = totals
            .iter()
            .filter_map(|(reason, n)| {
                let before = self.seen.get(reason).copied().unwrap_or(0);
                (*n > before).then(|| format!("{reason} {}", n - before))
            })
            .collect();
        if new.is_empty() {
            return None;
        }
        self.seen = totals.clone();
        self.since = now;
        Some(format!(
            "LLM retries in the last {}s: {} (-v logs each one)",
            waited.as_secs(),
            new.join(", ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(pairs: &[(&str, u64)]) -> BTreeMap<String, u64> {
        pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    }

    #[test]
    fn counts_since_the_last_summary_at_most_once_per_interval() {
        let t0 = Instant::now();
        let every = Duration::from_secs(5);
        let mut d = RetryDigest {
            every,
            seen: BTreeMap::new(),
            since: t0,
        };
        // Within the first interval: nothing, however many retries.
        assert_eq!(
            d.observe(
                t0 + Duration::from_secs(1),
                &counts(&[("http_429", 3)]),
                false
            ),
            None
        );
        let line = d
            .observe(
                t0 + every,
                &counts(&[("http_429", 40), ("timeout", 2)]),
                false,
            )
            .unwrap();
        assert_eq!(
            line,
            "LLM retries in the last 5s: http_429 40, timeout 2 (-v logs each one)"
        );
        // Right after a summary: quiet until the next interval.
        assert_eq!(
            d.observe(
                t0 + every + Duration::from_secs(1),
                &counts(&[("http_429", 50), ("timeout", 2)]),
                false
            ),
            None
        );
        // Only what is new since the last summary, only reasons that grew.
        let line = d
            .observe(
                t0 + 3 * every,
                &counts(&[("http_429", 52), ("timeout", 2)]),
                false,
            )
            .unwrap();
        assert_eq!(
            line,
            "LLM retries in the last 10s: http_429 12 (-v logs each one)"
        );
        // No new retries: no line, even when forced.
        assert_eq!(
            d.observe(
                t0 + 9 * every,
                &counts(&[("http_429", 52), ("timeout", 2)]),
                true
            ),
            None
        );
        // The last word comes early when forced.
        assert!(d
            .observe(
                t0 + 9 * every + Duration::from_secs(1),
                &counts(&[("http_503", 1)]),
                true
            )
            .is_some_and(|l| l.contains("http_503 1")));
    }
}
