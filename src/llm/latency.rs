//! Request latencies of one endpoint, for its p50 and p99 in the summary:
//! a histogram of logarithmic buckets (2% wide, 0.1 ms to about 30
//! minutes), so its size does not grow with the job.

use std::sync::Mutex;
use std::time::Duration;

const FLOOR_S: f64 = 1e-4;
const GROWTH: f64 = 1.02;
const BUCKETS: usize = 850;

#[derive(Debug)]
pub struct Latencies {
    counts: Mutex<Vec<u64>>,
}

impl Default for Latencies {
    fn default() -> Latencies {
        Latencies {
            counts: Mutex::new(vec![0; BUCKETS]),
        }
    }
}

impl Latencies {
    pub fn record(&self, d: Duration) {
        let s = d.as_secs_f64().max(FLOOR_S);
        let i = ((s / FLOOR_S).ln() / GROWTH.ln()) as usize;
        self.counts.lock().expect("latencies lock")[i.min(BUCKETS - 1)] += 1;
    }

    /// The `p` quantile (0..=1) in seconds, within 2%; `None` before the
    /// first request.
    pub fn quantile(&self, p: f64) -> Option<f64> {
        let counts = self.counts.lock().expect("latencies lock");
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = ((total - 1) as f64 * p.clamp(0.0, 1.0)).round() as u64;
        let mut seen = 0;
        for (i, n) in counts.iter().enumerate() {
            seen += n;
            if seen > rank {
                // The bucket's middle.
                return Some(FLOOR_S * GROWTH.powf(i as f64 + 0.5));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_within_the_bucket_width() {
        let l = Latencies::default();
        assert_eq!(l.quantile(0.5), None);
        for ms in 1..=100 {
            l.record(Duration::from_millis(ms));
        }
        let p50 = l.quantile(0.5).unwrap();
        let p99 = l.quantile(0.99).unwrap();
        assert!((p50 - 0.050).abs() / 0.050 < 0.03, "{p50}");
        assert!((p99 - 0.099).abs() / 0.099 < 0.03, "{p99}");
        // Beyond the last bucket: counted there, not lost.
        l.record(Duration::from_secs(100_000));
        assert!(l.quantile(1.0).unwrap() > 1000.0);
    }
}
