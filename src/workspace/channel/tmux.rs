//! Calls to the private tmux server, and the process bookkeeping around it
//! (/proc scans for the processes a session started).

use std::collections::{HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::oneshot;

/// A tmux server of our own: its socket and config, never the user's.
///
/// Commands go through one long-lived control-mode client (`tmux -C`) when
/// it is up: a tmux client process per call costs a fork and exec (about
/// 2.6 ms), a line on the control client's stdin costs almost nothing.
/// Without it (before start, or if it died) each call spawns a client.
#[derive(Clone)]
pub struct Tmux {
    socket: PathBuf,
    conf: PathBuf,
    control: Arc<Mutex<Option<Arc<Control>>>>,
}

/// The name of the idle session the control client is attached to.
pub const CONTROL_SESSION: &str = "_convoy_ctl";

/// How long one command may take before the control client counts as
/// stuck.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(60);

type Answer = Result<String, String>;

/// A command sent to the control client, waiting for its block.
struct Pending {
    tx: oneshot::Sender<Answer>,
}

struct Control {
    child: tokio::sync::Mutex<tokio::process::Child>,
    stdin: tokio::sync::Mutex<tokio::process::ChildStdin>,
    /// In the order the lines were written; answers come back in order.
    queue: Arc<Mutex<Option<VecDeque<Pending>>>>,
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
            control: Arc::default(),
        })
    }

    /// Starts (or restarts) the control-mode client.
    pub async fn start_control(&self) -> Result<(), String> {
        let mut child = tokio::process::Command::new("tmux")
            .arg("-S")
            .arg(&self.socket)
            .arg("-f")
            .arg(&self.conf)
            .args([
                "-C",
                "new-session",
                "-A",
                "-s",
                CONTROL_SESSION,
                "exec tail -f /dev/null",
            ])
            .env_remove("TMUX")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot start the tmux control client: {e}"))?;
        let stdin = child.stdin.take().expect("piped");
        let stdout = child.stdout.take().expect("piped");
        let queue = Arc::new(Mutex::new(Some(VecDeque::new())));
        tokio::spawn(read_control(stdout, queue.clone()));
        let control = Arc::new(Control {
            child: tokio::sync::Mutex::new(child),
            stdin: tokio::sync::Mutex::new(stdin),
            queue,
        });
        // A first round trip proves it answers.
        control.call(&["display-message", "-p", "ok"]).await?;
        *self.control.lock().expect("control lock") = Some(control);
        Ok(())
    }

    /// Stops the control client (before the server is killed).
    pub async fn stop_control(&self) {
        let control = self.control.lock().expect("control lock").take();
        if let Some(c) = control {
            let _ = c.child.lock().await.kill().await;
        }
    }

    /// Runs one tmux command line (`;` as its own argument separates
    /// commands); its output on success, the error on failure.
    pub async fn call(&self, args: &[&str]) -> Result<String, String> {
        let control = self.control.lock().expect("control lock").clone();
        if let Some(c) = control {
            if !c.is_dead() {
                return c.call(args).await;
            }
        }
        self.spawn_call(args).await
    }

    /// One tmux client process for one command line.
    pub async fn spawn_call(&self, args: &[&str]) -> Result<String, String> {
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

impl Control {
    fn is_dead(&self) -> bool {
        self.queue.lock().expect("queue lock").is_none()
    }

    /// Sends a command line. Each command (`;` separates them) goes on
    /// its own line: tmux answers every line with exactly one block, while a
    /// list of commands on one line stops at the first failure and would
    /// leave fewer blocks than commands.
    async fn call(&self, args: &[&str]) -> Answer {
        let mut receivers = Vec::new();
        {
            let mut stdin = self.stdin.lock().await;
            let mut lines = String::new();
            for command in args.split(|a| *a == ";") {
                let quoted: Vec<String> = command.iter().map(|a| quote(a)).collect();
                lines.push_str(&quoted.join(" "));
                lines.push('\n');
                let (tx, rx) = oneshot::channel();
                receivers.push(rx);
                let mut q = self.queue.lock().expect("queue lock");
                let Some(q) = q.as_mut() else {
                    return Err("the tmux control client is gone".into());
                };
                q.push_back(Pending { tx });
            }
            if let Err(e) = stdin.write_all(lines.as_bytes()).await {
                self.queue.lock().expect("queue lock").take();
                return Err(format!("the tmux control client is gone: {e}"));
            }
        }
        let mut out = String::new();
        for rx in receivers {
            match tokio::time::timeout(CONTROL_TIMEOUT, rx).await {
                Ok(Ok(answer)) => out.push_str(&answer?),
                Ok(Err(_)) => return Err("the tmux control client is gone".into()),
                Err(_) => {
                    // Answers would no longer match their requests: retire it.
                    self.queue.lock().expect("queue lock").take();
                    return Err("tmux did not answer within 60s".into());
                }
            }
        }
        Ok(out)
    }
}

/// Quotes one argument for tmux's command parser: double quotes, with
/// backslash, quote and `$` (environment expansion) escaped.
fn quote(arg: &str) -> String {
    let mut q = String::with_capacity(arg.len() + 2);
    q.push('"');
    for c in arg.chars() {
        match c {
            '\\' | '"' | '$' => {
                q.push('\\');
                q.push(c);
            }
            '\n' => q.push_str("\\n"),
            _ => q.push(c),
        }
    }
    q.push('"');
    q
}

/// Reads the control client's output: `%begin`/`%end` (or `%error`) blocks
/// answer our command lines in order; blocks with flags 0 (not ours) and
/// notifications are skipped.
async fn read_control(
    stdout: tokio::process::ChildStdout,
    queue: Arc<Mutex<Option<VecDeque<Pending>>>>,
) {
    let mut lines = BufReader::new(stdout).lines();
    let mut block: Option<(bool, String)> = None;
    while let Ok(Some(line)) = lines.next_line().await {
        if let Some((ours, buf)) = block.as_mut() {
            let end = line.starts_with("%end ");
            let error = line.starts_with("%error ");
            if !end && !error {
                buf.push_str(&line);
                buf.push('\n');
                continue;
            }
            let (ours, buf) = (*ours, std::mem::take(buf));
            block = None;
            if !ours {
                continue;
            }
            let mut q = queue.lock().expect("queue lock");
            let Some(q) = q.as_mut() else { return };
            if let Some(p) = q.pop_front() {
                let _ = p.tx.send(if error {
                    Err(buf.trim().to_string())
                } else {
                    Ok(buf)
                });
            }
        } else if let Some(rest) = line.strip_prefix("%begin ") {
            let ours = rest.split(' ').nth(2) == Some("1");
            block = Some((ours, String::new()));
        } else if line.starts_with("%exit") {
            break;
        }
    }
    // Dropping the pending senders fails their calls.
    queue.lock().expect("queue lock").take();
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

/// SIGKILLs every process whose environment holds one of the entries
/// `markers` (`NAME=value`), until none is left (a process may fork while
/// we scan). One /proc pass serves every marker, so closes that arrive
/// together share it. Returns how many were killed. Blocking: reads /proc.
pub fn kill_marked(markers: &HashSet<String>) -> usize {
    let me = std::process::id() as i32;
    let mut killed = 0;
    for _ in 0..5 {
        let found = marked_processes(markers, me);
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

/// Pids (other than `me`) whose environment holds one of `markers`.
pub fn marked_processes(markers: &HashSet<String>, me: i32) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| pid != me)
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .map(|env| {
                    env.split(|&b| b == 0)
                        .any(|entry| std::str::from_utf8(entry).is_ok_and(|e| markers.contains(e)))
                })
                .unwrap_or(false)
        })
        .collect()
}

/// Every process whose environment holds `run_marker`: its pid, the value
/// of its `CONVOY_SESSION_DIR` (if any), and how many files it has open.
/// Blocking: reads /proc.
pub fn run_processes(run_marker: &str) -> Vec<(u32, Option<String>, u64)> {
    let me = std::process::id();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != me)
        .filter_map(|pid| {
            let env = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
            let mut marked = false;
            let mut session = None;
            for entry in env.split(|&b| b == 0) {
                let Ok(entry) = std::str::from_utf8(entry) else {
                    continue;
                };
                if entry == run_marker {
                    marked = true;
                } else if let Some(dir) = entry.strip_prefix("CONVOY_SESSION_DIR=") {
                    session = Some(dir.to_string());
                }
            }
            marked.then(|| {
                let fds =
                    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count() as u64);
                (pid, session, fds)
            })
        })
        .collect()
}
