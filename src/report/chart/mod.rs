//! `metrics.svg`: the monitor's samples (`metrics.csv`) drawn as four
//! stacked panels over elapsed time, so a leak or a stall shows at a
//! glance: convoy's open FDs, tmux sessions and workspace processes, what
//! is in flight, and completions.
//!
//! The SVG is written by hand rather than with a plotting crate: a handful
//! of polylines, lines and labels does not justify a new dependency, and
//! the output must be self-contained (no scripts, no web fonts) so it opens
//! anywhere, including as a CI artefact.
//!
//! Columns are found by header name, so samplers that add columns (or an
//! old run that lacks one) still chart: a missing column is just not drawn.
//!
//! `metrics` reads the CSV and writes the file; `svg` draws the panels;
//! `axis` picks their ticks.

mod axis;
mod metrics;
mod svg;

pub use metrics::write_chart;
