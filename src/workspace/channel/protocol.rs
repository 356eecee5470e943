//! The helper protocol, version 2 (1 plus a kind on every error).
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
//! Ops: `open` (create a session, optionally preparing its workdir),
//! `run` (run a command in a session's shell and return its output),
//! `close` (kill a session and its processes), `remove` (a task's workdir
//! at its end), `list` (names of the live sessions), `stats` (sessions,
//! processes and their open files, for the monitor), `shutdown`. `prepare`
//! and `remove` are optional fields and a new op: a client that sends
//! neither speaks to any helper of version 2.
//!
//! A failed op answers `{"kind":"error","error":KIND,"message":TEXT}`:
//! [`ErrorKind`] says what went wrong in words a caller can act on (retry
//! or not), the message says it to a person. Nobody reads the message to
//! decide anything.

use serde::{Deserialize, Serialize};

pub const PROTOCOL_VERSION: u32 = 3;
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
    /// Create a session whose shell starts in `workdir` with `env` set;
    /// with `prepare`, the helper makes the workdir ready first (see
    /// [`Prepare`]).
    Open(Opening),
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
    /// Run `command` once with `bash -c` as a session of its own (named
    /// `session`, made as `Open` makes one, `prepare` included) that has no
    /// shell or tmux session; then close it. Stdin is /dev/null; after
    /// `timeout_ms` its process group is killed. A task's verification.
    Check(CheckOp),
    /// Remove the directory `path` and everything in it (a task's workdir
    /// at its end); gone already is fine.
    Remove { path: String },
    /// Names of live sessions.
    List,
    /// What the monitor samples: live sessions, and every process a session
    /// of this helper started (with the session it belongs to, if it still
    /// carries its marker) and its open files.
    Stats,
    /// Start the model gateway: an HTTP server on a loopback port of the
    /// workspace (`port`, or one the system picks), whose model calls wait
    /// for convoy to fetch them (`GatewayNext`) and answer them
    /// (`GatewayAnswer`). Answers `GatewayPort`; a second call answers the
    /// port of the first.
    GatewayOpen {
        #[serde(default)]
        port: Option<u16>,
    },
    /// The model calls waiting for convoy, at most `max`, once there is
    /// one (a long poll). Answers `Gateway`.
    GatewayNext { max: u32 },
    /// The answer to call `call`, sent to its HTTP client as is.
    GatewayAnswer(GatewayAnswer),
    /// Kill everything and exit.
    Shutdown,
}

/// A model call an agent made to the gateway, as the helper forwards it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct GatewayCall {
    /// The helper's number for it (what `GatewayAnswer` names).
    pub call: u64,
    /// `GET` or `POST`.
    pub method: String,
    /// `/v1/chat/completions` or `/v1/models`.
    pub path: String,
    /// The `Authorization` header (`Bearer TOKEN`), if any.
    #[serde(default)]
    pub authorization: Option<String>,
    /// The request body (JSON text for chat completions).
    #[serde(default)]
    pub body: String,
}

/// An OpenAI-style error body, as the gateway's errors are told to agents.
pub fn openai_error(message: &str, code: &str) -> serde_json::Value {
    serde_json::json!({"error": {"message": message, "type": "invalid_request_error", "code": code}})
}

/// What the gateway answers a model call with.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct GatewayAnswer {
    pub call: u64,
    pub status: u16,
    /// `application/json`, or `text/event-stream` for a streamed answer.
    pub content_type: String,
    pub body: String,
}

/// A new session: its name, where its processes start (`workdir`; the
/// workspace's default when none), what they are told (`env`), and with
/// `prepare`, what the helper makes of the workdir first.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Opening {
    pub session: String,
    pub workdir: Option<String>,
    #[serde(default)]
    pub env: Vec<(String, String)>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prepare: Option<Prepare>,
}

