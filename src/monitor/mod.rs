//! The monitor: samples convoy itself (open FDs, threads, RSS) and the
//! workspace (tmux sessions, processes, their open files) every
//! `monitor.interval`, keeps the peaks between samples, writes
//! `metrics.csv`, and applies the leak rules, so a leak is seen the minute
//! it starts; at the end, judges the run `clean`, `leak` or `unknown`.
//! Also raises RLIMIT_NOFILE at start. It reads no reporter's types: the
//! caller hands it the run's `Counts`.

mod leaks;
mod own;
mod peaks;
pub mod rlimit;
mod sampler;
mod verdict;

pub use leaks::{Finding, LeakRules, Own};
pub use own::{own_usage, settle_fds};
pub use peaks::LiveCount;
#[cfg(test)]
pub(crate) use sampler::test_samples;
pub use sampler::{Counts, Gauges, Monitor, Sample};
pub use verdict::{FailedSample, LeakVerdict, MetricsSummary, Verdict};
