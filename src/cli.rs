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
#[command(
    name = "convoy",
    version,
    about,
    long_about,
    after_help = "Start a job: `convoy init myjob && convoy run myjob/job.toml` \
                  (runs offline as written; edit job.toml to point it at a model).\n\
                  Check one without running it: `convoy validate job.toml` or `convoy run job.toml --dry-run`."
)]
pub struct Cli {
    /// Log level of diagnostics on stderr. RUST_LOG, if set, wins.
    #[arg(long, global = true, value_name = "LEVEL", default_value = "info",
          value_parser = ["error", "warn", "info", "debug", "trace"])]
    pub log: String,

    /// More diagnostics: -v is debug (each LLM retry, ...), -vv trace.
    #[arg(short, long, global = true, action = clap::ArgAction::Count, conflicts_with = "quiet")]
    pub verbose: u8,

    /// Fewer diagnostics: -q is warnings and errors only, -qq errors only.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub quiet: u8,

    /// Colour in diagnostics and the progress bar. `auto`: only when stderr
    /// is a terminal and NO_COLOR is not set.
    #[arg(
        long,
        global = true,
        value_enum,
        value_name = "WHEN",
        default_value = "auto"
    )]
    pub color: Color,

    #[command(subcommand)]
    pub command: Command,
}

/// Environment variables that give flags their defaults (clap's `env`).
const ENV_DEFAULTS: &[(&str, &str)] = &[
    ("CONVOY_WORKERS", "--workers"),
    ("CONVOY_OUT", "--out"),
    ("CONVOY_LIMIT", "--limit"),
];

impl Cli {
    /// Parses the command line, exiting with clap's message (exit 2) on a
    /// bad one. An empty `CONVOY_*` variable counts as unset (as a shell's
    /// `CONVOY_LIMIT= convoy run ...` means); a bad value in one is named
    /// as the variable, not as a flag the user never typed.
    pub fn parse_args() -> Cli {
        for (var, _) in ENV_DEFAULTS {
            if std::env::var_os(var).is_some_and(|v| v.is_empty()) {
                // Before any thread exists: the first thing main does.
                std::env::remove_var(var);
            }
        }
        let error = match Cli::try_parse() {
            Ok(cli) => return cli,
            Err(e) => e,
        };
        if let Some(message) = env_value_error(&error) {
            eprintln!("error: {message}");
            std::process::exit(2);
        }
        error.exit()
    }
}

