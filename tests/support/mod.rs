//! Helpers for integration tests: a job directory, running the real
//! `convoy` binary, reading its run directory.

#![allow(dead_code)]

pub mod fake_llm;
pub mod helper;
pub mod hostile;

use std::path::{Path, PathBuf};
use std::process::Output;

use serde_json::Value;

/// The API key the HTTP tests pass (and check is never written anywhere).
pub const KEY: &str = "sk-test-5ecret-never-written";

/// The script for one conversation, as the fake server reads it.
pub fn script(turns: Value) -> String {
    serde_json::json!({ "turns": turns }).to_string()
}

/// The body of a manifest for the fake server: each task's `script` column
/// is its user message; `llm_keys` go into `[llm]`, `rest` after the local
/// `[workspace]` table.
pub fn http_manifest(llm: &fake_llm::FakeLlm, llm_keys: &str, rest: &str) -> String {
    http_manifest_on(llm, llm_keys, "kind = \"local\"\nworkdir = \"work\"", rest)
}

/// `http_manifest` with `workspace` as the `[workspace]` keys.
pub fn http_manifest_on(
    llm: &fake_llm::FakeLlm,
    llm_keys: &str,
    workspace: &str,
    rest: &str,
) -> String {
    llm_manifest(
        &format!("base_url = \"{}\"\n{llm_keys}", llm.base_url()),
        workspace,
        rest,
    )
}

/// The tests' manifest body for the fake server(s): `llm_keys` in `[llm]`
/// (where the server is named), `workspace` as the `[workspace]` keys,
/// `rest` after them.
pub fn llm_manifest(llm_keys: &str, workspace: &str, rest: &str) -> String {
    format!(
        r#"
[prompt]
system = "You are a test."
user = "{{{{ script }}}}"
[llm]
model = "fake-model"
api_key_env = "CONVOY_TEST_KEY"
{llm_keys}
[workspace]
{workspace}
{rest}
"#
    )
}

pub fn convoy_bin() -> &'static str {
    env!("CARGO_BIN_EXE_convoy")
}

/// A job in its own temporary directory, with its own TMPDIR so the test
/// can see exactly what the run left behind.
pub struct TestJob {
    pub dir: tempfile::TempDir,
}

impl TestJob {
    pub fn new() -> TestJob {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("tmp")).unwrap();
        std::fs::create_dir_all(dir.path().join("work")).unwrap();
        TestJob { dir }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn write(&self, rel: &str, text: &str) -> PathBuf {
        let p = self.path(rel);
        std::fs::write(&p, text).unwrap();
        p
    }

    /// Writes `tasks.jsonl` from JSON rows.
    pub fn tasks(&self, rows: &[Value]) {
        let text: String = rows.iter().map(|r| format!("{r}\n")).collect();
        self.write("tasks.jsonl", &text);
    }

    /// Writes `job.toml`: the given body after a local-workspace preamble.
    pub fn manifest(&self, body: &str) -> PathBuf {
        self.write(
            "job.toml",
            &format!(
                "name = \"test\"\n[tasks]\nsource = \"tasks.jsonl\"\nid = \"{{{{ id }}}}\"\n{body}"
            ),
        )
    }

