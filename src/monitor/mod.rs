//! The monitor: samples convoy itself (open FDs, threads, RSS) and the
//! workspace (tmux sessions, processes, their open files) every
//! `monitor.interval`, writes `metrics.csv`, and applies the leak rules, so
//! a leak is seen the minute it starts. Also raises RLIMIT_NOFILE at start.

mod leaks;
pub mod rlimit;
mod sampler;

pub use leaks::{Finding, LeakRules};
pub use sampler::{own_usage, Gauges, Monitor, Sample};