/// A check: the session it is (`Op::Check`) and its one command.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CheckOp {
    #[serde(flatten)]
    pub at: Opening,
    pub command: String,
    pub timeout_ms: u64,
    pub max_output_bytes: u64,
}

/// What the helper does to a session's workdir before its shell starts
/// there (a task's `[environment]`). It runs as the helper (root in a
/// container), so it can give the tree to the session's uid.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct Prepare {
    /// Remove whatever is there and start from an empty directory (every
    /// attempt does: a failed attempt's changes never reach the next).
    pub fresh: bool,
    /// A directory whose contents are copied in first (`cp -a seed/.`).
    #[serde(default)]
    pub seed: Option<String>,
    /// (path relative to the workdir, content), written after the seed;
    /// missing subdirectories are made.
    #[serde(default)]
    pub files: Vec<(String, String)>,
    /// Directories made inside the workdir if missing (the session's HOME
    /// and TMPDIR).
    #[serde(default)]
    pub dirs: Vec<String>,
    /// The session runs as the helper's own user (root), not as a uid of
    /// its own (`environment.setup_user` / `verify.user = "root"`); the
    /// tree is then not given away.
    #[serde(default)]
    pub as_root: bool,
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
    /// A session opened with `prepare`: how long making its workdir ready
    /// took the helper.
    Prepared {
        prepare_s: f64,
    },
    Ran(RunOutput),
    Sessions {
        names: Vec<String>,
    },
    Stats(WorkspaceStats),
    /// The gateway's port (`GatewayOpen`).
    GatewayPort {
        port: u16,
    },
    /// Model calls for convoy to answer (`GatewayNext`).
    Gateway {
        calls: Vec<GatewayCall>,
    },
    Error {
        #[serde(rename = "error")]
        kind: ErrorKind,
        message: String,
    },
}

/// Why a workspace request failed. The helper sends the first group; the
/// others arise on convoy's side of the link.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The request was malformed or named an invalid session (a bug, not
    /// bad luck).
    BadRequest,
    /// The helper has no session of that name (it was closed, or the
    /// helper restarted without it).
    NoSuchSession,
    /// A session of that name is open already.
    SessionExists,
    /// The working directory is missing or not a directory.
    BadWorkdir,
    /// The session's shell did not come up; the message says what it did.
    ShellDidNotStart,
    /// The workspace is out of processes, open files, memory or disk.
    OutOfResources,
    /// The session was closed while its command ran.
    SessionClosed,
    /// The private tmux server did not do what it was asked.
    Tmux,
    /// Anything else inside the helper.
    Internal,
    /// The stream to the helper broke; the request may or may not have run.
    HelperLost,
    /// The workspace could not be booted or recovered.
    Boot,
    /// Recovery gave up: the job cannot go on.
    WorkspaceLost,
    /// The workspace image does not exist (user input).
    MissingImage,
}

impl ErrorKind {
    pub const ALL: [ErrorKind; 13] = [
        ErrorKind::BadRequest,
        ErrorKind::NoSuchSession,
        ErrorKind::SessionExists,
        ErrorKind::BadWorkdir,
        ErrorKind::ShellDidNotStart,
        ErrorKind::OutOfResources,
        ErrorKind::SessionClosed,
        ErrorKind::Tmux,
        ErrorKind::Internal,
        ErrorKind::HelperLost,
        ErrorKind::Boot,
        ErrorKind::WorkspaceLost,
        ErrorKind::MissingImage,
    ];

    /// Would the same work, tried again (in a new session, after the link
    /// recovered), plausibly succeed? True for what depends on the moment
    /// (resources, a helper or tmux that broke, a slow shell start); false
    /// for what is wrong every time (bad input, a bug, a lost workspace).
    pub fn is_retryable(self) -> bool {
        match self {
            ErrorKind::NoSuchSession
            | ErrorKind::ShellDidNotStart
            | ErrorKind::OutOfResources
            | ErrorKind::Tmux
            | ErrorKind::HelperLost => true,
            ErrorKind::BadRequest
            | ErrorKind::SessionExists
            | ErrorKind::BadWorkdir
            | ErrorKind::SessionClosed
            | ErrorKind::Internal
            | ErrorKind::Boot
            | ErrorKind::WorkspaceLost
            | ErrorKind::MissingImage => false,
        }
    }

