//! Command-line definitions (clap). Turns arguments into a request; does no
//! I/O of its own.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// convoy runs thousands of LLM agent conversations in one shared workspace
/// (a private tmux server on this host or in one Docker container) and writes
/// every trajectory as training-ready JSONL.
///
/// Quickstart: `convoy run jobs/smoke.toml` (no API key needed).
///
/// Exit codes: 0 every task ok, 1 some tasks failed, 2 invalid input,
/// 3 leak detected (monitor.on_leak = "fail"), 4 infrastructure failure,
/// 130 interrupted.
#[derive(Debug, Parser)]
#[command(name = "convoy", version, about, long_about)]
pub struct Cli {
    /// Log level for diagnostics on stderr (error, warn, info, debug, trace).
    /// RUST_LOG, if set, wins.
    #[arg(long, global = true, default_value = "info")]
    pub log: String,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a job: validate everything, boot the workspace, run every task,
    /// write the run directory.
    ///
    /// The run directory gets manifest.toml (a snapshot), results.jsonl (one
    /// line per finished task), trajectories.jsonl (OpenAI chat format) and
    /// summary.json.
    Run(RunArgs),

    /// Parse and validate a manifest, read every task row and render every
    /// prompt; runs nothing.
    Validate {
        /// The job manifest (TOML).
        manifest: PathBuf,
    },

    /// The workspace helper: serves session requests for one tmux server
    /// over stdin/stdout. convoy starts it itself (as a child process, or
    /// inside the Docker workspace); you do not run it by hand.
    #[command(hide = true)]
    Shim {
        /// Directory the helper owns: tmux socket, completion FIFO, command
        /// and output files. Created if missing.
        #[arg(long)]
        root: PathBuf,
        /// When stdin closes, just exit: leave the tmux server and its
        /// sessions for the next helper to adopt. (Default: kill everything,
        /// since a closed stdin means convoy is gone.) The Docker workspace
        /// uses this, as the container's removal cleans up.
        #[arg(long)]
        keep_on_eof: bool,
    },
}

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The job manifest (TOML).
    pub manifest: PathBuf,

    /// Run directory; overrides `run.out` of the manifest.
    #[arg(long)]
    pub out: Option<PathBuf>,

    /// Conversations in flight at once; overrides `run.workers`.
    #[arg(long)]
    pub workers: Option<usize>,

    /// Run only the first N tasks (after `repeat`), e.g. for a dry run.
    #[arg(long)]
    pub limit: Option<usize>,
}
