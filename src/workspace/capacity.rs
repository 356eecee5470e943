//! How many sessions one container can hold on this engine, for
//! `workspace.containers = "auto"`: measured at boot on the fleet's first
//! container, from one idle session (its processes and their open files,
//! as the helper counts them) and the limits that bind:
//!
//! - open files: the container's open-files limit as the engine granted
//!   it (the daemon's own limit, where it clamped it). On fuse-overlayfs
//!   every file a container process holds open also costs the container's
//!   filesystem daemon one, within that same limit; tmux's server holds a
//!   few per session too. So: 80% of the limit over the files an idle
//!   session holds (the rest is room for commands while they run).
//! - processes: `workspace.pids_limit`, 80% of it over an idle session's
//!   processes.
//! - memory: `workspace.memory`, 80% of it over `IDLE_SESSION_BYTES` per
//!   session (an estimate of an idle bash and its share of tmux, not a
//!   measure).
//!
//! - busy sessions: at most `BUSY_SESSIONS` per container. The limits
//!   above say what a container can hold idle, not what its helper can
//!   serve: one helper and one tmux server (a single thread) serve all of
//!   a container's sessions, and each session closed costs the helper a
//!   scan of the container's processes, so the work per conversation grows
//!   with the sessions in the container. Measured here (README, "A fleet
//!   of containers"): one container at 1,024 busy sessions ran 23.6
//!   conversations/s (as many as one at 256) with thousands of closes
//!   unanswered within 10 s; four of 256 ran 40.2 with none.
//!
//! The smallest of these is the capacity; `workspace.sessions_per_container`
//! replaces it. The fleet is then `ceil(run.workers / capacity)` containers
//! (at least one per engine).

use super::error::WorkspaceError;
use super::shared::Member;
use crate::manifest::WorkspaceSpec;

/// The share of a limit idle sessions may take.
const SHARE: f64 = 0.8;
/// What an idle session is assumed to take of `workspace.memory`.
pub const IDLE_SESSION_BYTES: u64 = 8 << 20;
/// The most busy sessions one container is given by `auto` (see above).
pub const BUSY_SESSIONS: u64 = 256;

/// One container's capacity and the limit that set it.
#[derive(Debug, Clone, PartialEq)]
pub struct Capacity {
    pub sessions: u64,
    /// How the figure came about, for the log and the README's example.
    pub why: String,
}

/// An idle session's cost, measured: its processes and their open files.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct IdleCost {
    pub processes: u64,
    pub files: u64,
}

/// Measures an idle session's cost on `member` (opens one, counts, closes
/// it).
pub async fn measure(member: &Member) -> Result<IdleCost, WorkspaceError> {
    let session = member.open_session(None).await?;
    let stats = member.stats().await;
    let closed = session.close().await;
    let stats = stats?;
    closed?;
    Ok(IdleCost {
        processes: (stats.processes.len() as u64).max(1),
        files: stats.fds.max(1),
    })
}

/// The capacity the manifest gives (`workspace.sessions_per_container`),
/// if it does: then nothing is measured.
pub fn given(spec: &WorkspaceSpec) -> Option<Capacity> {
    spec.sessions_per_container.map(|n| Capacity {
        sessions: u64::from(n),
        why: "workspace.sessions_per_container".into(),
    })
}

/// The capacity from an idle session's cost and the limits that bind
/// (the fleet asks [`given`] first, and measures only without it).
pub fn capacity(cost: IdleCost, nofile: u64, spec: &WorkspaceSpec) -> Capacity {
    let share = |limit: u64, each: u64| ((limit as f64 * SHARE) / each.max(1) as f64) as u64;
    let busy = format!(
        "busy sessions: {BUSY_SESSIONS} per container (one helper and tmux server serve them)"
    );
    let files = format!(
        "open files: 80% of {nofile} over {} per idle session",
        cost.files
    );
    let mut bounds = vec![(BUSY_SESSIONS, busy), (share(nofile, cost.files), files)];
    if let Some(pids) = spec.pids_limit {
        bounds.push((
            share(pids.max(0) as u64, cost.processes),
            format!(
                "processes: 80% of workspace.pids_limit = {pids} over {} per idle session",
                cost.processes
            ),
        ));
    }
    if let Some(Ok(bytes)) = spec.memory_bytes() {
        bounds.push((
            share(bytes.max(0) as u64, IDLE_SESSION_BYTES),
            format!(
                "memory: 80% of workspace.memory over {} MiB per idle session (an estimate)",
                IDLE_SESSION_BYTES >> 20
            ),
        ));
    }
    let (sessions, why) = bounds
        .into_iter()
        .min_by_key(|(n, _)| *n)
        .expect("the open-files bound is always there");
    Capacity {
        sessions: sessions.max(1),
        why,
    }
}

/// Containers for `workers` at `capacity` sessions each, at least one per
/// engine.
pub fn containers_for(workers: u32, capacity: u64, engines: usize) -> usize {
    let need = u64::from(workers).div_ceil(capacity.max(1)) as usize;
    need.max(engines).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(tail: &str) -> WorkspaceSpec {
        toml::from_str(&format!("kind = \"docker\"\n{tail}")).expect("a [workspace] table")
    }

    #[test]
    fn the_smallest_limit_binds() {
        let cost = IdleCost {
            processes: 1,
            files: 6,
        };
        let c = capacity(cost, 20000, &spec(""));
        assert_eq!(c.sessions, BUSY_SESSIONS);
        assert!(c.why.starts_with("busy sessions"), "{}", c.why);
        let c = capacity(cost, 1000, &spec(""));
        assert_eq!(c.sessions, 133);
        assert!(c.why.starts_with("open files"), "{}", c.why);
        let c = capacity(cost, 20000, &spec("pids_limit = 200"));
        assert_eq!((c.sessions, c.why.starts_with("processes")), (160, true));
        let c = capacity(cost, 20000, &spec("memory = \"1g\""));
        assert_eq!((c.sessions, c.why.starts_with("memory")), (102, true));
        let c = given(&spec("containers = \"auto\"\nsessions_per_container = 50")).unwrap();
        assert_eq!(c.sessions, 50);
    }

    #[test]
    fn enough_containers_for_the_workers_and_one_per_engine() {
        assert_eq!(containers_for(1024, 2666, 0), 1);
        assert_eq!(containers_for(1024, 300, 0), 4);
        assert_eq!(containers_for(1024, 1024, 0), 1);
        assert_eq!(containers_for(10, 2666, 2), 2);
    }
}
