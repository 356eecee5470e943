//! The run's plan, built once. Two steps, as ripgrep splits its arguments:
//! `RunPlan::new` turns what the user typed and the manifest into the job
//! and its tasks with every command-line override applied here and
//! nowhere else (no syscalls beyond reading the manifest and the task
//! source); `resume` then drops what the run directory already holds.
//! Nothing downstream reads `RunArgs` or changes the job.

use std::path::PathBuf;
use std::sync::Arc;

use crate::agent::{DriveLimits, Toolbox};
use crate::cli::RunArgs;
use crate::engine::{Budget, Config};
use crate::events::{RunStarted, RunStats, Status};
use crate::exit::Failure;
use crate::journal::Previous;
use crate::manifest::{Job, OnLeak};
use crate::tasks::{Shard, Task};

/// Where `--events` goes.
#[derive(Debug, Clone)]
pub enum EventsTo {
    Stdout,
    File(PathBuf),
}

#[derive(Debug)]
pub struct RunPlan {
    /// The manifest, with `--workers` applied.
    pub job: Job,
    /// The tools the model is offered (`agent.tools`, `[[tools]]`).
    pub tools: Arc<Toolbox>,
    /// Tasks to run: after `--shard`, `--limit` and, once resumed, what the
    /// directory already holds.
    pub tasks: Vec<Task>,
    /// Tasks in this invocation's plan (after `--shard`, `--limit`).
    pub total: u64,
    pub out: PathBuf,
    pub shard: Option<Shard>,
    pub dry_run: bool,
    pub force: bool,
    pub retry_failed: bool,
    pub events: Option<EventsTo>,
    /// What earlier runs of the directory finished (set by `resume`).
    pub earlier: RunStats,
}

impl RunPlan {
    pub fn new(args: RunArgs) -> Result<RunPlan, Failure> {
        let (mut job, mut tasks) = super::load_plan(&args.manifest)?;
        let tools = Toolbox::new(&job.manifest).map_err(|e| {
            Failure::invalid(anyhow::anyhow!(
                "invalid manifest `{}`: {e}",
                job.path.display()
            ))
        })?;
        if let Some(w) = args.workers {
            job.manifest.run.workers = w;
        }
        if let Some(shard) = args.shard {
            tasks.retain(|t| shard.contains(&t.id));
            tracing::info!("shard {shard}: {} tasks", tasks.len());
        }
        if let Some(limit) = args.limit {
            tasks.truncate(limit as usize);
        }
        // The run directory: `--out`, else `run.out` (relative to the
        // manifest), else `runs/{name}`.
        let out = match (&args.out, &job.manifest.run.out) {
            (Some(o), _) => o.clone(),
            (None, Some(o)) => job.resolve(o),
            (None, None) => PathBuf::from("runs").join(&job.manifest.name),
        };
        let events = args.events.map(|p| {
            if p.as_os_str() == "-" {
                EventsTo::Stdout
            } else {
                EventsTo::File(p)
            }
        });
        Ok(RunPlan {
            total: tasks.len() as u64,
            job,
            tools: Arc::new(tools),
            tasks,
            out,
            shard: args.shard,
            dry_run: args.dry_run,
            force: args.force,
            retry_failed: args.retry_failed,
            events,
            earlier: RunStats::default(),
        })
    }

    /// Drops the tasks an earlier run of the directory finished (with
    /// `--retry-failed`, only `ok` ones) and counts them as its work.
    pub fn resume(&mut self, previous: &Previous) {
        let retry_failed = self.retry_failed;
        let earlier = &mut self.earlier;
        self.tasks.retain(|t| match previous.records.get(&t.id) {
            Some(r) if r.status == Status::Ok || !retry_failed => {
                earlier.count_earlier(r);
                false
            }
            _ => true,
        });
        if earlier.earlier > 0 {
            tracing::info!(
                "continuing {}: {} tasks already done are skipped, {} to run{}",
                self.out.display(),
                earlier.earlier,
                self.tasks.len(),
                if retry_failed {
                    " (failed ones again)"
                } else {
                    ""
                }
            );
        }
    }

    pub fn workers(&self) -> usize {
        self.job.manifest.run.workers as usize
    }

    /// The engine's settings.
    pub fn engine_config(&self, hard_exit: bool) -> Config {
        let m = &self.job.manifest;
        Config {
            tools: self.tools.clone(),
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
            workers: self.workers(),
            grace: m.run.grace,
            sample_every: m.monitor.interval,
            budget: Budget::new(&m.llm),
            fail_on_leak: m.monitor.on_leak == OnLeak::Fail,
            hard_exit,
            // Set once the workspace serves it (external agents).
            gateway: None,
        }
    }

    /// The first event's figures.
    pub fn started(&self, run_dir: &std::path::Path) -> RunStarted {
        RunStarted {
            name: self.job.manifest.name.clone(),
            run_dir: run_dir.display().to_string(),
            total_tasks: self.total,
            skipped: self.earlier.earlier,
            to_run: self.tasks.len() as u64,
            workers: self.workers(),
            shard: self.shard.map(|s| s.to_string()),
            started_at: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
            earlier: self.earlier.clone(),
        }
    }
}