/// The message for a bad value that came from a `CONVOY_*` variable, if
/// that is where clap's rejected value came from.
fn env_value_error(error: &clap::Error) -> Option<String> {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    if !matches!(
        error.kind(),
        ErrorKind::ValueValidation | ErrorKind::InvalidValue
    ) {
        return None;
    }
    let Some(ContextValue::String(arg)) = error.get(ContextKind::InvalidArg) else {
        return None;
    };
    let (var, flag) = ENV_DEFAULTS
        .iter()
        .find(|(_, flag)| arg.split_whitespace().next() == Some(*flag))?;
    let typed = std::env::args().any(|a| a == *flag || a.starts_with(&format!("{flag}=")));
    let value = std::env::var(var).ok().filter(|_| !typed)?;
    let reason = std::error::Error::source(error)
        .map(|e| e.to_string())
        .unwrap_or_else(|| "not a valid value".into());
    Some(format!("{var}=`{value}` (the default of {flag}): {reason}"))
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
    ///
    /// Ctrl-C (SIGINT/SIGTERM): no new task starts, in-flight ones get
    /// run.grace, then they are cancelled; convoy then exits within 90 s
    /// more whatever the workspace does (a stopped helper or tmux server),
    /// removing the container. A second signal cancels at once.
    Run(RunArgs),

    /// Parse and validate a manifest, read every task row and render every
    /// prompt; runs nothing.
    Validate {
        /// The job manifest (TOML); `-` reads it from stdin (relative paths
        /// in it are then relative to the current directory).
        manifest: PathBuf,
        /// Print the plan's summary as JSON (tasks, first and last ids,
        /// workspace, endpoint).
        #[arg(long)]
        json: bool,
    },

    /// Write a starter job (job.toml, tasks.jsonl) that runs offline.
    ///
    /// An annotated job.toml and a three-row tasks.jsonl that run as they
    /// are: `convoy run DIR/job.toml`. The job uses the script provider and the local workspace; every
    /// other section of the manifest is there, commented, to switch to a
    /// real model or a Docker workspace. Existing files are never
    /// overwritten.
    Init {
        /// Directory to write into (created if missing).
        #[arg(default_value = ".")]
        dir: PathBuf,
    },

    /// Print a shell completion script.
    ///
    /// bash: `convoy completions bash > ~/.local/share/bash-completion/completions/convoy`;
    /// zsh: `convoy completions zsh > ~/.zfunc/_convoy` (with ~/.zfunc in fpath);
    /// fish: `convoy completions fish > ~/.config/fish/completions/convoy.fish`.
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },

    /// Summarise a run directory (finished, killed or still running).
    ///
    /// Counts by status, the top failure reasons, tokens, steps and
    /// duration percentiles, the leak verdict. For jobs with `[verify]`:
    /// the rewards (verified, mean, share at 1.0 or more, verify statuses),
    /// pass@k for every k up to the group size when tasks were repeated
    /// (`tasks.repeat`), and setup, agent and verify time percentiles. Of
    /// a run still going: what is done and in flight so far (the leak
    /// verdict comes at its end).
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
    /// same when it starts. Docker is looked at on the engine DOCKER_HOST
    /// names (else the local socket) and, given a manifest, on every engine
    /// of its `workspace.engines`: `convoy sweep job.toml`.
    Sweep {
        /// A manifest whose `workspace.engines` are swept too.
        manifest: Option<PathBuf>,
    },

    /// Steer a running job: pause, resume, change workers, cancel one
    /// conversation, or see what it is doing.
    ///
    /// Talks to the run through the control socket `convoy.ctl` in its run
    /// directory (mode 0600, removed when the run ends). Examples:
    /// `convoy ctl runs/job status`, `convoy ctl runs/job workers 64`,
    /// `convoy ctl runs/job cancel task-17`. Exit 2 when no run is running
    /// there, 1 when the run refused the request.
    Ctl {
        /// The run directory of the running job.
        run_dir: PathBuf,
        #[command(subcommand)]
        action: crate::ctl::CtlAction,
    },

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
    ///
    /// For jobs with `[verify]`, select by reward: `--min-reward 1` keeps
    /// the tasks whose check passed (rejection sampling for SFT), and with
    /// `tasks.repeat = N`, `--best-of-group` keeps one sample per row, the
    /// one with the highest reward. Filters apply in the order --only,
    /// --min-reward, --best-of-group: `--only ok --best-of-group` is the
    /// best of each row's `ok` samples.
    Export {
        /// A run directory.
        run_dir: PathBuf,
        /// Only tasks whose final status is this (repeatable), e.g.
        /// `--only ok`. Default: every finished task.
        #[arg(long, value_name = "STATUS", value_parser = status_names())]
        only: Vec<String>,
        /// Only tasks whose reward is at least X, whatever their status
        /// (add --only for that); tasks that were not verified (reward
        /// null) are left out. `exit_code` rewards are 0 or 1, so
        /// `--min-reward 1` keeps the passes.
        #[arg(long, value_name = "X", value_parser = finite_reward)]
        min_reward: Option<f64>,
        /// Of the samples of each row (`tasks.repeat`, same `group`), only
        /// the one with the highest reward; ties go to the lowest sample
        /// number, unverified samples rank last. A task without a group is
        /// a group of its own.
        #[arg(long)]
        best_of_group: bool,
        /// Keep `reasoning_content` in assistant messages.
        #[arg(long)]
        keep_reasoning: bool,
        /// Keep each line's `convoy` key: per assistant turn, the token
        /// ids, logprobs, finish and stop reasons the endpoint returned
        /// (`llm.logprobs`, `llm.return_token_ids`), as
        /// `{"turns": [{"message": <index in messages>, ...}]}` beside
        /// `messages`, for RL trainers that must not re-tokenize. Default:
        /// dropped, as SFT trainers read only `messages` and `tools`.
        /// --format openai only (sharegpt merges the messages it indexes).
        #[arg(long)]
        keep_token_data: bool,
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
        /// How sessions are kept apart: `user` runs each as a uid of its
        /// own (needs root), `none` as the helper's own user, `auto` picks
        /// `user` when the helper is root.
        #[arg(long, value_enum, default_value = "none")]
        isolation: crate::workspace::channel::Isolation,
        /// Most processes one session may have at once (`user` only).
        #[arg(long)]
        session_pids: Option<u64>,
        /// Most resident bytes one session's processes may hold together
        /// (`user` only).
        #[arg(long)]
        session_memory: Option<u64>,
    },

    /// What the helper starts its tmux server under: a subreaper that
    /// keeps whatever sessions abandon below it. You do not run it by hand.
    #[command(hide = true)]
    Reaper {
        /// Where to write its pid once the server runs below it.
        #[arg(long)]
        pid_file: PathBuf,
        /// The command that starts the server.
        #[arg(last = true, required = true)]
        argv: Vec<String>,
    },

    /// What the helper runs in each session's tmux pane: makes the shell a
    /// subreaper and, given a uid, drops to it with the session's limits,
    /// then runs the shell. You do not run it by hand.
    #[command(hide = true)]
    SessionExec {
        /// Become this uid (and gid).
        #[arg(long)]
        uid: Option<u32>,
        /// RLIMIT_NPROC for that uid.
        #[arg(long)]
        nproc: Option<u64>,
        /// Stay, as a subreaper, the parent of the command: say its pid and
        /// exit status on stdout, then kill what it left behind (a check).
        #[arg(long)]
        hold: bool,
        /// The shell and its arguments.
        #[arg(last = true, required = true)]
        argv: Vec<String>,
    },
}

