//! `session_memory`: with `user` isolation, each open session's processes
//! together may hold at most that much resident memory. Once a second the
//! helper adds up the resident memory of each session uid's processes (a
//! `stat` of every /proc entry, and a read of `statm` for session
//! processes only); a session over its limit loses its largest process
//! (SIGKILL), and its next command's output says so. Between two looks a
//! fast hog can go further: then the container's own memory limit and the
//! OOM killer, which takes session processes first (their oom_score_adj is
//! 1000, the helper's and tmux's -1000), stand behind it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::sessions::Shim;
use crate::workspace::procfs;

const EVERY: Duration = Duration::from_secs(1);

impl Shim {
    /// Runs for the helper's life.
    pub(super) async fn watch_memory(self: Arc<Self>, limit: u64) {
        loop {
            tokio::time::sleep(EVERY).await;
            let shim = self.clone();
            let _ = tokio::task::spawn_blocking(move || shim.hold_memory(limit)).await;
        }
    }

    fn hold_memory(&self, limit: u64) {
        let open: HashMap<u32, String> = self
            .users
            .lock()
            .expect("users lock")
            .open()
            .map(|(u, s)| (u, s.to_string()))
            .collect();
        if open.is_empty() {
            return;
        }
        // uid -> (total, largest pid and its size)
        let mut held: HashMap<u32, (u64, u32, u64)> = HashMap::new();
        for pid in procfs::pids() {
            let Some(uid) = procfs::owner(pid).filter(|u| open.contains_key(u)) else {
                continue;
            };
            let rss = procfs::rss_bytes(pid);
            let entry = held.entry(uid).or_insert((0, pid, 0));
            entry.0 += rss;
            if rss > entry.2 {
                (entry.1, entry.2) = (pid, rss);
            }
        }
        for (uid, (total, pid, rss)) in held {
            if total <= limit {
                continue;
            }
            let name = procfs::cmdline(pid).first().cloned().unwrap_or_default();
            if kill(Pid::from_raw(pid as i32), Signal::SIGKILL).is_ok() {
                let session = &open[&uid];
                let note = format!(
                    "[convoy: this conversation's processes held {} MiB, over workspace.session_memory ({} MiB); killed its largest, pid {pid} ({name}, {} MiB)]",
                    total >> 20,
                    limit >> 20,
                    rss >> 20
                );
                eprintln!("session `{session}`: {note}");
                self.notes
                    .lock()
                    .expect("notes lock")
                    .entry(session.clone())
                    .or_default()
                    .push(note);
            }
        }
    }
}
