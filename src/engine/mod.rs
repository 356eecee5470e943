//! The engine: dispatch under a bounded, adjustable pool, deadlines,
//! retries, cancellation, the monitor's sampling and signal handling.
//! It emits every step as an `events::Event`; it knows nothing of who
//! listens (journal, progress, `metrics.csv`, summary, `--events`).
//!
//! Theory of operation: `Engine::new` takes the plan's settings (`Config`),
//! the workspace, the model side and the monitor's probe behind the traits
//! of `ports`, and an event sender. `run` emits `run_started`, then
//! dispatches each task while the gate (running < workers, not paused) is
//! open and nothing asked to stop; each task runs its attempts in its own
//! tokio task (`attempt`). Commands (`control`) steer it: signals, `convoy
//! ctl`, a reporter that failed. At the end it sweeps the workspace, takes
//! the final sample and emits `run_finished` with the outcome and the exit
//! code (`exit_code`, the one place that decides it).

mod attempt;
mod budget;
mod control;
mod external;
#[cfg(test)]
mod fakes;
mod infra;
mod phases;
mod ports;
mod real;
mod run;
mod state;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_env;
mod track;

pub(crate) use attempt::panic_message;
pub use budget::Budget;
pub use control::{forward_signals, Command, EngineHandle, StatusReport, Steering, Waiting};
pub use external::GatewayAccess;
pub use ports::{Models, Probe, Sampled, Sessions};
pub use real::MonitorProbe;
pub use run::{exit_code, Engine};
pub use state::Config;
