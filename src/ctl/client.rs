//! `convoy ctl RUN_DIR ...`: sends one request to the run serving
//! `RUN_DIR/convoy.ctl` and prints its reply.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;

use serde_json::Value;

use super::{short_path, SOCKET};
use crate::exit::{Exit, Failure};
use crate::report::say;

/// What `convoy ctl` asks of a run.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum CtlAction {
    /// Stop starting conversations; in-flight ones finish.
    Pause,
    /// Start conversations again after `pause`.
    Resume,
    /// Change how many conversations may be in flight at once (up or down;
    /// nothing is cancelled: going down, the pool shrinks as they finish).
    Workers {
        #[arg(value_parser = clap::value_parser!(u32).range(1..))]
        n: u32,
    },
    /// Cancel one in-flight conversation (recorded as cancelled, not as a
    /// result: a later run of the directory does it again).
    Cancel { id: String },
    /// Print in flight, done, failed, paused, workers and the conversations
    /// waiting longest (their step, and whether on the model or a command).
    Status {
        /// The reply as JSON.
        #[arg(long)]
        json: bool,
    },
}

impl CtlAction {
    fn request(&self) -> String {
        match self {
            CtlAction::Pause => "pause".into(),
            CtlAction::Resume => "resume".into(),
            CtlAction::Workers { n } => format!("workers {n}"),
            CtlAction::Cancel { id } => format!("cancel {id}"),
            CtlAction::Status { .. } => "status".into(),
        }
    }
}

/// Sends `action` to the run in `run_dir`. No run there (no socket, or a
/// stale one) is exit 2; a refused request is exit 1.
pub fn ctl(run_dir: &Path, action: &CtlAction) -> Result<Exit, Failure> {
    let socket = run_dir.join(SOCKET);
    let no_run = |why: String| Failure::invalid(anyhow::anyhow!("{why}"));
    let dir = File::open(run_dir).map_err(|e| {
        no_run(format!(
            "cannot open the run directory `{}`: {e}",
            run_dir.display()
        ))
    })?;
    let mut stream = UnixStream::connect(short_path(&dir, SOCKET)).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => no_run(format!(
            "no convoy run is running in `{}`: it has no control socket ({SOCKET})",
            run_dir.display()
        )),
        std::io::ErrorKind::ConnectionRefused => no_run(format!(
            "the control socket `{}` is stale: the run that made it is gone (it crashed or was killed), so nothing is running there",
            socket.display()
        )),
        _ => Failure::infra(anyhow::anyhow!(
            "cannot connect to `{}`: {e}",
            socket.display()
        )),
    })?;
    let io = |e: std::io::Error| {
        Failure::infra(anyhow::anyhow!("talking to `{}`: {e}", socket.display()))
    };
    stream
        .write_all(format!("{}\n", action.request()).as_bytes())
        .map_err(io)?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).map_err(io)?;
    let reply: Value = serde_json::from_str(&line).map_err(|e| {
        Failure::infra(anyhow::anyhow!(
            "the run answered something that is not a reply ({e}): {line:?}"
        ))
    })?;
    if reply["ok"] != Value::Bool(true) {
        eprintln!(
            "error: {}",
            reply["error"]
                .as_str()
                .unwrap_or("the run refused the request")
        );
        return Ok(Exit::TasksFailed);
    }
    match action {
        CtlAction::Status { json: true } => say(&format!("{}\n", reply["status"])),
        CtlAction::Status { json: false } => say(&render_status(&reply["status"])),
        other => say(&format!("{}: done\n", other.request())),
    }
    Ok(Exit::Ok)
}

/// `status` for a person.
fn render_status(s: &Value) -> String {
    let mut out = format!(
        "in flight {}, done {}, failed {}, workers {}{}\n",
        s["in_flight"],
        s["done"],
        s["failed"],
        s["workers"],
        if s["paused"] == Value::Bool(true) {
            ", paused"
        } else {
            ""
        }
    );
    for w in s["slowest"].as_array().into_iter().flatten() {
        let what = match w["command"].as_str() {
            Some(c) => format!("command `{c}`"),
            None => w["waiting_on"].as_str().unwrap_or("?").to_string(),
        };
        out.push_str(&format!(
            "  {} (attempt {}, step {}): {:.1}s on {what}\n",
            w["id"].as_str().unwrap_or("?"),
            w["attempt"],
            w["step"],
            w["waited_s"].as_f64().unwrap_or(0.0)
        ));
    }
    out
}
