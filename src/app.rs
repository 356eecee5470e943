//! Wiring: turns a parsed command line into a run and maps every outcome to
//! an exit code. The only place that knows about all modules at once.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc;

use crate::cli::{Cli, Command, RunArgs};
use crate::ctl::CtlServer;
use crate::engine::{forward_signals, Engine, MonitorProbe, Steering};
use crate::exit::{Exit, Failure};
use crate::journal::{Journal, JournalError};
use crate::llm::Llm;
use crate::manifest::{self, Job};
use crate::monitor::{rlimit, Monitor};
use crate::report::Progress;
use crate::reporters::{
    fan_out, EventsOut, JournalReporter, MetricsCsv, ProgressReporter, Reporter, SummaryPrinter,
};
use crate::tasks;
use crate::workspace::{Workspace, WorkspaceError};

mod commands;
mod plan;
pub(crate) use crate::report::say;
pub use plan::{EventsTo, RunPlan};

/// Runs the command and returns the exit code; errors are printed here.
pub fn main(cli: Cli) -> Exit {
    // In a session's pane: no runtime, no logging, just the exec.
    if let Command::SessionExec {
        uid,
        nproc,
        hold,
        argv,
    } = cli.command
    {
        let launch = crate::workspace::channel::Launch {
            uid,
            nproc,
            hold,
            argv,
        };
        let failed = if hold {
            crate::workspace::channel::hold(&launch)
        } else {
            crate::workspace::channel::session_exec(&launch)
        };
        eprintln!("{failed}");
        return Exit::Infrastructure;
    }
    if let Command::Reaper { pid_file, argv } = &cli.command {
        crate::workspace::channel::reaper(pid_file, argv);
    }
    init_tracing(&cli);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return Exit::Infrastructure;
        }
    };
    let result = match cli.command {
        Command::Run(args) => runtime.block_on(run(args)),
        Command::Validate { manifest, json } => validate(&manifest, json),
        Command::Init { dir } => commands::init(&dir),
        Command::Completions { shell } => commands::completions(shell),
        Command::Report {
            run_dir,
            json,
            chart,
        } => commands::report(&run_dir, json, chart),
        Command::Sweep { manifest } => commands::sweep(&runtime, manifest.as_deref()),
        Command::Ctl { run_dir, action } => crate::ctl::ctl(&run_dir, &action),
        Command::Merge { out, run_dirs } => commands::merge(&out, &run_dirs),
        Command::Export {
            run_dir,
            only,
            min_reward,
            best_of_group,
            keep_reasoning,
            keep_token_data,
            format,
            arguments,
            out,
        } => {
            let options = crate::journal::ExportOptions {
                only,
                min_reward,
                best_of_group,
                keep_reasoning,
                keep_token_data,
                format,
                arguments,
            };
            commands::export(&run_dir, &options, out.as_deref())
        }
        Command::SessionExec { .. } | Command::Reaper { .. } => unreachable!("handled above"),
        Command::Shim {
            root,
            keep_on_eof,
            isolation,
            session_pids,
            session_memory,
        } => runtime
            .block_on(crate::workspace::channel::serve(
                root,
                keep_on_eof,
                crate::workspace::channel::ShimConfig {
                    isolation,
                    session_pids,
                    session_memory,
                },
            ))
            .map(|()| Exit::Ok)
            .map_err(Failure::infra),
    };
    // Do not wait for stray blocking work (e.g. a stdin reader) at exit.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(exit) => exit,
        Err(f) => {
            eprintln!("error: {f}");
            f.exit
        }
    }
}

/// Diagnostics on stderr at the level of `--log`, `-v`, `-q` (RUST_LOG
/// wins), coloured per `--color`/NO_COLOR, written above the progress bar.
fn init_tracing(cli: &Cli) {
    let level = cli.log_level();
    // Libraries one level quieter than convoy: -v is convoy's own detail,
    // not every HTTP frame.
    let libraries = match level {
        "error" => "error",
        "warn" | "info" => "warn",
        "debug" => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(format!("{libraries},convoy={level}"))
    });
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(crate::report::term::LogWriter)
        .with_ansi(crate::report::term::init_color(cli.color))
        .with_target(false)
        .try_init();
}