/// When to colour diagnostics and the progress bar.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Color {
    Auto,
    Always,
    Never,
}

impl Cli {
    /// The log level after `-v`/`-q`: each step moves one level from
    /// `--log`, clamped to error..trace.
    pub fn log_level(&self) -> &'static str {
        const LEVELS: [&str; 5] = ["error", "warn", "info", "debug", "trace"];
        let base = LEVELS.iter().position(|l| *l == self.log).unwrap_or(2) as i32;
        let level = (base + self.verbose as i32 - self.quiet as i32).clamp(0, 4);
        LEVELS[level as usize]
    }
}

/// A count flag: a whole number from 1 to u32::MAX, said in words a user
/// reads (clap's own range error names Rust's bounds).
fn at_least_one(text: &str) -> Result<u32, String> {
    let n: u64 = text
        .trim()
        .parse()
        .map_err(|_| format!("`{text}` is not a whole number >= 1"))?;
    match u32::try_from(n) {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("{n} is too large (at most {})", u32::MAX)),
    }
}

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The job manifest (TOML); `-` reads it from stdin (relative paths in
    /// it are then relative to the current directory).
    pub manifest: PathBuf,

    /// Run directory; overrides `run.out` of the manifest.
    #[arg(long, env = "CONVOY_OUT")]
    pub out: Option<PathBuf>,

    /// Conversations in flight at once; overrides `run.workers`.
    #[arg(long, env = "CONVOY_WORKERS", value_name = "N", value_parser = at_least_one)]
    pub workers: Option<u32>,

    /// Run only the first N tasks (after `repeat` and `--shard`), e.g. a
    /// quick look at a new job.
    #[arg(long, env = "CONVOY_LIMIT", value_name = "N", value_parser = at_least_one)]
    pub limit: Option<u32>,

    /// Print the plan (tasks, first and last ids, the first prompt, the
    /// workspace and the endpoint) and stop: nothing is created.
    #[arg(long)]
    pub dry_run: bool,

    /// Run only the tasks whose id hashes to shard I of N (0-based: 0/4 ..
    /// 3/4). Stable across machines: a Slurm array or Kubernetes Indexed
    /// Job runs one shard per index; `convoy merge` combines them.
    #[arg(long, value_name = "I/N")]
    pub shard: Option<crate::tasks::Shard>,

    /// When continuing a run directory, also run again the tasks that
    /// ended failed, timeout, max_steps, context_limit or workspace_crash
    /// (default: only tasks with no final result run).
    #[arg(long)]
    pub retry_failed: bool,

    /// Continue a run directory even though what shapes the data (prompt,
    /// model, tools, agent settings, task rows) changed since it started.
    #[arg(long)]
    pub force: bool,

    /// Write the run's event stream as JSON lines to PATH (`-`: stdout; the
    /// summary then goes to stderr). One object per event, with `type` and
    /// `elapsed_s`; the README documents the schema (fields are only ever
    /// added).
    #[arg(long, value_name = "PATH|-")]
    pub events: Option<PathBuf>,
}

/// `--min-reward`: a number, since NaN would compare false with every
/// reward and silently export nothing.
fn finite_reward(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(x) if x.is_finite() => Ok(x),
        _ => Err(format!("expected a number such as 1 or 0.5, not `{text}`")),
    }
}

/// The statuses `export --only` accepts; clap names them in its error.
fn status_names() -> clap::builder::PossibleValuesParser {
    clap::builder::PossibleValuesParser::new(crate::journal::Status::ALL.map(|s| s.as_str()))
}
