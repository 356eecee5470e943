//! The helper protocol, version 1.
//!
//! Transport: the helper's stdin carries requests, its stdout carries
//! responses, one JSON object per line (UTF-8, `\n`-terminated). Its stderr
//! is free-form diagnostics.
//!
//! 1. On start the helper writes one [`Hello`] line:
//!    `{"hello":"convoy-shim","version":1,"pid":42}`. A client that does not
//!    know `version` must stop.
//! 2. Each request is `{"id":N,"op":...}` with a client-chosen `id` unique
//!    among requests in flight. Requests are served concurrently; responses
//!    come back in completion order as `{"id":N,"reply":...}`.
//! 3. Requests on one session are run one after another; requests on
//!    different sessions never wait for each other.
//! 4. When stdin closes or a `shutdown` request arrives, the helper kills
//!    its tmux server and every process any session started, removes what
//!    it created under its root, and exits.
//!
//! Ops: `open` (create a session), `run` (run a command in a session's
//! shell and return its output), `close` (kill a session and its
//! processes), `list` (names of the live sessions), `stats` (sessions,
//! processes and their open files, for the monitor), `shutdown`.

use serde::{Deserialize, Serialize};

pub const PROTOCOL_VERSION: u32 = 1;
pub const HELLO: &str = "convoy-shim";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Hello {
    pub hello: String,
    pub version: u32,
    pub pid: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Request {
    pub id: u64,
    #[serde(flatten)]
    pub op: Op,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    /// Create a session whose shell starts in `workdir` with `env` set.
    Open {
        session: String,
        workdir: Option<String>,
        #[serde(default)]
        env: Vec<(String, String)>,
    },
    /// Run `command` in the session's shell (state such as `cd` and
    /// `export` persists). Stdin is /dev/null. After `timeout_ms` the
    /// command gets C-c, then its process group is killed.
    Run {
        session: String,
        command: String,
        timeout_ms: u64,
        /// Output beyond this many bytes keeps its head and tail.
        max_output_bytes: u64,
    },
    /// Kill the session and every process it started (background, nohup
    /// and setsid included).
    Close { session: String },
    /// Names of live sessions.
    List,
    /// What the monitor samples: live sessions, and every process a session
    /// of this helper started (with the session it belongs to, if it still
    /// carries its marker) and its open files.
    Stats,
    /// Kill everything and exit.
    Shutdown,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Response {
    pub id: u64,
    pub reply: Reply,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Reply {
    Done,
    Ran(RunOutput),
    Sessions { names: Vec<String> },
    Stats(WorkspaceStats),
    Error { message: String },
}

/// A sample of the workspace, for the leak monitor.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct WorkspaceStats {
    pub sessions: Vec<String>,
    /// Processes started by sessions: (pid, session name if known).
    pub processes: Vec<(u32, Option<String>)>,
    /// Open files of those processes, summed.
    pub fds: u64,
}

/// What a command left behind.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct RunOutput {
    /// Everything the command wrote to stdout and stderr, interleaved as
    /// written (invalid UTF-8 replaced).
    pub output: String,
    /// The shell's `$?` after the command; 130 after C-c.
    pub exit_code: i32,
    /// The command outlived its timeout.
    pub timed_out: bool,
    /// After C-c did not stop it, its process group was killed.
    pub killed: bool,
    /// Bytes left out of the middle of `output`.
    pub omitted_bytes: u64,
    /// The session's shell had exited (e.g. `exit`) and was started anew
    /// before this command: shell state was lost.
    pub shell_restarted: bool,
    /// The shell exited during this command.
    pub shell_exited: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_format_is_stable() {
        let r = Request {
            id: 7,
            op: Op::Close {
                session: "s1".into(),
            },
        };
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"id":7,"op":"close","session":"s1"}"#
        );
        let back: Response =
            serde_json::from_str(r#"{"id":7,"reply":{"kind":"sessions","names":["a"]}}"#).unwrap();
        assert_eq!(
            back.reply,
            Reply::Sessions {
                names: vec!["a".into()]
            }
        );
    }
}
