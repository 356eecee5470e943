//! A check (`Op::Check`): one command run once, as a session of its own
//! that has no shell and no tmux session. A task's verification is one: it
//! needs a fresh process tree in the task's workdir (a uid of its own with
//! `user` isolation, the session's environment and markers), its output,
//! and its exit status, not a shell that keeps state between commands, so
//! it skips what a shell costs (a tmux session, an interactive bash with
//! the rc script, typing the command).
//!
//! The command runs under a holder (`convoy session-exec --hold`, see
//! [`hold`]): a child subreaper that starts the command (through the
//! ordinary launcher, which drops to the session's uid) in a process group
//! of its own, tells the helper its pid and then its exit status on a pipe,
//! and kills whatever the command left behind (re-parented to the holder)
//! before it exits. The helper's sweep (`close`) then runs as for any
//! session: by marker and uid, and it returns the uid to the pool.

use std::io::Write;
use std::os::fd::AsFd;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncBufReadExt;

use super::super::protocol::{CheckOp, ErrorKind, OpError, RunOutput};
use super::sessions::Shim;
use super::sweep::kill_group;
use super::users::Launch;

/// How long the holder gets to tell the command's status after its
/// process group was killed, and to finish once it told it.
const GRACE: Duration = Duration::from_secs(5);

impl Shim {
    /// Runs the check's command once in its new session (made as `open`
    /// makes one, `prepare` included), then closes that session.
    pub(super) async fn check(&self, check: CheckOp) -> Result<RunOutput, OpError> {
        let name = check.at.session.clone();
        let (state, _) = self.admit(check.at, false).await?;
        let timeout = Duration::from_millis(check.timeout_ms);
        let ran = {
            let state = state.lock().await;
            self.hold(
                &name,
                &state,
                &check.command,
                timeout,
                check.max_output_bytes,
            )
            .await
        };
        let closed = self.close(&name).await;
        let out = ran?;
        closed.map(|()| out)
    }

    async fn hold(
        &self,
        name: &str,
        state: &super::sessions::SessionState,
        command: &str,
        timeout: Duration,
        max_output_bytes: u64,
    ) -> Result<RunOutput, OpError> {
        let io = |what: &str, e: std::io::Error| OpError::io(format!("check `{name}`: {what}"), &e);
        let out_file = state.dir.join("check.out");
        let out = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&out_file)
            .map_err(|e| io("cannot create its output file", e))?;
        let mut args: Vec<String> = vec!["session-exec".into(), "--hold".into()];
        if let Some(uid) = state.uid {
            args.push(format!("--uid={uid}"));
            if let Some(n) = self.config.session_pids {
                args.push(format!("--nproc={n}"));
            }
        }
        args.extend(["--".into(), "bash".into(), "-c".into(), command.into()]);
        let mut cmd = tokio::process::Command::new(&self.exe);
        cmd.args(&args)
            .envs(self.session_vars(name, state, false))
            .env_remove("TMUX")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(out))
            .process_group(0)
            .kill_on_drop(true);
        if let Some(w) = &state.workdir {
            cmd.current_dir(w);
        }
        let mut child = cmd.spawn().map_err(|e| io("cannot start it", e))?;
        let mut said = tokio::io::BufReader::new(child.stdout.take().expect("piped")).lines();
        let mut result = RunOutput::default();
        let mut pid = None;
        let mut deadline = tokio::time::Instant::now() + timeout;
        let status = loop {
            match tokio::time::timeout_at(deadline, said.next_line()).await {
                Err(_) if !result.timed_out => {
                    // Its process group, not the holder: the holder tells
                    // the status and kills what is left.
                    result.timed_out = true;
                    result.killed = true;
                    match pid {
                        Some(p) => kill_group(p),
                        None => {
                            let _ = child.start_kill();
                        }
                    }
                    deadline = tokio::time::Instant::now() + GRACE;
                }
                Err(_) | Ok(Ok(None)) => break None,
                Ok(Err(e)) => return Err(io("cannot read its holder", e)),
                Ok(Ok(Some(line))) => match line.split_once(' ') {
                    Some(("pid", p)) => pid = p.parse::<i32>().ok(),
                    Some(("exit", s)) => break s.parse::<i32>().ok(),
                    // The holder's own failure (it could not start the
                    // command) is in the output file.
                    _ => break None,
                },
            }
        };
        let _ = tokio::time::timeout(GRACE, child.wait()).await;
        let (text, omitted) = super::run::read_capped(&out_file, max_output_bytes);
        result.output = text;
        result.omitted_bytes = omitted;
        result.exit_code = match status {
            Some(s) => s,
            None if result.timed_out => 137,
            None => {
                return Err(OpError::new(
                    ErrorKind::ShellDidNotStart,
                    format!(
                        "check `{name}`: the command did not start: {}",
                        result.output.trim()
                    ),
                ))
            }
        };
        Ok(result)
    }
}

/// `convoy session-exec --hold`: runs the launcher with `launch` (minus
/// the hold) as a child in a process group of its own, with stdout and
/// stderr where this process has its stderr; says `pid N` and then `exit
/// STATUS` (128 + signal for a killed command) on stdout; then kills what
/// the command left behind, which as a child subreaper it inherits, and
/// exits. Returns only on failure.
pub fn hold(launch: &Launch) -> std::io::Error {
    use std::os::unix::process::{CommandExt, ExitStatusExt};
    if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
        return std::io::Error::other(format!(
            "convoy session-exec: cannot become a subreaper: {e}"
        ));
    }
    let out = match std::io::stderr().as_fd().try_clone_to_owned() {
        Ok(fd) => std::fs::File::from(fd),
        Err(e) => return e,
    };
    let err = match out.try_clone() {
        Ok(f) => f,
        Err(e) => return e,
    };
    let mut args = vec!["session-exec".to_string()];
    if let Some(uid) = launch.uid {
        args.push(format!("--uid={uid}"));
    }
    if let Some(n) = launch.nproc {
        args.push(format!("--nproc={n}"));
    }
    args.push("--".into());
    args.extend(launch.argv.iter().cloned());
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => return e,
    };
    let mut child = match std::process::Command::new(exe)
        .args(&args)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0)
        .spawn()
    {
        Ok(c) => c,
        Err(e) => return std::io::Error::other(format!("convoy session-exec: cannot start: {e}")),
    };
    let mut said = std::io::stdout().lock();
    let _ = writeln!(said, "pid {}", child.id()).and_then(|()| said.flush());
    let status = match child.wait() {
        Ok(s) => s.code().unwrap_or_else(|| 128 + s.signal().unwrap_or(0)),
        Err(e) => return e,
    };
    let _ = writeln!(said, "exit {status}").and_then(|()| said.flush());
    kill_left_behind();
    std::process::exit(0);
}

/// Kills every process below this one (what the command left, given to
/// this subreaper as its parents end), children first, pass after pass,
/// reaping as they end. A command that left nothing costs one read.
fn kill_left_behind() {
    use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
    use nix::unistd::Pid;
    let me = std::process::id();
    let children = format!("/proc/{me}/task/{me}/children");
    for pass in 0..12 {
        while let Ok(s) = waitpid(None::<Pid>, Some(WaitPidFlag::WNOHANG)) {
            if s == WaitStatus::StillAlive {
                break;
            }
        }
        let left: Vec<u32> = std::fs::read_to_string(&children)
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect();
        if left.is_empty() {
            return;
        }
        super::sweep::stop_then_kill(&left);
        std::thread::sleep(Duration::from_millis(1 << pass.min(7)));
    }
}