/// Loads the manifest and builds the whole plan; nothing runs.
fn load_plan(path: &std::path::Path) -> Result<(Job, Vec<tasks::Task>), Failure> {
    let job = manifest::load(path).map_err(Failure::invalid)?;
    // Only the script provider reads a row after planning (its policy).
    let keep_rows = job.manifest.llm.provider == manifest::Provider::Script;
    let plan = tasks::plan(&job, keep_rows).map_err(Failure::invalid)?;
    check_script_rows(&job, &plan).map_err(Failure::invalid)?;
    tracing::debug!(
        "{}: {} tasks planned from `{}`",
        job.path.display(),
        plan.len(),
        job.resolve(&job.manifest.tasks.source).display()
    );
    Ok((job, plan))
}

/// With the script provider, every row must hold a policy it can play: a
/// bad one fails the job before anything runs, at its `file:line`. (Here,
/// not in `tasks`, so that tasks know nothing of model providers.)
fn check_script_rows(job: &Job, plan: &[tasks::Task]) -> Result<(), tasks::TaskError> {
    if job.manifest.llm.provider != manifest::Provider::Script {
        return Ok(());
    }
    let source = job.resolve(&job.manifest.tasks.source);
    for task in plan {
        crate::llm::script::check_row(&task.vars)
            .map_err(|msg| tasks::TaskError::row(&source, task.line, msg))?;
    }
    Ok(())
}

fn validate(path: &std::path::Path, json: bool) -> Result<Exit, Failure> {
    let (job, plan) = load_plan(path)?;
    if let Some(warning) = Llm::check(&job.manifest.llm).map_err(Failure::invalid)? {
        eprintln!("warning: {warning}");
    }
    let ws = &job.manifest.workspace;
    if ws.kind == crate::manifest::WorkspaceKind::Docker {
        let runtime = tokio::runtime::Runtime::new().map_err(Failure::infra)?;
        runtime
            .block_on(async {
                // Every engine must be reachable and have the image.
                let engines: Vec<Option<&str>> = match ws.engines.as_slice() {
                    [] => vec![None],
                    all => all.iter().map(|e| Some(e.as_str())).collect(),
                };
                for engine in engines {
                    let docker = crate::workspace::docker::connect_to(engine).await?;
                    crate::workspace::docker::check_image(&docker, &ws.image).await?;
                }
                Ok(())
            })
            .map_err(workspace_failure)?;
    }
    let summary = crate::report::PlanSummary::new(&job, &plan, None);
    if json {
        let text = serde_json::to_string_pretty(&summary).map_err(Failure::infra)?;
        say(&format!("{text}\n"));
    } else {
        say(&summary.validated());
    }
    Ok(Exit::Ok)
}

