//! What a person sees: live progress (a bar on a TTY, plain lines for cron
//! and CI), the final summary, and `convoy report`'s reading of a run
//! directory. The live parts are fed by the engine's events (`reporters`).

mod analyze;
mod chart;
mod plan;
mod progress;
mod retries;
mod stdout;
mod summary;
pub mod term;

pub use analyze::{
    analyze, FailureReason, LeakFinding, LeakReport, PassAtK, Percentiles, PhaseTimes, Report,
    ReportError, Rewards, RunState, Tokens, TornLine,
};
pub use chart::write_chart;
pub use plan::PlanSummary;
pub use progress::Progress;
pub(crate) use stdout::{is_closed_pipe, say};
pub use summary::Summary;