    pub fn tmp_entries(&self) -> Vec<String> {
        std::fs::read_dir(self.path("tmp"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    }

    /// Runs `convoy ARGS` in the job directory.
    pub async fn convoy(&self, args: &[&str], envs: &[(&str, &str)]) -> Output {
        let mut cmd = tokio::process::Command::new(convoy_bin());
        cmd.args(args)
            .current_dir(self.dir.path())
            .env("TMPDIR", self.path("tmp"))
            .env("RUST_LOG", "warn")
            .kill_on_drop(true);
        for (k, v) in envs {
            cmd.env(k, v);
        }
        cmd.output().await.unwrap()
    }

    /// Starts `program ARGS` in the job directory without waiting for it.
    pub fn spawn(
        &self,
        program: &str,
        args: &[&str],
        envs: &[(&str, &str)],
    ) -> tokio::process::Child {
        let mut cmd = tokio::process::Command::new(program);
        cmd.args(args)
            .current_dir(self.dir.path())
            .env("TMPDIR", self.path("tmp"))
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        for (k, v) in envs {
            cmd.env(k, v);
        }
        cmd.spawn().unwrap()
    }

    pub async fn run(&self, envs: &[(&str, &str)]) -> Output {
        self.convoy(&["run", "job.toml", "--out", "out"], envs)
            .await
    }

    pub fn results(&self) -> Vec<Value> {
        read_jsonl(&self.path("out/results.jsonl"))
    }

    /// Waits until `results.jsonl` has at least `n` lines (the run's own
    /// progress is the event; no fixed sleeps).
    pub async fn wait_for_results(&self, n: usize) {
        for _ in 0..1200 {
            if self.results().len() >= n {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        panic!("the run never reached {n} results");
    }

    pub fn summary(&self) -> Value {
        serde_json::from_str(&std::fs::read_to_string(self.path("out/summary.json")).unwrap())
            .unwrap()
    }

    pub fn trajectories(&self) -> Vec<Value> {
        read_jsonl(&self.path("out/trajectories.jsonl"))
    }

    /// The trajectory of task `id`.
    pub fn trajectory(&self, id: &str) -> Value {
        self.trajectories()
            .into_iter()
            .find(|t| t["id"] == id)
            .unwrap_or_else(|| panic!("no trajectory for {id}"))
    }
}

pub fn read_jsonl(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The `content` of every tool message of a trajectory, in order.
pub fn observations(traj: &Value) -> Vec<String> {
    traj["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["role"] == "tool")
        .map(|m| m["content"].as_str().unwrap().to_string())
        .collect()
}

/// Processes whose command line contains `needle` (other than ourselves).
pub fn processes_with(needle: &str) -> Vec<String> {
    let me = std::process::id().to_string();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|s| s.chars().all(|c| c.is_ascii_digit()))
        })
        .filter(|e| e.file_name().to_str() != Some(me.as_str()))
        .filter_map(|e| {
            let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            cmd.contains(needle).then_some(cmd)
        })
        .collect()
}

/// The body of a manifest for the `script` provider (prompt "go"): the
/// `[workspace]` table's keys, then anything else.
pub fn script_job(workspace: &str, rest: &str) -> String {
    format!(
        "[prompt]\nuser = \"go\"\n[llm]\nprovider = \"script\"\n[workspace]\n{workspace}\n{rest}\n"
    )
}

/// A script-provider job over `containers` Docker containers, with more
/// `[workspace]` keys in `workspace` and `rest` after the table.
pub fn fleet_job(containers: u32, workspace: &str, rest: &str) -> String {
    ensure_workspace_image();
    let ws = format!(
        "kind = \"docker\"\nimage = \"{WORKSPACE_IMAGE}\"\nnofile = 4096\ncontainers = {containers}\n{workspace}"
    );
    script_job(&ws, rest)
}

/// Script-provider rows `t0..tN` whose first command prints the
/// container's hostname (its id) after `sleep`.
pub fn hostname_rows(n: usize, sleep: &str) -> Vec<Value> {
    (0..n)
        .map(|i| {
            serde_json::json!({
                "id": format!("t{i}"),
                "commands": [format!("sleep {sleep}; hostname"), "echo $((6*7))"],
                "answer": format!("done {i}"),
            })
        })
        .collect()
}

/// The workspace image the Docker tests run in.
pub const WORKSPACE_IMAGE: &str = "convoy-workspace:bookworm";

/// Makes sure the Docker tests' image exists, building it on first use
/// (`scripts/build-workspace-image.sh`, offline from Debian packages) so
/// that `cargo test` alone passes on a fresh machine. Once per test
/// process; an exclusive lock on a file in the system temp dir makes test
/// binaries running in parallel wait for one build instead of racing. The
/// script itself returns at once when the image (of its current version)
/// exists. Fails the test, never skips, when the build fails.
pub fn ensure_workspace_image() {
    static BUILT: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    BUILT.get_or_init(|| {
        let lock_path = std::env::temp_dir().join("convoy-test-workspace-image.lock");
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .unwrap_or_else(|e| panic!("cannot open {}: {e}", lock_path.display()));
        lock.lock().expect("lock the image build");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/build-workspace-image.sh");
        let out = std::process::Command::new("bash")
            .arg(&script)
            .arg(WORKSPACE_IMAGE)
            .output()
            .expect("run scripts/build-workspace-image.sh");
        assert!(
            out.status.success(),
            "building {WORKSPACE_IMAGE} failed (the Docker tests need it):\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        // The lock is released when `lock` is dropped here.
    });
}

/// Runs the docker CLI; its stdout. Panics (fails the test) if Docker is
/// unreachable: Docker tests never skip.
pub fn docker(args: &[&str]) -> String {
    let out = std::process::Command::new("docker")
        .args(args)
        .output()
        .expect("the docker CLI must be installed for the Docker tests");
    assert!(
        out.status.success(),
        "docker {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Ids of containers (running or not) labelled `convoy.run = run`.
pub fn containers_of_run(run: &Path) -> Vec<String> {
    let filter = format!("label=convoy.run={}", run.display());
    docker(&["ps", "-aq", "--filter", &filter])
        .lines()
        .map(str::to_string)
        .collect()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}
