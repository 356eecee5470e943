//! Removing what crashed runs left: `convoy sweep`, and the same at the
//! start of every `convoy run`.
//!
//! Every convoy marks what it creates with its owner: its pid and that
//! process's start time (so a reused pid is not mistaken for the owner).
//! Docker containers carry them as labels (`convoy.pid`, `convoy.pid_start`,
//! `convoy.host`); a local workspace's directory (`$TMPDIR/convoy-*`) holds
//! them in its `owner` file. Whatever belongs to a convoy that is no longer
//! alive is removed: containers (forced), and for local workspaces every
//! process that names the directory (its helper, tmux server and the
//! sessions' processes) and then the directory itself.
//!
//! The owner file can be rewritten by a session (same user, in the
//! workspace), so it alone never condemns a run: a live convoy holds an
//! exclusive lock (flock) for as long as its workspace exists, and the
//! sweep takes that lock before it removes anything. A lock is released
//! only by its holder closing it (or dying); no session can release it.
//! Locally the lock is on the workspace directory itself; for a container
//! it is on a file on the host (`convoy.lock` label names it), out of
//! every session's reach.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use bollard::query_parameters::{ListContainersOptionsBuilder, RemoveContainerOptionsBuilder};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::procfs;

pub const LABEL_PID: &str = "convoy.pid";
pub const LABEL_PID_START: &str = "convoy.pid_start";
pub const LABEL_HOST: &str = "convoy.host";
/// The host file whose lock a live convoy holds for its container.
pub const LABEL_LOCK: &str = "convoy.lock";
/// The owner file of a local workspace directory: `PID START`.
pub const OWNER_FILE: &str = "owner";

/// This process as an owner: its pid and start time (clock ticks since
/// boot, from /proc).
pub fn me() -> (u32, u64) {
    let pid = std::process::id();
    (pid, procfs::start_time(pid).unwrap_or(0))
}

pub fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_default()
}

/// Is the process that wrote (pid, start) still running?
fn alive(pid: u32, start: u64) -> bool {
    procfs::start_time(pid).is_some_and(|s| start == 0 || s == start)
}

/// A held exclusive lock on a workspace (its directory, or a container's
/// lock file): proof that its convoy is alive. Released on drop.
#[derive(Debug)]
pub struct RunLock {
    _file: std::fs::File,
}

impl RunLock {
    /// Locks `path` (a directory or a file that exists), failing at once
    /// if another holder has it.
    pub fn acquire(path: &Path) -> std::io::Result<RunLock> {
        let file = std::fs::File::open(path)?;
        file.try_lock().map_err(std::io::Error::from)?;
        Ok(RunLock { _file: file })
    }

    /// Creates (mode 0600) and locks a container's lock file in
    /// `lock_dir()`.
    pub fn create(name: &str) -> std::io::Result<(RunLock, PathBuf)> {
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
        let dir = lock_dir();
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)?;
        let path = dir.join(format!("{name}.lock"));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)?;
        file.try_lock().map_err(std::io::Error::from)?;
        Ok((RunLock { _file: file }, path))
    }
}

/// Where containers' lock files live: on the host, in the temp dir, a
/// directory only this user can enter.
pub fn lock_dir() -> PathBuf {
    std::env::temp_dir().join(format!(".convoy-locks-{}", nix::unistd::getuid()))
}

/// Is the lock at `path` held by a live convoy? A missing path holds no
/// lock. On `Ok(None)` nobody held it; on `Ok(Some(lock))` the caller now
/// holds it.
fn held_by_other(path: &Path) -> Result<Option<RunLock>, ()> {
    match RunLock::acquire(path) {
        Ok(lock) => Ok(Some(lock)),
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Err(()),
        Err(_) => Ok(None),
    }
}

/// Local workspace directories this process created, for `remove_own`.
static OWN_DIRS: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());

/// Records a local workspace directory this process owns.
pub fn register_own(dir: &Path) {
    OWN_DIRS
        .lock()
        .expect("own dirs lock")
        .push(dir.to_path_buf());
}