/// `convoy run`: the plan, the workspace, the engine and its reporters,
/// the exit code.
async fn run(args: RunArgs) -> Result<Exit, Failure> {
    let mut plan = RunPlan::new(args)?;
    if plan.dry_run {
        let summary = crate::report::PlanSummary::new(&plan.job, &plan.tasks, Some(&plan.out));
        say(&summary.render());
        say("dry run: nothing was created\n");
        return Ok(Exit::Ok);
    }
    let llm = Arc::new(Llm::new(&plan.job.manifest.llm).map_err(Failure::invalid)?);
    // Before anything is created: a dead endpoint, a wrong path or a
    // rejected key leaves no run directory and boots no workspace.
    llm.preflight().await.map_err(Failure::infra)?;
    raise_nofile(&plan.job)?;
    // Before the run directory: a path `--events` cannot create is the
    // user's to fix, and nothing is left half made.
    let events_out = open_events(&plan)?;
    let (journal, previous) = Journal::open(
        &plan.out,
        &plan.job,
        plan.tools.schemas().clone(),
        plan.force,
    )
    .map_err(|e| match e {
        JournalError::Io { .. } => Failure::infra(e),
        other => Failure::invalid(other),
    })?;
    plan.resume(&previous);
    // `convoy report` tells this run (live, or killed while booting) from
    // the one summary.json describes by this.
    journal.write_started(plan.total).map_err(Failure::infra)?;
    // Signals from here on reach the engine, even while the workspace
    // boots (it applies them before its first dispatch); a second one
    // bounds the rest of the run.
    let steering = Steering::new();
    let grace = plan.job.manifest.run.grace;
    if !forward_signals(steering.handle(), grace) {
        tracing::warn!("cannot install signal handlers; Ctrl-C will kill convoy without cleanup");
    }
    sweep_crashed(&plan.job.manifest.workspace.engines).await;

    let run_label = std::path::absolute(&plan.out).unwrap_or_else(|_| plan.out.clone());
    let workspace = Arc::new(
        Workspace::boot(&plan.job, &run_label.display().to_string())
            .await
            .map_err(workspace_failure)?,
    );
    let mut config = plan.engine_config(true);
    // External agents' model calls: served while the engine runs.
    let gateway = match serve_gateway(&plan, &workspace).await {
        Ok(Some((server, access))) => {
            config.gateway = Some(access);
            Some(server)
        }
        Ok(None) => None,
        Err(e) => {
            if let Some(ws) = Arc::into_inner(workspace) {
                ws.shutdown().await;
            }
            return Err(workspace_failure(e));
        }
    };
    // From here on every path reaches the workspace shutdown below.
    let clock = Instant::now();
    let warmup = 100.max(2 * plan.workers() as u64);
    let probe = MonitorProbe::new(Monitor::new(warmup, clock), workspace.clone(), llm.clone());
    let (tx, rx) = mpsc::unbounded_channel();
    let engine = Engine::new(
        config,
        workspace.clone(),
        llm,
        probe,
        tx.clone(),
        clock,
        steering,
    );
    // Served while the engine runs; dropping it removes the socket.
    let ctl = match CtlServer::start(&plan.out, engine.handle()) {
        Ok(server) => Some(server),
        Err(e) => {
            tracing::warn!(
                "cannot serve the control socket (convoy ctl will not reach this run): {e}"
            );
            None
        }
    };
    let reporters = reporters(&plan, journal, events_out);
    let reported = fan_out(reporters, rx, engine.handle());
    tracing::info!(
        "running {} tasks of `{}` with {} workers into {}",
        plan.tasks.len(),
        plan.job.manifest.name,
        plan.workers(),
        plan.out.display()
    );
    let started = plan.started(&plan.out);
    let exit = engine.run(started, plan.tasks).await;
    drop(ctl);
    drop(gateway);
    match Arc::into_inner(workspace) {
        Some(ws) => ws.shutdown().await,
        None => {
            tracing::error!("the workspace is still in use after the run; removing it");
            crate::workspace::sweep::remove_own().await;
        }
    }
    // The last sender: the reporters finish (the journal last, releasing
    // the directory's lock) only once the workspace is gone.
    drop(tx);
    reported
        .await
        .map_err(|e| Failure::infra(anyhow::anyhow!("the reporters' thread failed: {e}")))?
        .map_err(Failure::infra)?;
    Ok(exit)
}

