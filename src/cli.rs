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
    /// The run directory gets manifest.toml (a snapshot), fingerprint.json,
    /// results.jsonl (one line per finished task), trajectories.jsonl
    /// (OpenAI chat format), turns.jsonl (partial trajectories of tasks
    /// still running), metrics.csv and summary.json.
    ///
    /// Run again on the same directory, it continues: tasks with a final
    /// result are skipped (with --retry-failed only `ok` ones), the rest
    /// run. A changed prompt, model, tool set, agent setting or task row is
    /// refused unless --force.
    Run(RunArgs),

    /// Parse and validate a manifest, read every task row and render every
    /// prompt; runs nothing.
    Validate {
        /// The job manifest (TOML).
        manifest: PathBuf,
    },

    /// Summarise a run directory (finished, killed or still running).
    ///
    /// Counts by status, the top failure reasons, tokens, steps and
    /// duration percentiles, the leak verdict. Of a run still going: what
    /// is done and in flight so far (the leak verdict comes at its end).
    /// Reads only: nothing is written unless --chart asks for the chart.
    Report {
        /// A run directory (what `convoy run` wrote).
        run_dir: PathBuf,
        /// Print the report as JSON instead of text.
        #[arg(long)]
        json: bool,
        /// Also write a chart of metrics.csv (open FDs, tmux sessions,
        /// in-flight, done over time) as SVG: to FILE, or without a value
        /// to RUN_DIR/metrics.svg.
        #[arg(long, value_name = "FILE", num_args = 0..=1, require_equals = true)]
        chart: Option<Option<PathBuf>>,
    },

    /// Remove what crashed runs left on this host.
    ///
    /// Docker containers of convoy runs whose convoy process is gone, and the tmux servers,
    /// processes and temp directories of local workspaces whose convoy is
    /// gone. Runs of live convoys are never touched. `convoy run` does the
    /// same when it starts.
    Sweep,

    /// Combine shard run directories into one.
    ///
    /// For `convoy run --shard I/N` runs: one result per task id (an `ok` one if any shard has it), their
    /// trajectories, the manifest and fingerprint. Refuses directories
    /// whose fingerprints differ.
    Merge {
        /// The directory to write (must not hold results yet).
        out: PathBuf,
        /// The shard run directories.
        #[arg(required = true)]
        run_dirs: Vec<PathBuf>,
    },

    /// Write SFT-ready JSONL for trainers.
    ///
    /// One line per task (its final trajectory), as
    /// `{"messages": [...], "tools": [...]}` (--format openai: TRL,
    /// `apply_chat_template(messages, tools=tools)`) or as
    /// `{"conversations": [...], "system": "...", "tools": "..."}`
    /// (--format sharegpt: LLaMA-Factory). Tool results carry the tool's
    /// `name`. With --out, FILE is replaced only once the export succeeded.
    Export {
        /// A run directory.
        run_dir: PathBuf,
        /// Only tasks whose final status is this (repeatable), e.g.
        /// `--only ok`. Default: every finished task.
        #[arg(long, value_name = "STATUS", value_parser = status_names())]
        only: Vec<String>,
        /// Keep `reasoning_content` in assistant messages.
        #[arg(long)]
        keep_reasoning: bool,
        /// The shape of each line.
        #[arg(long, value_enum, default_value_t)]
        format: crate::journal::ExportFormat,
        /// Tool call arguments as the JSON string OpenAI sends, or as the
        /// object Hugging Face chat templates render with `tojson`.
        /// Default: string for openai, object for sharegpt.
        #[arg(long, value_enum)]
        arguments: Option<crate::journal::ArgumentsAs>,
        /// Write here instead of stdout.
        #[arg(long, short, value_name = "FILE")]
        out: Option<PathBuf>,
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

    /// Run only the first N tasks (after `repeat` and `--shard`), e.g. for
    /// a dry run.
    #[arg(long)]
    pub limit: Option<usize>,

    /// Run only the tasks whose id hashes to shard I of N (0-based: 0/4 ..
    /// 3/4). Stable across machines: a Slurm array or Kubernetes Indexed
    /// Job runs one shard per index; `convoy merge` combines them.
    #[arg(long, value_name = "I/N")]
    pub shard: Option<crate::tasks::Shard>,

    /// When continuing a run directory, also run again the tasks that
    /// ended failed, timeout, max_steps or context_limit (default: only
    /// tasks with no final result run).
    #[arg(long)]
    pub retry_failed: bool,

    /// Continue a run directory even though what shapes the data (prompt,
    /// model, tools, agent settings, task rows) changed since it started.
    #[arg(long)]
    pub force: bool,
}

/// The statuses `export --only` accepts; clap names them in its error.
fn status_names() -> clap::builder::PossibleValuesParser {
    clap::builder::PossibleValuesParser::new(crate::journal::Status::ALL.map(|s| s.as_str()))
}
