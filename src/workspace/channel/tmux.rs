//! Calls to the private tmux server: one long-lived control-mode client,
//! or a tmux client process per call when it is not up.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

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
/// No client's environment is copied into a session (`update-environment`):
/// a session's environment is the server's plus what `new-session -e`
/// names.
pub const CONF: &str = "\
set -s exit-empty off
set -g history-limit 100
set -g status off
set -g remain-on-exit off
set -g default-terminal screen
set -g update-environment \"\"
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

    /// The server's socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// A tmux command line for this server: `tmux -S SOCKET -f CONF ARGS`.
    pub fn command_line(&self, args: &[&str]) -> Vec<String> {
        let mut line = vec![
            "tmux".to_string(),
            "-S".to_string(),
            self.socket.display().to_string(),
            "-f".to_string(),
            self.conf.display().to_string(),
        ];
        line.extend(args.iter().map(|a| a.to_string()));
        line
    }

    /// A tmux client of this server (its socket and config, never a
    /// `TMUX` of ours), killed if dropped; its stdio is the caller's.
    pub fn client(&self, args: &[&str]) -> tokio::process::Command {
        let mut client = tokio::process::Command::new("tmux");
        client
            .arg("-S")
            .arg(&self.socket)
            .arg("-f")
            .arg(&self.conf)
            .args(args)
            .env_remove("TMUX")
            .kill_on_drop(true);
        client
    }

    /// Starts (or restarts) the control-mode client.
    pub async fn start_control(&self) -> Result<(), String> {
        let mut child = self
            .client(&[
                "-C",
                "new-session",
                "-A",
                "-s",
                CONTROL_SESSION,
                "exec tail -f /dev/null",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
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
                let answer = c.call(args).await;
                // A control client that died during the call did not
                // answer it: ask a client of our own instead.
                if answer.is_ok() || !c.is_dead() {
                    return answer;
                }
            }
        }
        self.spawn_call(args).await
    }

    /// Whether the session exists (tmux's exit status, not its message).
    pub async fn has_session(&self, name: &str) -> bool {
        self.call(&["has-session", "-t", &format!("={name}")])
            .await
            .is_ok()
    }

    /// Whether a server listens on the socket: a refused or missing socket
    /// means no server (and so no sessions), whatever tmux prints.
    pub fn server_answers(&self) -> bool {
        std::os::unix::net::UnixStream::connect(&self.socket).is_ok()
    }

    /// Whether no server listens on the socket: none there, or refused.
    /// Any other failure (out of open files) says nothing either way.
    pub fn server_gone(&self) -> bool {
        std::os::unix::net::UnixStream::connect(&self.socket).is_err_and(|e| {
            matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            )
        })
    }

    /// One tmux client process for one command line.
    pub async fn spawn_call(&self, args: &[&str]) -> Result<String, String> {
        let out = self
            .client(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
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