/// The reporters, in the order they see each batch: the journal first (a
/// result is durable before anyone counts it), the summary last.
fn reporters(
    plan: &RunPlan,
    journal: Journal,
    events_out: Option<EventsOut>,
) -> Vec<Box<dyn Reporter>> {
    let mut all: Vec<Box<dyn Reporter>> = vec![Box::new(JournalReporter::new(journal))];
    all.extend(events_out.map(|e| Box::new(e) as Box<dyn Reporter>));
    match MetricsCsv::create(&plan.out) {
        Ok(m) => all.push(Box::new(m)),
        Err(e) => tracing::warn!("cannot create metrics.csv ({e}); running without it"),
    }
    let progress = Progress::new(plan.total, plan.job.manifest.monitor.interval);
    all.push(Box::new(ProgressReporter::new(progress)));
    let summary_to_stderr = matches!(plan.events, Some(EventsTo::Stdout));
    all.push(Box::new(SummaryPrinter::new(summary_to_stderr)));
    all
}

/// Where `--events` writes, opened before anything boots.
fn open_events(plan: &RunPlan) -> Result<Option<EventsOut>, Failure> {
    let out: Box<dyn std::io::Write + Send> = match &plan.events {
        None => return Ok(None),
        Some(EventsTo::Stdout) => Box::new(std::io::stdout()),
        Some(EventsTo::File(path)) => Box::new(std::fs::File::create(path).map_err(|e| {
            Failure::invalid(anyhow::anyhow!(
                "cannot create the event stream file `{}` (--events): {e}",
                path.display()
            ))
        })?),
    };
    Ok(Some(EventsOut::new(out)))
}

/// Removes what crashed runs left behind, and says so.
async fn sweep_crashed(engines: &[String]) {
    let swept = crate::workspace::sweep::sweep(engines).await;
    if !swept.is_empty() {
        for line in swept.render().lines() {
            tracing::warn!("crashed runs: {line}");
        }
    }
}

/// Raises RLIMIT_NOFILE to what the job needs, as far as the hard limit
/// allows, and says what it did.
fn raise_nofile(job: &Job) -> Result<(), Failure> {
    let m = &job.manifest;
    let needed = rlimit::estimate(
        m.run.workers as u64,
        m.llm.max_in_flight as u64,
        m.workspace.kind == crate::manifest::WorkspaceKind::Local,
    );
    let r = rlimit::raise(needed).map_err(Failure::infra)?;
    tracing::info!(
        "open-files limit: {} -> {} (hard {}; this job needs about {})",
        r.before,
        r.after,
        r.hard,
        r.needed
    );
    if r.after < r.needed {
        tracing::warn!(
            "this job needs about {} open files but the hard limit is {}; it may fail with \
             \"too many open files\": raise the hard limit (ulimit -Hn, LimitNOFILE=) or lower run.workers",
            r.needed,
            r.hard
        );
    }
    Ok(())
}

/// A missing image is the user's input to fix (exit 2); anything else about
/// the workspace is infrastructure (exit 4).
fn workspace_failure(e: WorkspaceError) -> Failure {
    match e {
        WorkspaceError::MissingImage(_) => Failure::invalid(e),
        other => Failure::infra(other),
    }
}

/// The model gateway for a job of external agents (`agent.kind =
/// "external"`): its server (serving while it lives) and the engine's
/// access to it; nothing for convoy's own agent.
async fn serve_gateway(
    plan: &RunPlan,
    workspace: &Workspace,
) -> Result<
    Option<(
        crate::workspace::gateway::GatewayServer,
        crate::engine::GatewayAccess,
    )>,
    crate::workspace::WorkspaceError,
> {
    let m = &plan.job.manifest;
    if m.agent.kind != crate::manifest::AgentKind::External {
        return Ok(None);
    }
    let tokens = Arc::new(crate::gateway::Tokens::default());
    let service = crate::gateway::Service {
        tokens: tokens.clone(),
        model: m.llm.model.clone().unwrap_or_else(|| "script".into()),
    };
    let server = workspace.serve_gateway(Arc::new(service)).await?;
    tracing::info!(
        "the model gateway serves the workspace on its port {}",
        server.port
    );
    let access = crate::engine::GatewayAccess {
        tokens,
        port: server.port,
    };
    Ok(Some((server, access)))
}
