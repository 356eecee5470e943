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
            let (pane, shell) = self.restart_shell(name, &st).await?;
            st.pane = pane;
            self.set_shell(name, &st, shell);
            st.dead = false;
            out.shell_restarted = true;
        }
        st.seq += 1;
        let k = st.seq;
        let cmd_file = st.dir.join(format!("{k}.cmd"));
        let out_file = st.dir.join(format!("{k}.out"));
        write_new(&cmd_file, command).map_err(|e| OpError::io("cannot write the command", &e))?;

        let (tx, mut rx) = oneshot::channel();
        self.waiters
            .lock()
            .expect("waiters lock")
            .insert((name.to_string(), k), tx);
        let line = typed_line(k, &cmd_file, &out_file);
        let target = format!("={name}:");
        let mut sent = self.send_line(&target, &line).await;
        if let Err(e) = &sent {
            // The shell is gone (killed from outside) or its session
            // does not take keys: start a new one and type again.
            eprintln!("session `{name}`: cannot type into it ({e}); starting a new shell");
            let (pane, shell) = self.restart_shell(name, &st).await?;
            st.pane = pane;
            self.set_shell(name, &st, shell);
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

        let done =
            match tokio::time::timeout(timeout, self.completion(name, st.pane, &mut rx)).await {
                Ok(done) => done,
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
                let _ = self.kill_tree(name, self.shell_of(name)).await;
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
        let (mut text, omitted) = read_capped(&out_file, max_output_bytes);
        if let Some(notes) = self.notes.lock().expect("notes lock").remove(name) {
            for note in notes {
                text.push_str(&note);
                text.push('\n');
            }
        }
        out.output = text;
        out.omitted_bytes = omitted;
        let _ = std::fs::remove_file(&cmd_file);
        let _ = std::fs::remove_file(&out_file);
        Ok(out)
    }

    /// The command's completion record, or, if its shell's process ends
    /// first (killed: no EXIT trap runs), its death as the dead-pane
    /// watcher tells it, once tmux confirms the pane is dead (a session
    /// can write a death record of its own).
    async fn completion(
        &self,
        name: &str,
        pane: Option<u32>,
        rx: &mut oneshot::Receiver<Completion>,
    ) -> Option<Completion> {
        let death = pane.map(|p| self.deaths.lock().expect("deaths lock").expect(name, p));
        let died = async {
            match death {
                Some(d) => d.await.ok(),
                None => None,
            }
        };
        // Biased, the record first: a shell that ends by `exit` writes its
        // record (EXIT trap) before its process ends, so when both are in,
        // the record tells the true status.
        let done = tokio::select! {
            biased;
            done = &mut *rx => done.ok(),
            Some(status) = died => {
                if let Ok(record) = rx.try_recv() {
                    Some(record)
                } else if self.pane_is_dead(pane).await {
                    // A record that came in while tmux was asked still wins.
                    Some(rx.try_recv().unwrap_or(Completion { status, shell_exited: true }))
                } else {
                    (&mut *rx).await.ok()
                }
            }
        };
        if let Some(p) = pane {
            self.deaths.lock().expect("deaths lock").cancel(name, p);
        }
        done
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

/// The line typed into the shell to run command `k`. It must work in any
/// state a previous command left the shell in: every word is quoted (no
/// alias applies), paths are literal (no variable of the session's is
/// read), and the builtins it runs are found as builtins even when a
/// function shadows them or they were disabled: in posix mode (set by a
/// plain assignment, which nothing can shadow) special builtins such as
/// `unset` and `.` come before functions; `unset -f` removes functions
/// named `.`, `source`, `builtin`, `command` and `enable`, `enable`
/// brings `.` and `source` back, and posix mode ends before the command
/// runs. The EXIT trap that reports a command ending the shell is set
/// again. A state this cannot undo (a DEBUG trap that skips commands,
/// `enable -n enable`) costs that conversation its next command, which
/// times out, and the shell is replaced.
fn typed_line(k: u64, cmd_file: &Path, out_file: &Path) -> String {
    format!(
        " __convoy_seq={k}; POSIXLY_CORRECT=1; \\unset -f . source builtin command enable; \\enable . source; \\trap -- '__convoy_done exit' EXIT; \\unset POSIXLY_CORRECT; \\. {} </dev/null >{} 2>&1",
        quote(cmd_file),
        quote(out_file)
    )
}

/// A path as one single-quoted shell word.
fn quote(path: &Path) -> String {
    super::shell::quote(&path.display().to_string())
}

/// Writes a file that must be ours: whatever a command left at that path
/// (a symlink to elsewhere, say) goes first, and the new file is created,
/// never opened through a link.
fn write_new(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let _ = std::fs::remove_file(path);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)?
        .write_all(text.as_bytes())
}

/// Said instead of the output when the command replaced its output file
/// with something that is not a plain file.
const NOT_A_FILE: &str =
    "[convoy: the command replaced its output file with something that is not a file; output not read]\n";

/// The file's text, keeping head and tail when it is longer than `max`;
/// returns the text and how many bytes were left out. The command may
/// have replaced the file: a symlink is not followed, a FIFO or device is
/// not read (it could block or never end), and no more than the size it
/// had when opened is read (a background process may still be writing).
pub(super) fn read_capped(path: &Path, max: u64) -> (String, u64) {
    use std::io::{Read, Seek, SeekFrom};
    use std::os::unix::fs::OpenOptionsExt;
    let Ok(f) = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
        .open(path)
    else {
        return (String::new(), 0);
    };
    let Ok(meta) = f.metadata() else {
        return (String::new(), 0);
    };
    if !meta.file_type().is_file() {
        return (NOT_A_FILE.to_string(), 0);
    }
    let len = meta.len();
    let mut f = f.take(len);
    if len <= max {
        let mut buf = Vec::with_capacity(len as usize);
        let _ = f.read_to_end(&mut buf);
        return (String::from_utf8_lossy(&buf).into_owned(), 0);
    }
    let mut f = f.into_inner();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_output_file_replaced_by_a_link_or_a_fifo_is_not_read() {
        let dir = tempfile::tempdir().unwrap();
        let link = dir.path().join("1.out");
        std::os::unix::fs::symlink("/dev/zero", &link).unwrap();
        assert_eq!(read_capped(&link, 100), (String::new(), 0));
        let fifo = dir.path().join("2.out");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        assert_eq!(read_capped(&fifo, 100), (NOT_A_FILE.to_string(), 0));
        let file = dir.path().join("3.out");
        std::fs::write(&file, "0123456789").unwrap();
        assert_eq!(read_capped(&file, 100), ("0123456789".to_string(), 0));
        let (text, omitted) = read_capped(&file, 4);
        assert_eq!(
            (text.as_str(), omitted),
            ("01\n[... 6 bytes of output omitted ...]\n89", 6)
        );
    }

    #[test]
    fn a_command_file_is_created_not_written_through_a_link() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("elsewhere");
        std::fs::write(&target, "keep").unwrap();
        let cmd = dir.path().join("4.cmd");
        std::os::unix::fs::symlink(&target, &cmd).unwrap();
        write_new(&cmd, "echo hi").unwrap();
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep");
        assert_eq!(std::fs::read_to_string(&cmd).unwrap(), "echo hi");
    }

    #[test]
    fn the_typed_line_quotes_its_paths() {
        let line = typed_line(3, Path::new("/r/s/c1/3.cmd"), Path::new("/r/it's/3.out"));
        assert!(
            line.ends_with(r"\. '/r/s/c1/3.cmd' </dev/null >'/r/it'\''s/3.out' 2>&1"),
            "{line}"
        );
    }
}
