//! Wiring: turns a parsed command line into a run and maps every outcome to
//! an exit code. The only place that knows about all modules at once.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use tokio::sync::mpsc;

use crate::agent::{tool_schemas, DriveLimits};
use crate::cli::{Cli, Command, RunArgs};
use crate::events::Event;
use crate::exit::{Exit, Failure};
use crate::journal::{Journal, JournalError, Previous, Status};
use crate::llm::Llm;
use crate::manifest::{self, Job, OnLeak};
use crate::monitor::{rlimit, Counts, LeakVerdict, Monitor};
use crate::report::{MetricsSummary, Progress, Summary, Tally};
use crate::scheduler::{self, Budget, Control, RunCtx};
use crate::tasks;
use crate::workspace::{Workspace, WorkspaceError};

mod commands;
mod stdout;
pub(crate) use stdout::say;

/// Runs the command and returns the exit code; errors are printed here.
pub fn main(cli: Cli) -> Exit {
    // In a session's pane: no runtime, no logging, just the exec.
    if let Command::SessionExec { uid, nproc, argv } = cli.command {
        let launch = crate::workspace::channel::Launch { uid, nproc, argv };
        eprintln!("{}", crate::workspace::channel::session_exec(&launch));
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
        Command::Sweep => runtime.block_on(commands::sweep()),
        Command::Merge { out, run_dirs } => commands::merge(&out, &run_dirs),
        Command::Export {
            run_dir,
            only,
            keep_reasoning,
            format,
            arguments,
            out,
        } => {
            let options = crate::journal::ExportOptions {
                only,
                keep_reasoning,
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

/// The run directory: `--out`, else `run.out` (relative to the manifest),
/// else `runs/{name}`.
fn run_dir(args: &RunArgs, job: &Job) -> PathBuf {
    match (&args.out, &job.manifest.run.out) {
        (Some(o), _) => o.clone(),
        (None, Some(o)) => job.resolve(o),
        (None, None) => PathBuf::from("runs").join(&job.manifest.name),
    }
}

/// Loads the manifest and builds the whole plan; nothing runs.
fn load_plan(path: &std::path::Path) -> Result<(Job, Vec<tasks::Task>), Failure> {
    let job = manifest::load(path).map_err(Failure::invalid)?;
    let plan = tasks::plan(&job).map_err(Failure::invalid)?;
    tracing::debug!(
        "{}: {} tasks planned from `{}`",
        job.path.display(),
        plan.len(),
        job.resolve(&job.manifest.tasks.source).display()
    );
    Ok((job, plan))
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
                let docker = crate::workspace::docker::connect().await?;
                crate::workspace::docker::check_image(&docker, &ws.image).await
            })
            .map_err(workspace_failure)?;
    }
    let summary = crate::report::PlanSummary::new(&job, &plan, None);
    if json {
        let text = serde_json::to_string_pretty(&summary).map_err(Failure::infra)?;
        say(&format!("{text}\n"));
    } else {
        say(&format!("{}\n", summary.one_line()));
    }
    Ok(Exit::Ok)
}

async fn run(args: RunArgs) -> Result<Exit, Failure> {
    let (mut job, mut plan) = load_plan(&args.manifest)?;
    if let Some(w) = args.workers {
        job.manifest.run.workers = w;
    }
    if let Some(shard) = args.shard {
        plan.retain(|t| shard.contains(&t.id));
        tracing::info!("shard {shard}: {} tasks", plan.len());
    }
    if let Some(limit) = args.limit {
        plan.truncate(limit as usize);
    }
    if args.dry_run {
        let out = run_dir(&args, &job);
        say(&crate::report::PlanSummary::new(&job, &plan, Some(&out)).render());
        say("dry run: nothing was created\n");
        return Ok(Exit::Ok);
    }
    let llm = Llm::new(&job.manifest.llm).map_err(Failure::invalid)?;
    // Before anything is created: a dead endpoint, a wrong path or a
    // rejected key leaves no run directory and boots no workspace.
    llm.preflight().await.map_err(Failure::infra)?;
    raise_nofile(&job)?;
    let out = run_dir(&args, &job);
    let tools = tool_schemas();
    let (journal, previous) =
        Journal::open(&out, &job, tools.clone(), args.force).map_err(|e| match e {
            JournalError::Io { .. } => Failure::infra(e),
            other => Failure::invalid(other),
        })?;
    let total = plan.len() as u64;
    let mut tally = Tally::default();
    let (plan, skipped) = resume_plan(plan, &previous, args.retry_failed, &mut tally);
    journal.write_started(total).map_err(Failure::infra)?;
    if skipped > 0 {
        tracing::info!(
            "continuing {}: {skipped} tasks already done are skipped, {} to run{}",
            out.display(),
            plan.len(),
            if args.retry_failed {
                " (failed ones again)"
            } else {
                ""
            }
        );
    }
    let swept = crate::workspace::sweep::sweep().await;
    if !swept.is_empty() {
        for line in swept.render().lines() {
            tracing::warn!("crashed runs: {line}");
        }
    }

    let ctl = Arc::new(Control::default());
    spawn_signal_handler(ctl.clone(), job.manifest.run.grace);

    let run_label = std::path::absolute(&out).unwrap_or_else(|_| out.clone());
    let workspace = Workspace::boot(&job, &run_label.display().to_string())
        .await
        .map_err(workspace_failure)?;
    let m = &job.manifest;
    let ctx = Arc::new(RunCtx {
        llm,
        workspace,
        tools,
        limits: DriveLimits {
            max_steps: m.agent.max_steps,
            command_timeout: m.agent.command_timeout,
            max_observation_chars: m.agent.max_observation_chars as usize,
            on_text: m.agent.on_text,
            continue_prompt: m.agent.continue_prompt.as_str().into(),
        },
        task_timeout: m.run.task_timeout,
        max_attempts: m.run.max_attempts,
        max_infra_retries: m.run.max_infra_retries,
        workers: m.run.workers as usize,
        budget: Budget::new(&m.llm),
        infra: Default::default(),
    });
    tracing::info!(
        "running {} tasks of `{}` with {} workers into {}",
        plan.len(),
        m.name,
        ctx.workers,
        out.display()
    );

    // From here on every path reaches the workspace shutdown below.
    let started_at = SystemTime::now();
    let clock = Instant::now();
    let warmup = 100.max(2 * ctx.workers as u64);
    let mut monitor = match Monitor::create(&out, warmup, clock) {
        Ok(m) => Some(m),
        Err(e) => {
            tracing::warn!("cannot create metrics.csv ({e}); running without the monitor");
            None
        }
    };
    let gauges = monitor
        .as_ref()
        .map(|m| m.gauges.clone())
        .unwrap_or_default();
    let (tx, rx) = mpsc::unbounded_channel();
    let tally = Arc::new(Mutex::new(tally));
    let progress = Arc::new(Mutex::new(Progress::new(total, m.monitor.interval, gauges)));
    let stop_monitor = tokio_util::sync::CancellationToken::new();
    let monitor_task = monitor.take().map(|mut mon| {
        let (ctx, tally, stop) = (ctx.clone(), tally.clone(), stop_monitor.clone());
        let every = m.monitor.interval;
        tokio::spawn(async move {
            loop {
                let window = || counts(&tally.lock().expect("tally lock").take_window());
                mon.sample(&ctx.workspace, window, &ctx.llm).await;
                tokio::select! {
                    _ = stop.cancelled() => return mon,
                    _ = tokio::time::sleep(every) => {}
                }
            }
        })
    });
    let recorder = spawn_recorder(journal, rx, tally.clone(), progress.clone(), ctl.clone());
    let ticker = {
        let (tally, progress) = (tally.clone(), progress.clone());
        // Weak: the ticker must not keep the context alive past the run.
        let ctx = Arc::downgrade(&ctx);
        tokio::spawn(async move {
            let mut every = tokio::time::interval(std::time::Duration::from_millis(500));
            loop {
                every.tick().await;
                let t = tally.lock().expect("tally lock").clone();
                let retries = ctx.upgrade().map(|c| c.llm.retries_by_reason());
                let mut p = progress.lock().expect("progress lock");
                p.update(&t);
                if let Some(r) = retries {
                    p.retries(&r);
                }
            }
        })
    };

    scheduler::run(plan, ctx.clone(), ctl.clone(), tx).await;
    let (journal, recorded) = recorder.await.expect("the recorder thread does not panic");
    ticker.abort();
    let _ = ticker.await;
    let tally = tally.lock().expect("tally lock").clone();

    stop_monitor.cancel();
    let mut monitor = match monitor_task {
        Some(t) => t
            .await
            .map_err(|e| {
                tracing::error!(
                    "the monitor stopped early ({e}): metrics.csv ends at its last sample"
                )
            })
            .ok(),
        None => None,
    };
    let mut ctx = Arc::into_inner(ctx).expect("every conversation has ended");
    let shutdown = ctx.workspace.finish().await;
    // The pool's idle connections are not a leak, but they would read as
    // one in the final sample: drop them and let them close.
    match ctx.llm.drop_idle_connections() {
        Ok(()) => crate::monitor::settle_fds().await,
        Err(e) => tracing::warn!("cannot drop the idle LLM connections: {e}"),
    }
    // The final sample, after cleanup: the end state of the workspace.
    if let Some(mon) = monitor.as_mut() {
        mon.sample(&ctx.workspace, || counts(&tally), &ctx.llm)
            .await;
    }
    // The last progress line after the final sample: its gauges are the
    // end state (sessions closed, connections dropped), not the last tick's.
    progress
        .lock()
        .expect("progress lock")
        .finish(&tally, &ctx.llm.retries_by_reason());
    let findings = monitor
        .as_ref()
        .map(|m| m.rules.findings.clone())
        .unwrap_or_default();
    let failed_samples = monitor.as_ref().map(|m| m.failed.as_slice());
    let metrics = monitor.as_ref().map(MetricsSummary::from_monitor);
    let workers = ctx.workers;
    ctx.workspace.shutdown().await;
    // Only a leak fails the job; `unknown` is reported (see
    // `monitor::verdict` for why).
    let leaks = LeakVerdict::new(shutdown, findings, failed_samples);
    let leak = leaks.verdict.is_leak();

    let stopped_because = ctl
        .fatal_reason()
        .or_else(|| {
            ctl.interrupted()
                .then(|| "interrupted by a signal".to_string())
        })
        .or_else(|| ctl.stop_reason());
    let exit = if ctl.interrupted() {
        Exit::Interrupted
    } else if ctl.fatal_reason().is_some() || recorded.is_err() {
        Exit::Infrastructure
    } else if leak && m.monitor.on_leak == OnLeak::Fail {
        Exit::Leak
    } else if tally.not_ok() > 0 || tally.done < total {
        Exit::TasksFailed
    } else {
        Exit::Ok
    };
    let duration = clock.elapsed().as_secs_f64();
    let summary = Summary {
        name: m.name.clone(),
        total_tasks: total,
        done: tally.done,
        skipped,
        shard: args.shard.map(|s| s.to_string()),
        counts: tally
            .by_status
            .iter()
            .map(|(s, n)| (s.as_str().to_string(), *n))
            .collect(),
        not_run: total - tally.done,
        usage: tally.usage,
        steps: tally.steps,
        started_at: humantime::format_rfc3339_millis(started_at).to_string(),
        finished_at: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
        duration_s: duration,
        conversations_per_s: tally.rate(duration),
        workers,
        llm: ctx.llm.report(),
        leaks,
        metrics,
        stopped_because,
        exit_code: exit.as_u8(),
    };
    let written = journal.write_summary(&summary);
    say(&summary.render());
    say(&format!("run directory: {}\n", journal.dir().display()));
    let closed = journal.close();
    if let Err(e) = recorded {
        return Err(Failure::infra(e));
    }
    written.and(closed).map_err(Failure::infra)?;
    Ok(exit)
}

/// The tasks still to run in a continued run directory, and how many are
/// skipped: those with a final result (with `retry_failed`, only `ok`
/// ones). Skipped tasks are counted into `tally` as earlier runs' work.
fn resume_plan(
    plan: Vec<tasks::Task>,
    previous: &Previous,
    retry_failed: bool,
    tally: &mut Tally,
) -> (Vec<tasks::Task>, u64) {
    let mut skipped = 0;
    let plan = plan
        .into_iter()
        .filter(|t| match previous.records.get(&t.id) {
            Some(r) if r.status == Status::Ok || !retry_failed => {
                tally.count_earlier(r);
                skipped += 1;
                false
            }
            _ => true,
        })
        .collect();
    (plan, skipped)
}

/// The figures of `t` a monitor sample records.
fn counts(t: &Tally) -> Counts {
    Counts {
        in_flight: t.in_flight,
        in_flight_peak: t.in_flight_peak,
        done: t.done,
        failed: t.not_ok(),
        ran: t.ran(),
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

/// The recorder: makes each batch of results durable, then counts it.
fn spawn_recorder(
    mut journal: Journal,
    mut rx: mpsc::UnboundedReceiver<Event>,
    tally: Arc<Mutex<Tally>>,
    progress: Arc<Mutex<Progress>>,
    ctl: Arc<Control>,
) -> tokio::task::JoinHandle<(Journal, Result<(), JournalError>)> {
    tokio::task::spawn_blocking(move || {
        let mut result = Ok(());
        while let Some(first) = rx.blocking_recv() {
            let mut batch = vec![first];
            while let Ok(ev) = rx.try_recv() {
                batch.push(ev);
            }
            if result.is_ok() {
                result = batch
                    .iter()
                    .try_for_each(|ev| match ev {
                        Event::TaskFinished(f) => journal.append(f),
                        Event::StepDone {
                            id,
                            attempt,
                            step,
                            messages,
                        } => journal.append_turn(id, *attempt, *step, messages),
                        _ => Ok(()),
                    })
                    .and_then(|()| journal.sync());
                if let Err(e) = &result {
                    // Results can no longer be kept: stop taking work.
                    ctl.fatal(format!("the journal failed: {e}"));
                }
            }
            let mut t = tally.lock().expect("tally lock");
            for ev in &batch {
                t.on(ev);
            }
            let snapshot = t.clone();
            drop(t);
            progress.lock().expect("progress lock").update(&snapshot);
        }
        (journal, result)
    })
}

/// First SIGINT/SIGTERM: stop dispatching, give in-flight conversations
/// `grace`, then cancel them. A second signal cancels at once.
fn spawn_signal_handler(ctl: Arc<Control>, grace: std::time::Duration) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        tracing::warn!("cannot install signal handlers; Ctrl-C will kill convoy without cleanup");
        return;
    };
    tokio::spawn(async move {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
        ctl.interrupt();
        ctl.drain();
        crate::report::term::eprint_line(&format!(
            "interrupted: no new tasks start; in-flight conversations get {} to finish (signal again to stop them now)",
            humantime::format_duration(grace)
        ));
        tokio::select! {
            _ = tokio::time::sleep(grace) => {}
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
        crate::report::term::eprint_line("cancelling in-flight conversations");
        ctl.cancel();
        crate::scheduler::exit_after(crate::scheduler::SHUTDOWN_BOUND, Exit::Interrupted.as_u8())
            .await;
    });
}
