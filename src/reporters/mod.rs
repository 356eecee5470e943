//! Reporters: each consumes the engine's event stream on its own (the
//! journal, the progress display, `metrics.csv`, `--events`, the printed
//! summary); none shares state with another. `fan_out` feeds them.

mod events_out;
mod hub;
mod journal;
mod metrics;
mod progress;
mod summary;

pub use events_out::EventsOut;
pub use hub::{fan_out, Reporter};
pub use journal::JournalReporter;
pub use metrics::MetricsCsv;
pub use progress::ProgressReporter;
pub use summary::SummaryPrinter;
