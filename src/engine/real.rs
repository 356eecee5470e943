//! The real parts behind the engine's ports: the job's `Workspace`, its
//! `Llm`, and the `Monitor` sampling both.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use super::ports::{Models, Probe, Sampled, Sessions};
use crate::events::RunStats;
use crate::llm::{Llm, LlmError, LlmReport, ModelHandle};
use crate::manifest::Price;
use crate::monitor::{Counts, LeakVerdict, MetricsSummary, Monitor};
use crate::tasks::Task;
use crate::workspace::{Pin, Place, RunOutput, Session, ShutdownReport, Workspace, WorkspaceError};

impl Sessions for Workspace {
    type Session = Session;

    async fn open_session(
        &self,
        pin: &Pin,
        place: Option<Place>,
    ) -> Result<Session, WorkspaceError> {
        Workspace::open_session(self, pin, place).await
    }

    fn prepare_s(session: &Session) -> Option<f64> {
        session.prepare_s()
    }

    async fn check(
        &self,
        pin: &Pin,
        place: Option<Place>,
        command: &str,
        timeout: Duration,
        max_output_bytes: u64,
    ) -> Result<RunOutput, WorkspaceError> {
        Workspace::check(self, pin, place, command, timeout, max_output_bytes).await
    }

    async fn remove_dir(&self, pin: &Pin, workdir: &str) -> Result<(), WorkspaceError> {
        Workspace::remove_dir(self, pin, workdir).await
    }

    async fn close_session(&self, session: Session) -> Result<(), WorkspaceError> {
        session.close().await
    }

    fn domain(&self, pin: &Pin) -> usize {
        Workspace::pin(self, pin)
    }

    fn failures(&self, pin: &Pin) -> u64 {
        Workspace::failures(self, pin)
    }

    async fn finish(&self) -> ShutdownReport {
        Workspace::finish(self).await
    }
}

impl Models for Llm {
    type Handle = ModelHandle;

    fn for_task(&self, task: &Task) -> ModelHandle {
        Llm::for_task(self, &task.vars)
    }

    fn forwarder(&self, task: &Task) -> crate::gateway::Forwarder {
        crate::gateway::forwarder(Llm::for_task(self, &task.vars))
    }

    async fn wait_up(&self) -> Result<(), LlmError> {
        Llm::wait_up(self).await
    }

    fn spent(&self) -> (u64, u64, Option<Price>) {
        let (prompt, completion) = self.tokens_used();
        (prompt, completion, self.price())
    }

    fn retries_by_reason(&self) -> BTreeMap<String, u64> {
        Llm::retries_by_reason(self)
    }

    fn drop_idle_connections(&self) {
        if let Err(e) = Llm::drop_idle_connections(self) {
            tracing::warn!("cannot drop the idle LLM connections: {e}");
        }
    }

    fn report(&self) -> LlmReport {
        Llm::report(self)
    }
}

/// The monitor over the job's workspace and model client.
pub struct MonitorProbe {
    monitor: Monitor,
    workspace: Arc<Workspace>,
    llm: Arc<Llm>,
}

impl MonitorProbe {
    pub fn new(monitor: Monitor, workspace: Arc<Workspace>, llm: Arc<Llm>) -> MonitorProbe {
        MonitorProbe {
            monitor,
            workspace,
            llm,
        }
    }
}

impl Probe for MonitorProbe {
    async fn sample(&mut self, stats: impl FnOnce() -> RunStats + Send) -> Sampled {
        let counts = || {
            let stats = stats();
            Counts {
                in_flight: stats.in_flight,
                in_flight_peak: stats.in_flight_peak,
                done: stats.done,
                failed: stats.not_ok(),
                ran: stats.ran(),
                in_setup: stats.in_setup,
                in_verify: stats.in_verify,
            }
        };
        let (sample, new_findings) = self
            .monitor
            .sample(&self.workspace, counts, &self.llm)
            .await;
        Sampled {
            sample,
            new_findings,
        }
    }

    fn verdict(&self, shutdown: ShutdownReport) -> LeakVerdict {
        let m = &self.monitor;
        LeakVerdict::new(shutdown, m.rules.findings.clone(), Some(&m.failed))
    }

    fn summary(&self) -> Option<MetricsSummary> {
        Some(MetricsSummary::from_monitor(&self.monitor))
    }
}
