//! Running one command in a session's shell: write it to a file, type the
//! line that sources it, wait for its completion record, interrupt it on
//! timeout (C-c, then SIGKILL to its process group, then a new shell).

use std::path::Path;
use std::time::Duration;

use tokio::sync::oneshot;

use super::super::protocol::{ErrorKind, OpError, RunOutput};
use super::completions::Completion;
use super::sessions::Shim;
use super::sweep::kill_group;
use crate::workspace::procfs;

/// How long C-c gets to stop a timed-out command before its process group
/// is killed, and the kill before the shell is replaced.
const INTERRUPT_GRACE: Duration = Duration::from_secs(2);

impl Shim {
    pub(super) async fn run(
        &self,
        name: &str,
        command: &str,
        timeout: Duration,
        max_output_bytes: u64,
    ) -> Result<RunOutput, OpError> {
        let state = self.state(name)?;
        let mut st = state.lock().await;
        let mut out = RunOutput::default();
        if st.dead {
            self.restart_shell(name, &st).await?;
            st.dead = false;
            out.shell_restarted = true;
        }
        st.seq += 1;
        let k = st.seq;
        let cmd_file = st.dir.join(format!("{k}.cmd"));
        let out_file = st.dir.join(format!("{k}.out"));
        std::fs::write(&cmd_file, command)
            .map_err(|e| OpError::io("cannot write the command", &e))?;

        let (tx, mut rx) = oneshot::channel();
        self.waiters
            .lock()
            .expect("waiters lock")
            .insert((name.to_string(), k), tx);
        let line = format!(
            " __convoy_seq={k}; {{ . \"$__convoy_dir/{k}.cmd\"; }} </dev/null >\"$__convoy_dir/{k}.out\" 2>&1"
        );
        let target = format!("={name}:");
        let mut sent = self.send_line(&target, &line).await;
        if let Err(e) = &sent {
            // The shell is gone (killed from outside) or its session
            // does not take keys: start a new one and type again.
            eprintln!("session `{name}`: cannot type into it ({e}); starting a new shell");
            self.restart_shell(name, &st).await?;
            out.shell_restarted = true;
            sent = self.send_line(&target, &line).await;
        }
        if let Err(e) = sent {
            self.waiters
                .lock()
                .expect("waiters lock")
                .remove(&(name.to_string(), k));
            return Err(OpError::new(
                ErrorKind::Tmux,
                format!("cannot type into session `{name}`: {e}"),
            ));
        }

        let done = match tokio::time::timeout(timeout, &mut rx).await {
            Ok(done) => done.ok(),
            Err(_) => {
                out.timed_out = true;
                self.interrupt(&target, &mut rx, &mut out).await
            }
        };
        match done {
            Some(c) => {
                out.exit_code = c.status;
                out.shell_exited = c.shell_exited;
                st.dead = c.shell_exited;
            }
            None if out.timed_out => {
                // Neither C-c nor killing the foreground group brought the
                // prompt back: replace the shell.
                self.waiters
                    .lock()
                    .expect("waiters lock")
                    .remove(&(name.to_string(), k));
                let _ = self.kill_tree(name).await;
                st.dead = true;
                out.exit_code = -1;
                out.shell_exited = true;
            }
            None => {
                return Err(OpError::new(
                    ErrorKind::SessionClosed,
                    format!("session `{name}` was closed while the command ran"),
                ))
            }
        }
        let (text, omitted) = read_capped(&out_file, max_output_bytes);
        out.output = text;
        out.omitted_bytes = omitted;
        let _ = std::fs::remove_file(&cmd_file);
        let _ = std::fs::remove_file(&out_file);
        Ok(out)
    }

    async fn send_line(&self, target: &str, line: &str) -> Result<(), String> {
        self.tmux
            // One command: a string that names no key is typed as it is.
            .call(&["send-keys", "-t", target, line, "Enter"])
            .await
            .map(drop)
    }

    /// C-c, then SIGKILL to the foreground process group; the completion
    /// record if either brought the prompt back.
    async fn interrupt(
        &self,
        target: &str,
        rx: &mut oneshot::Receiver<Completion>,
        out: &mut RunOutput,
    ) -> Option<Completion> {
        if self
            .tmux
            .call(&["send-keys", "-t", target, "C-c"])
            .await
            .is_ok()
        {
            if let Ok(done) = tokio::time::timeout(INTERRUPT_GRACE, &mut *rx).await {
                return done.ok();
            }
        }
        let pane = self
            .tmux
            .call(&["display-message", "-p", "-t", target, "#{pane_pid}"])
            .await
            .ok()?;
        let shell: u32 = pane.trim().parse().ok()?;
        if let Some(group) = procfs::foreground_group(shell) {
            kill_group(group);
            out.killed = true;
        }
        tokio::time::timeout(INTERRUPT_GRACE, &mut *rx)
            .await
            .ok()?
            .ok()
    }
}

/// The file's text, keeping head and tail when it is longer than `max`;
/// returns the text and how many bytes were left out.
fn read_capped(path: &Path, max: u64) -> (String, u64) {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut f) = std::fs::File::open(path) else {
        return (String::new(), 0);
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    if len <= max {
        let mut buf = Vec::with_capacity(len as usize);
        let _ = f.read_to_end(&mut buf);
        return (String::from_utf8_lossy(&buf).into_owned(), 0);
    }
    let half = max / 2;
    let mut head = vec![0; half as usize];
    let mut tail = vec![0; (max - half) as usize];
    let ok = f.read_exact(&mut head).is_ok()
        && f.seek(SeekFrom::Start(len - (max - half))).is_ok()
        && f.read_exact(&mut tail).is_ok();
    if !ok {
        return (String::new(), len);
    }
    let omitted = len - max;
    let mut text = String::from_utf8_lossy(&head).into_owned();
    text.push_str(&format!("\n[... {omitted} bytes of output omitted ...]\n"));
    text.push_str(&String::from_utf8_lossy(&tail));
    (text, omitted)
}
