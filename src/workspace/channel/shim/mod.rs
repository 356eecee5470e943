//! The workspace helper (`convoy shim`): serves the protocol of
//! [`super::protocol`] for one private tmux server.
//!
//! How a command runs: the command text goes to `s/NAME/K.cmd`; the helper
//! types one line into the session's shell (`run::typed_line`, which
//! guards it against a hostile shell state) that sources that file with
//! stdin from /dev/null and stdout and stderr to `s/NAME/K.out`.
//!
//! The shell sources the file in its own process, so `cd` and `export`
//! persist; stdin is /dev/null; stdout and stderr go to a file byte for
//! byte. When the shell is back at its prompt, its `PROMPT_COMMAND` writes
//! the completion record `NAME K STATUS` to the session's own FIFO
//! (`f/NAME`, which only that session can write; one short write is
//! atomic). The helper reads every session's FIFO and wakes the request
//! waiting for `(NAME, K)`. That works the same after C-c, since the
//! prompt comes back, and the shell's EXIT trap writes the record if the
//! command ends the shell.
//!
//! Each session's shell is started by `convoy session-exec` ([`users`]):
//! with `user` isolation it runs as a uid of its own, with its own limits,
//! and cannot signal, read, write or type into anything of another
//! session or of the helper (whose files are root's, in `p/`, mode 0700).
//! The shell is a subreaper, and every process it starts carries
//! `CONVOY_SESSION_DIR=ROOT/s/NAME`; closing the session kills its tmux
//! session, then every process in its shell's tree, with its marker or of
//! its uid ([`sweep`]), so `nohup`, `setsid`, `env -i` and double forks go
//! too.
//!
//! Where things live: [`stdio`] frames requests and responses on the
//! helper's stdin and stdout; [`sessions`] keeps the registry of sessions
//! and serves each op; [`register`] makes a new session's uid, files and
//! registry entry; [`adopt`] takes over a previous helper's sessions;
//! [`prepare`] makes a task's workdir ready (and removes it); [`check`]
//! runs one command as a session without a shell (a verification);
//! [`gateway`] serves agents' model calls on a loopback port, for convoy
//! to answer;
//! [`shell`] starts a session's shell (with the rc script, `rc.bash`);
//! [`users`] hands out session uids and launches shells; [`limits`] holds
//! each session to `session_memory`; [`run`] runs one command and
//! interrupts it on timeout; [`completions`] reads the completion records;
//! [`dead_panes`] learns of shells' deaths and removes their panes;
//! [`sweep`] kills what a closed session left; [`diagnose`] says why a
//! shell did not start.

mod adopt;
mod check;
mod completions;
mod dead_panes;
mod diagnose;
mod gateway;
mod limits;
mod prepare;
mod reaper;
mod register;
mod run;
mod sessions;
mod shell;
mod stdio;
mod sweep;
mod users;

pub use check::hold;
pub use reaper::reaper;
pub use shell::RC;
pub use stdio::serve;
pub use users::{session_exec, Launch};

/// How sessions are kept apart, as `convoy shim --isolation` says.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Isolation {
    /// `user` when the helper runs as root, else `none`.
    Auto,
    /// Each session runs as a uid of its own (the helper must be root).
    User,
    /// Every session runs as the helper's own user.
    None,
}

/// What the helper is told at start about the sessions it will run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShimConfig {
    pub isolation: Isolation,
    /// Most processes (and threads) one session's uid may have at once
    /// (RLIMIT_NPROC; `user` isolation only).
    pub session_pids: Option<u64>,
    /// Most resident memory, in bytes, all processes of one session may
    /// hold together (`user` isolation only).
    pub session_memory: Option<u64>,
}

impl Default for ShimConfig {
    fn default() -> Self {
        ShimConfig {
            isolation: Isolation::None,
            session_pids: None,
            session_memory: None,
        }
    }
}
