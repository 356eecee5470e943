//! `convoy report RUN_DIR`: reads a run directory (finished, resumed,
//! killed, or still running) and condenses it into a `Report` that prints
//! as text or serialises as JSON. `collect` reads (`leaks` the verdict,
//! `rewards` the figures of verified tasks), `model` is what it says,
//! `render` prints it.

mod collect;
mod leaks;
mod model;
mod render;
mod rewards;

pub use collect::{analyze, dir_name};
pub use model::{
    FailureReason, LeakFinding, LeakReport, Percentiles, Report, ReportError, RunState, Tokens,
    TornLine,
};
pub use rewards::{PassAtK, PhaseTimes, Rewards};
