//! What a person sees: live progress (a bar on a TTY, plain lines for cron
//! and CI) and the final summary. Both read the scheduler's events.

mod analyze;
mod chart;
mod plan;
mod progress;
mod retries;
mod summary;
pub mod term;

pub use analyze::{
    analyze, FailureReason, LeakFinding, LeakReport, Percentiles, Report, ReportError, RunState,
    Tokens, TornLine,
};
pub use chart::write_chart;
pub use plan::PlanSummary;
pub use progress::Progress;
pub use summary::{MetricsSummary, Summary, Tally};