    /// The wire name (`no_such_session`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::BadRequest => "bad_request",
            ErrorKind::NoSuchSession => "no_such_session",
            ErrorKind::SessionExists => "session_exists",
            ErrorKind::BadWorkdir => "bad_workdir",
            ErrorKind::ShellDidNotStart => "shell_did_not_start",
            ErrorKind::OutOfResources => "out_of_resources",
            ErrorKind::SessionClosed => "session_closed",
            ErrorKind::Tmux => "tmux",
            ErrorKind::Internal => "internal",
            ErrorKind::HelperLost => "helper_lost",
            ErrorKind::Boot => "boot",
            ErrorKind::WorkspaceLost => "workspace_lost",
            ErrorKind::MissingImage => "missing_image",
        }
    }

    /// The kind named `name` on the wire; an unknown name (a newer
    /// helper) is `internal`.
    pub fn from_wire(name: &str) -> ErrorKind {
        serde_json::from_value(serde_json::Value::String(name.to_string()))
            .unwrap_or(ErrorKind::Internal)
    }
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A failed op inside the helper: what kind, and what happened.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct OpError {
    pub kind: ErrorKind,
    pub message: String,
}

impl OpError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> OpError {
        OpError {
            kind,
            message: message.into(),
        }
    }

    /// A failed file or process operation: out of resources when the
    /// system says so (by errno, never by message), else internal.
    pub fn io(what: impl std::fmt::Display, e: &std::io::Error) -> OpError {
        let exhausted = [
            nix::libc::EAGAIN,
            nix::libc::ENOMEM,
            nix::libc::EMFILE,
            nix::libc::ENFILE,
            nix::libc::ENOSPC,
            nix::libc::EDQUOT,
        ];
        let kind = if e.raw_os_error().is_some_and(|n| exhausted.contains(&n)) {
            ErrorKind::OutOfResources
        } else {
            ErrorKind::Internal
        };
        OpError::new(kind, format!("{what}: {e}"))
    }

    pub fn into_reply(self) -> Reply {
        Reply::Error {
            kind: self.kind,
            message: self.message,
        }
    }
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
        // Open and check carry their session's fields flat.
        let open = r#"{"op":"open","session":"c2","workdir":"/t/1","env":[["A","b"]]}"#;
        let op: Op = serde_json::from_str(open).unwrap();
        assert_eq!(serde_json::to_string(&op).unwrap(), open);
        let check = r#"{"op":"check","session":"c3","workdir":null,"env":[],"command":"true","timeout_ms":5,"max_output_bytes":9}"#;
        let op: Op = serde_json::from_str(check).unwrap();
        assert!(
            matches!(&op, Op::Check(c) if c.at.session == "c3" && c.timeout_ms == 5),
            "{op:?}"
        );
        assert_eq!(serde_json::to_string(&op).unwrap(), check);
        let err = Reply::Error {
            kind: ErrorKind::NoSuchSession,
            message: "no session `c1`".into(),
        };
        assert_eq!(
            serde_json::to_string(&err).unwrap(),
            r#"{"kind":"error","error":"no_such_session","message":"no session `c1`"}"#
        );
    }

    #[test]
    fn every_kind_round_trips_by_its_wire_name() {
        for k in ErrorKind::ALL {
            assert_eq!(ErrorKind::from_wire(k.as_str()), k);
            assert_eq!(serde_json::to_string(&k).unwrap(), format!("\"{k}\""));
        }
        assert_eq!(ErrorKind::from_wire("from_the_future"), ErrorKind::Internal);
    }
}
