//! Token buckets for `llm.requests_per_minute` and `llm.tokens_per_minute`.
//!
//! The request bucket takes 1 per request before it is sent. The token
//! bucket cannot know a request's size in advance, so it runs in debt: a
//! request waits until the balance is not negative, and its reply's
//! `total_tokens` is charged afterwards. Over a minute both average out to
//! the configured rate; bursts are at most one second's worth.

use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct Bucket {
    per_s: f64,
    capacity: f64,
    state: Mutex<(f64, Instant)>,
}

impl Bucket {
    pub fn per_minute(n: f64) -> Bucket {
        let per_s = n / 60.0;
        let capacity = per_s.max(1.0);
        Bucket {
            per_s,
            capacity,
            state: Mutex::new((capacity, Instant::now())),
        }
    }

    /// How long to wait before `cost` can be taken; takes it when that is 0.
    fn try_take(&self, cost: f64, now: Instant) -> Option<Duration> {
        let mut s = self.state.lock().expect("bucket lock");
        let (balance, last) = &mut *s;
        *balance =
            (*balance + now.duration_since(*last).as_secs_f64() * self.per_s).min(self.capacity);
        *last = now;
        let need = cost.min(self.capacity);
        if *balance >= need {
            *balance -= cost;
            None
        } else {
            Some(Duration::from_secs_f64((need - *balance) / self.per_s))
        }
    }

    /// Waits until `cost` is available and takes it (cost 0: waits until
    /// the bucket is out of debt).
    pub async fn take(&self, cost: f64) {
        while let Some(wait) = self.try_take(cost, Instant::now()) {
            tokio::time::sleep(wait).await;
        }
    }

    /// Charges `cost` after the fact (may put the bucket in debt).
    pub fn charge(&self, cost: f64) {
        self.state.lock().expect("bucket lock").0 -= cost;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_bucket_gives_one_seconds_worth_then_makes_callers_wait() {
        let b = Bucket::per_minute(120.0); // 2 per second
        let t0 = Instant::now();
        assert_eq!(b.try_take(1.0, t0), None);
        assert_eq!(b.try_take(1.0, t0), None);
        let wait = b.try_take(1.0, t0).expect("empty");
        assert!((wait.as_secs_f64() - 0.5).abs() < 1e-6, "{wait:?}");
        assert_eq!(b.try_take(1.0, t0 + Duration::from_millis(500)), None);
    }

    #[test]
    fn debt_from_charged_tokens_blocks_until_repaid() {
        let b = Bucket::per_minute(6000.0); // 100 tokens/s
        let t0 = Instant::now();
        assert_eq!(b.try_take(0.0, t0), None);
        b.charge(400.0); // balance 100 - 400 = -300
        let wait = b.try_take(0.0, t0).expect("in debt");
        assert!((wait.as_secs_f64() - 3.0).abs() < 1e-6, "{wait:?}");
        assert_eq!(b.try_take(0.0, t0 + Duration::from_secs(3)), None);
    }
}
