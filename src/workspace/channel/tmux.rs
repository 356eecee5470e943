//! Calls to the private tmux server, and the process bookkeeping around it
//! (/proc scans for the processes a session started).

use std::path::{Path, PathBuf};
use std::process::Stdio;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// A tmux server of our own: its socket and config, never the user's.
#[derive(Debug, Clone)]
pub struct Tmux {
    socket: PathBuf,
    conf: PathBuf,
}

/// Sessions are created with a small scrollback: nobody reads the screen
/// (output goes to a file), and thousands of sessions share one server.
pub const CONF: &str = "\
set -s exit-empty off
set -g history-limit 100
set -g status off
set -g remain-on-exit off
set -g default-terminal screen
";

impl Tmux {
    pub fn new(root: &Path) -> std::io::Result<Self> {
        let conf = root.join("tmux.conf");
        std::fs::write(&conf, CONF)?;
        Ok(Tmux {
            socket: root.join("tmux.sock"),
            conf,
        })
    }

    /// Runs one tmux command; its stdout on success, stderr on failure.
    pub async fn call(&self, args: &[&str]) -> Result<String, String> {
        let out = tokio::process::Command::new("tmux")
            .arg("-S")
            .arg(&self.socket)
            .arg("-f")
            .arg(&self.conf)
            .args(args)
            .env_remove("TMUX")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .output()
            .await
            .map_err(|e| format!("cannot run tmux: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
            Err(if err.is_empty() {
                format!("tmux {} failed: {}", args.join(" "), out.status)
            } else {
                err
            })
        }
    }
}

/// True for tmux's "that session or server is not there" errors.
pub fn is_missing(err: &str) -> bool {
    err.contains("can't find")
        || err.contains("no server running")
        || err.contains("no sessions")
        || err.contains("error connecting")
        || err.contains("server exited")
        || err.contains("no current target")
}

/// The terminal's foreground process group of the shell `pid`
/// (`/proc/PID/stat` field 8), if it is not the shell's own.
pub fn foreground_group(shell: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{shell}/stat")).ok()?;
    // Fields after the parenthesised command name, which may hold spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    let pgrp: i32 = fields.get(2)?.parse().ok()?;
    let tpgid: i32 = fields.get(5)?.parse().ok()?;
    (tpgid > 0 && tpgid != pgrp).then_some(tpgid)
}

pub fn kill_group(pgid: i32) {
    let _ = kill(Pid::from_raw(-pgid), Signal::SIGKILL);
}

/// SIGKILLs every process whose environment holds the entry `marker`
/// (`NAME=value`), until none is left (a process may fork while we scan).
/// Returns how many were killed. Blocking: reads /proc.
pub fn kill_marked(marker: &str) -> usize {
    let me = std::process::id() as i32;
    let mut killed = 0;
    for _ in 0..5 {
        let found = marked_processes(marker, me);
        if found.is_empty() {
            break;
        }
        for pid in found {
            if kill(Pid::from_raw(pid), Signal::SIGKILL).is_ok() {
                killed += 1;
            }
        }
    }
    killed
}

/// Pids (other than `me`) whose environment holds `marker`.
pub fn marked_processes(marker: &str, me: i32) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let needle = marker.as_bytes();
    dir.filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| pid != me)
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .map(|env| env.split(|&b| b == 0).any(|entry| entry == needle))
                .unwrap_or(false)
        })
        .collect()
}