/// The last resort when this convoy must exit and its workspace did not
/// shut down: forcibly removes its own containers (by label) and local
/// workspaces (by what it recorded, not by owner files), killing their
/// processes. Logs what it removed.
pub async fn remove_own() {
    let (pid, start) = me();
    if let Ok(docker) = bollard::Docker::connect_with_defaults() {
        let filters: HashMap<String, Vec<String>> = [(
            "label".to_string(),
            vec![
                format!("{LABEL_PID}={pid}"),
                format!("{LABEL_PID_START}={start}"),
            ],
        )]
        .into();
        let opts = ListContainersOptionsBuilder::new()
            .all(true)
            .filters(&filters)
            .build();
        for c in docker.list_containers(Some(opts)).await.unwrap_or_default() {
            let Some(id) = c.id else { continue };
            let opts = RemoveContainerOptionsBuilder::new()
                .force(true)
                .v(true)
                .build();
            match docker.remove_container(&id, Some(opts)).await {
                Ok(()) => tracing::warn!("removed workspace container {}", &id[..12.min(id.len())]),
                Err(e) => tracing::error!("could not remove workspace container {id}: {e}"),
            }
        }
    }
    let dirs = std::mem::take(&mut *OWN_DIRS.lock().expect("own dirs lock"));
    for dir in dirs {
        let killed = tokio::task::spawn_blocking({
            let dir = dir.clone();
            move || {
                let n = kill_mentioning(&dir);
                let _ = std::fs::remove_dir_all(&dir);
                n
            }
        })
        .await
        .unwrap_or(0);
        tracing::warn!(
            "removed local workspace {} ({killed} processes killed)",
            dir.display()
        );
    }
}

/// What a sweep removed.
#[derive(Debug, Default)]
pub struct Swept {
    pub containers: Vec<String>,
    pub local_dirs: Vec<PathBuf>,
    pub processes: usize,
    /// Docker could not be asked (not an error for a local job).
    pub docker_unreachable: Option<String>,
}

impl Swept {
    pub fn is_empty(&self) -> bool {
        self.containers.is_empty() && self.local_dirs.is_empty() && self.processes == 0
    }

    /// One line per thing removed.
    pub fn render(&self) -> String {
        let mut s = String::new();
        for c in &self.containers {
            s.push_str(&format!("removed container {c} (its convoy is gone)\n"));
        }
        for d in &self.local_dirs {
            s.push_str(&format!(
                "removed local workspace {} (its convoy is gone)\n",
                d.display()
            ));
        }
        if self.processes > 0 {
            s.push_str(&format!(
                "killed {} processes of those workspaces (helpers, tmux servers, session processes)\n",
                self.processes
            ));
        }
        s
    }
}

/// Sweeps Docker (the default engine, and each of `engines`: a manifest's
/// `workspace.engines`) and the local temp directory.
pub async fn sweep(engines: &[String]) -> Swept {
    let mut swept = Swept::default();
    let default = super::docker::default_engine();
    let mut targets: Vec<Option<&str>> = vec![None];
    targets.extend(
        engines
            .iter()
            .filter(|e| **e != default)
            .map(|e| Some(e.as_str())),
    );
    let mut unreachable = Vec::new();
    for engine in targets {
        match sweep_containers(engine).await {
            Ok(names) => swept.containers.extend(names),
            Err(e) => unreachable.push(format!("{}: {e}", engine.unwrap_or(&default))),
        }
    }
    if !unreachable.is_empty() {
        swept.docker_unreachable = Some(unreachable.join("; "));
    }
    let (dirs, killed) = tokio::task::spawn_blocking(|| sweep_local(&std::env::temp_dir()))
        .await
        .unwrap_or_default();
    swept.local_dirs = dirs;
    swept.processes = killed;
    swept
}

async fn sweep_containers(engine: Option<&str>) -> Result<Vec<String>, String> {
    let docker = super::docker::client(engine).map_err(|e| e.to_string())?;
    let filters: HashMap<String, Vec<String>> =
        [("label".to_string(), vec![LABEL_PID.to_string()])].into();
    let opts = ListContainersOptionsBuilder::new()
        .all(true)
        .filters(&filters)
        .build();
    let list = docker
        .list_containers(Some(opts))
        .await
        .map_err(|e| e.to_string())?;
    let host = hostname();
    let mut removed = Vec::new();
    for c in list {
        let labels = c.labels.unwrap_or_default();
        let label = |k: &str| labels.get(k).and_then(|v| v.parse::<u64>().ok());
        let (Some(pid), Some(start)) = (label(LABEL_PID), label(LABEL_PID_START)) else {
            continue;
        };
        // Another host's convoy (a shared daemon): its pids mean nothing here.
        if labels.get(LABEL_HOST).is_some_and(|h| *h != host) {
            continue;
        }
        // Held while the container goes, so no other sweep races us.
        let lock_path = labels.get(LABEL_LOCK).map(PathBuf::from);
        let Ok(lock) = lock_path.as_deref().map_or(Ok(None), held_by_other) else {
            continue;
        };
        if alive(pid as u32, start) {
            continue;
        }
        let Some(id) = c.id else { continue };
        let name = c
            .names
            .and_then(|n| n.into_iter().next())
            .map(|n| n.trim_start_matches('/').to_string())
            .unwrap_or_else(|| id.chars().take(12).collect());
        let opts = RemoveContainerOptionsBuilder::new()
            .force(true)
            .v(true)
            .build();
        match docker.remove_container(&id, Some(opts)).await {
            Ok(()) => {
                removed.push(name);
                if let (Some(_held), Some(path)) = (lock, lock_path) {
                    let _ = std::fs::remove_file(path);
                }
            }
            Err(e) => tracing::warn!("could not remove orphaned container {name}: {e}"),
        }
    }
    Ok(removed)
}

