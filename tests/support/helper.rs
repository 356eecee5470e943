//! The workspace helper (`convoy shim`) driven over its stdio protocol,
//! one request at a time, as the tests of its parts need it.

use std::path::Path;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout};

/// One helper and its stream, one request at a time.
pub struct Helper {
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
    next: u64,
}

impl Helper {
    pub async fn start(root: &Path, isolation: &str) -> Helper {
        let mut child = tokio::process::Command::new(super::convoy_bin())
            .args(["shim", "--root"])
            .arg(root)
            .args(["--isolation", isolation])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("the helper starts");
        let stdin = child.stdin.take().unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let hello = lines.next_line().await.unwrap().expect("a hello line");
        assert!(hello.contains("convoy-shim"), "{hello}");
        Helper {
            child,
            stdin,
            lines,
            next: 1,
        }
    }

    pub async fn call(&mut self, mut op: Value) -> Value {
        op["id"] = json!(self.next);
        self.next += 1;
        let line = format!("{op}\n");
        self.stdin.write_all(line.as_bytes()).await.unwrap();
        let answer = self.lines.next_line().await.unwrap().expect("an answer");
        let v: Value = serde_json::from_str(&answer).unwrap();
        v["reply"].clone()
    }

    /// Opens a session whose workdir the helper prepares; it says how
    /// long that took.
    pub async fn open(&mut self, name: &str, workdir: &Path, prepare: Value) {
        let reply = self
            .call(json!({"op": "open", "session": name,
                "workdir": workdir.display().to_string(), "env": [], "prepare": prepare}))
            .await;
        assert_eq!(reply["kind"], "prepared", "{reply}");
        assert!(reply["prepare_s"].as_f64().unwrap() >= 0.0, "{reply}");
    }

    /// Runs `command` as a check (a session of its own with no shell).
    pub async fn check(
        &mut self,
        name: &str,
        workdir: &Path,
        prepare: Value,
        command: &str,
        timeout_ms: u64,
    ) -> Value {
        self.call(json!({"op": "check", "session": name,
            "workdir": workdir.display().to_string(), "env": [["GREETING", "hi"]],
            "prepare": prepare, "command": command, "timeout_ms": timeout_ms,
            "max_output_bytes": 100000}))
            .await
    }

    /// The command's output; it must exit 0.
    pub async fn run(&mut self, name: &str, command: &str) -> String {
        let reply = self
            .call(json!({"op": "run", "session": name, "command": command,
                "timeout_ms": 20000, "max_output_bytes": 100000}))
            .await;
        assert_eq!(reply["exit_code"], 0, "{command}: {reply}");
        reply["output"].as_str().unwrap().to_string()
    }

    pub async fn close(&mut self, name: &str) {
        let reply = self.call(json!({"op": "close", "session": name})).await;
        assert_eq!(reply["kind"], "done", "{reply}");
    }

    pub async fn shutdown(mut self) {
        self.call(json!({"op": "shutdown"})).await;
        let _ = self.child.wait().await;
    }
}
