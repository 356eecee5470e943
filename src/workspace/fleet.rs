//! The job's workspace: one container, or a fleet of them
//! (`workspace.containers`), each with its own helper, supervisor and
//! recovery (`shared::Member`). A task's attempt is pinned to one
//! container (its setup, sessions, verification and workdir all live
//! there); a new attempt goes to the healthy container with the fewest
//! open sessions. A container that dies takes only its own conversations
//! down: they fail as a workspace failure and are run again, in another
//! container, while the supervisor replaces it.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::capacity;
use super::channel::protocol::WorkspaceStats;
use super::env::Place;
use super::error::WorkspaceError;
use super::session::Session;
use super::shared::{Member, ShutdownReport};
use super::RunOutput;
use crate::manifest::{Containers, Job};

/// The container one attempt of a task uses: chosen when it first needs
/// one, kept for its sessions, its check and the removal of its workdir.
/// While it lives it counts among its container's attempts (what the
/// fleet balances).
#[derive(Debug, Default)]
pub struct Pin(std::sync::OnceLock<(usize, Arc<AtomicUsize>)>);

impl Drop for Pin {
    fn drop(&mut self) {
        if let Some((_, attempts)) = self.0.get() {
            attempts.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// One job's workspace.
pub struct Workspace {
    pub(super) members: Vec<Member>,
    /// Attempts pinned to each container now.
    attempts: Vec<Arc<AtomicUsize>>,
}

impl Workspace {
    /// Boots the workspace the manifest asks for: its containers in
    /// parallel (with `containers = "auto"`, the first one alone, to
    /// measure how many are needed). If one fails to boot, the others are
    /// shut down and its error is the job's.
    pub async fn boot(job: &Job, run_label: &str) -> Result<Workspace, WorkspaceError> {
        let spec = &job.manifest.workspace;
        let counter = Arc::new(AtomicU64::new(0));
        // Set to the fleet's size once it is complete; read only when a
        // container is given up on.
        let alive = Arc::new(AtomicUsize::new(0));
        // The engines in turn: container i on engine i mod their number.
        let engine = |i: usize| match spec.engines.as_slice() {
            [] => None,
            all => Some(all[i % all.len()].as_str()),
        };
        let boot =
            |i: usize| Member::boot(job, run_label, counter.clone(), engine(i), alive.clone());
        let mut members = Vec::new();
        let n = match spec.containers {
            Containers::Count(n) => n.max(1) as usize,
            Containers::Auto => {
                let first = boot(0).await?;
                let sized = size(&first, job).await;
                members.push(first);
                match sized {
                    Ok(n) => n,
                    Err(e) => {
                        shut_down(members).await;
                        return Err(e);
                    }
                }
            }
        };
        let booted = futures::future::join_all((members.len()..n).map(boot)).await;
        let mut error = None;
        for b in booted {
            match b {
                Ok(m) => members.push(m),
                Err(e) => {
                    error.get_or_insert(e);
                }
            }
        }
        if let Some(e) = error {
            shut_down(members).await;
            return Err(e);
        }
        alive.store(members.len(), Ordering::SeqCst);
        if n > 1 {
            tracing::info!(
                "workspace: {n} containers{}",
                match spec.engines.len() {
                    0 | 1 => String::new(),
                    e => format!(" on {e} engines"),
                }
            );
        }
        let attempts = members.iter().map(|_| Arc::default()).collect();
        Ok(Workspace { members, attempts })
    }

    /// The index of the container `pin` holds, or, for an attempt that has
    /// none yet, of the healthy one with the fewest attempts pinned to it
    /// (then open sessions), which `pin` then holds; any, if none is
    /// healthy: its error then says why.
    pub fn pin(&self, pin: &Pin) -> usize {
        let (i, _) = pin.0.get_or_init(|| {
            let least = |ok: &dyn Fn(&Member) -> bool| {
                self.members
                    .iter()
                    .enumerate()
                    .filter(|(_, m)| ok(m))
                    .min_by_key(|(i, m)| (self.attempts[*i].load(Ordering::Relaxed), m.load()))
                    .map(|(i, _)| i)
            };
            // Healthy; else recovering (it may be back soon); else any.
            let i = least(&Member::healthy)
                .or_else(|| least(&|m: &Member| !m.written_off()))
                .unwrap_or(0);
            self.attempts[i].fetch_add(1, Ordering::Relaxed);
            (i, self.attempts[i].clone())
        });
        *i
    }

    fn member(&self, pin: &Pin) -> &Member {
        &self.members[self.pin(pin)]
    }

    /// Opens a fresh session for one conversation, in `pin`'s container:
    /// in the workspace's workdir, or in a task's own (`place`), which the
    /// helper makes ready first.
    pub async fn open_session(
        &self,
        pin: &Pin,
        place: Option<Place>,
    ) -> Result<Session, WorkspaceError> {
        self.member(pin).open_session(place).await
    }

    /// Runs `command` once in a session of its own with no shell, in
    /// `pin`'s container (see `Member::check`): a task's verification.
    pub async fn check(
        &self,
        pin: &Pin,
        place: Option<Place>,
        command: &str,
        timeout: Duration,
        max_output_bytes: u64,
    ) -> Result<RunOutput, WorkspaceError> {
        self.member(pin)
            .check(place, command, timeout, max_output_bytes)
            .await
    }

    /// Removes a task's workdir in `pin`'s container.
    pub async fn remove_dir(&self, pin: &Pin, workdir: &str) -> Result<(), WorkspaceError> {
        self.member(pin).remove_dir(workdir).await
    }

    /// How many times the container `pin` holds failed so far (its helper
    /// or the container died or stopped answering). An attempt during which
    /// this grew was most likely cut short by the workspace. Each container
    /// counts its own: a failure of another is not this attempt's.
    pub fn failures(&self, pin: &Pin) -> u64 {
        self.member(pin).failures()
    }

    /// Sessions that conversations own right now, in every container
    /// (names are unique in the job).
    pub fn open_sessions(&self) -> HashSet<String> {
        self.members
            .iter()
            .flat_map(|m| m.open_sessions())
            .collect()
    }

    /// The most sessions alive at once since the last call, summed over the
    /// containers (each container's own peak: at most the fleet's).
    pub fn take_sessions_peak(&self) -> u64 {
        self.members.iter().map(Member::take_sessions_peak).sum()
    }

    /// How many containers (1 for the local workspace).
    pub fn containers(&self) -> usize {
        self.members.len()
    }

    /// A sample of the whole workspace for the monitor: every container's,
    /// merged, and each container's sessions and processes, in order. One
    /// that does not answer makes the sample fail (a gap, not a partial
    /// count).
    pub async fn stats_by_container(
        &self,
    ) -> Result<(WorkspaceStats, Vec<(u64, u64)>), WorkspaceError> {
        // A container written off (its engine gone, say) cannot answer:
        // it counts as empty, and the end-of-run check says it was not
        // checked.
        let all = futures::future::join_all(self.members.iter().map(|m| async move {
            if m.written_off() {
                Ok(WorkspaceStats::default())
            } else {
                m.stats().await
            }
        }))
        .await;
        let mut merged = WorkspaceStats::default();
        let mut each = Vec::with_capacity(all.len());
        for one in all {
            let s = one?;
            each.push((s.sessions.len() as u64, s.processes.len() as u64));
            merged.sessions.extend(s.sessions);
            merged.processes.extend(s.processes);
            merged.fds += s.fds;
        }
        Ok((merged, each))
    }

    /// The end of the job's work in every container (see `Member::finish`).
    pub async fn finish(&self) -> ShutdownReport {
        let all =
            futures::future::join_all(self.members.iter().enumerate().map(|(i, m)| async move {
                if m.written_off() {
                    let mut r = ShutdownReport::default();
                    r.unchecked.push(format!(
                        "container {i} was written off and could not be checked at the end"
                    ));
                    return r;
                }
                m.finish().await
            }))
            .await;
        let mut report = ShutdownReport::default();
        for r in all {
            report.reaped += r.reaped;
            report.stray_sessions.extend(r.stray_sessions);
            report.stray_processes.extend(r.stray_processes);
            report.unchecked.extend(r.unchecked);
        }
        report
    }

    /// Stops every container's helper and releases the backends.
    pub async fn shutdown(self) {
        shut_down(self.members).await;
    }
}

async fn shut_down(members: Vec<Member>) {
    futures::future::join_all(members.into_iter().map(Member::shutdown)).await;
}

/// With `containers = "auto"`: how many containers `run.workers` need, from
/// the capacity of `first` (see `capacity`).
async fn size(first: &Member, job: &Job) -> Result<usize, WorkspaceError> {
    let spec = &job.manifest.workspace;
    let cap = match capacity::given(spec) {
        Some(c) => c,
        None => {
            let cost = capacity::measure(first).await?;
            let nofile = first.nofile().await.unwrap_or(spec.nofile);
            capacity::capacity(cost, nofile, spec)
        }
    };
    let workers = job.manifest.run.workers;
    let n = capacity::containers_for(workers, cap.sessions, spec.engines.len());
    tracing::info!(
        "workspace: a container holds about {} sessions here ({}); run.workers = {workers}: {n} container{}",
        cap.sessions,
        cap.why,
        if n == 1 { "" } else { "s" }
    );
    Ok(n)
}