/// Local workspace directories under `tmp` whose owner is gone: kills what
/// names them, removes them. Blocking.
pub fn sweep_local(tmp: &Path) -> (Vec<PathBuf>, usize) {
    let Ok(entries) = std::fs::read_dir(tmp) else {
        return (Vec::new(), 0);
    };
    let mut dirs = Vec::new();
    let mut killed = 0;
    for e in entries.flatten() {
        let dir = e.path();
        if !e.file_name().to_string_lossy().starts_with("convoy-") {
            continue;
        }
        let Ok(owner) = std::fs::read_to_string(dir.join(OWNER_FILE)) else {
            continue;
        };
        let mut it = owner.split_whitespace().map(|v| v.parse::<u64>().ok());
        let owner = (it.next().flatten(), it.next().flatten());
        // A live convoy holds its directory's lock, whatever the owner
        // file says; ours is held until the directory is gone.
        let Ok(_lock) = held_by_other(&dir) else {
            continue;
        };
        if let (Some(pid), Some(start)) = owner {
            if alive(pid as u32, start) {
                continue;
            }
        }
        killed += kill_mentioning(&dir);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => dirs.push(dir),
            Err(err) => tracing::warn!("could not remove {}: {err}", dir.display()),
        }
    }
    (dirs, killed)
}

/// SIGKILLs every process whose command line or environment names `dir`
/// (until none is left: a process may fork while we look). Blocking.
pub fn kill_mentioning(dir: &Path) -> usize {
    let needle = dir.as_os_str().as_encoded_bytes();
    let me = std::process::id();
    let mut killed = std::collections::HashSet::new();
    for _ in 0..5 {
        // Not ourselves, and not the dead: a killed process stays a
        // zombie until its parent reaps it.
        let found = procfs::mentioning(needle, me);
        if found.is_empty() {
            break;
        }
        for pid in found {
            if kill(Pid::from_raw(pid as i32), Signal::SIGKILL).is_ok() {
                killed.insert(pid);
            }
        }
    }
    killed.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_alive_and_a_reused_pid_is_not() {
        let (pid, start) = me();
        assert!(start > 0);
        assert!(alive(pid, start));
        assert!(
            !alive(pid, start + 1),
            "same pid, other start: another process"
        );
    }

    #[test]
    fn a_dead_owners_directory_and_processes_go_a_live_ones_stay() {
        let tmp = tempfile::tempdir().unwrap();
        let dead = tmp.path().join("convoy-dead");
        let live = tmp.path().join("convoy-live");
        for d in [&dead, &live] {
            std::fs::create_dir(d).unwrap();
        }
        // A finished child's pid: no longer alive.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let gone = child.id();
        child.wait().unwrap();
        std::fs::write(dead.join(OWNER_FILE), format!("{gone} 12345")).unwrap();
        let (pid, start) = me();
        std::fs::write(live.join(OWNER_FILE), format!("{pid} {start}")).unwrap();
        // A process that names the dead workspace, as a tmux server would.
        let mut orphan = std::process::Command::new("sleep")
            .arg("1000")
            .env("CONVOY_SESSION_DIR", dead.join("s/c0"))
            .spawn()
            .unwrap();
        let (dirs, killed) = sweep_local(tmp.path());
        assert_eq!(dirs, vec![dead.clone()]);
        assert_eq!(killed, 1);
        assert!(!orphan.wait().unwrap().success());
        assert!(live.exists() && !dead.exists());
    }

    #[test]
    fn a_locked_directory_stays_whatever_its_owner_file_says() {
        let tmp = tempfile::tempdir().unwrap();
        let forged = tmp.path().join("convoy-forged");
        std::fs::create_dir(&forged).unwrap();
        let lock = RunLock::acquire(&forged).unwrap();
        // A session rewrote the owner file with a dead owner.
        std::fs::write(forged.join(OWNER_FILE), "1 1").unwrap();
        assert_eq!(sweep_local(tmp.path()), (vec![], 0));
        assert!(forged.exists());
        drop(lock);
        assert_eq!(sweep_local(tmp.path()), (vec![forged.clone()], 0));
        assert!(!forged.exists());
    }
}
