//! What stderr looks like on a real terminal and off one: the binary runs
//! under `script` (a real pty, 80 columns) and its bytes are replayed into
//! a terminal emulator (vt100) to read the screen a person would see.

mod support;

use std::process::{Output, Stdio};

use serde_json::json;
use support::fake_llm::FakeLlm;
use support::{convoy_bin, script, TestJob, KEY};

/// Rows of tasks whose first request is answered 429 once (Retry-After 0),
/// then a tool call, then the answer: one retry per task.
fn retrying_job(llm: &FakeLlm, tasks: usize, interval: &str) -> TestJob {
    let job = TestJob::new();
    let rows: Vec<_> = (0..tasks)
        .map(|i| {
            let turns = json!([
                {"faults": [{"status": 429, "retry_after": "0"}],
                 "calls": [["bash", {"command": format!("echo {i}")}]], "delay_ms": 100},
                {"content": "done", "delay_ms": 100}
            ]);
            json!({"id": format!("t{i:02}"), "script": script(turns)})
        })
        .collect();
    job.tasks(&rows);
    job.manifest(&support::http_manifest(
        llm,
        "",
        &format!("[monitor]\ninterval = \"{interval}\"\n"),
    ));
    job
}

/// `convoy ARGS` on a pty of 80x40 (through `script`); the raw bytes the
/// terminal received.
async fn on_a_terminal(job: &TestJob, args: &str, env: &str) -> Vec<u8> {
    let command = format!(
        "stty cols 80 rows 40; exec env -u RUST_LOG -u NO_COLOR TERM=xterm {env} CONVOY_TEST_KEY={KEY} {} {args}",
        convoy_bin()
    );
    let out = tokio::process::Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .current_dir(job.dir.path())
        .env("TMPDIR", job.path("tmp"))
        .stdin(Stdio::null())
        .output()
        .await
        .expect("`script` (util-linux) runs the binary on a pty");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    out.stdout
}

/// The screen after replaying `bytes` on an 80-column terminal tall enough
/// that nothing scrolls away.
fn screen(bytes: &[u8]) -> Vec<String> {
    let mut parser = vt100::Parser::new(2000, 80, 0);
    parser.process(bytes);
    let text = parser.screen().contents();
    text.lines().map(str::to_string).collect()
}

fn is_bar(line: &str) -> bool {
    let b = line.as_bytes();
    b.len() > 7
        && b[2] == b':'
        && b[5] == b' '
        && b[6] == b'['
        && b[..2].iter().all(u8::is_ascii_digit)
}

/// Has an SGR (colour/style) escape sequence.
fn has_colour(bytes: &[u8]) -> bool {
    let text = String::from_utf8_lossy(bytes);
    text.split("\x1b[").skip(1).any(|rest| {
        let code: String = rest
            .chars()
            .take_while(|c| c.is_ascii_digit() || *c == ';')
            .collect();
        rest[code.len()..].starts_with('m')
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_lines_print_above_the_bar_and_leave_no_stale_copies() {
    let llm = FakeLlm::start().await;
    let job = retrying_job(&llm, 12, "5s");
    let bytes = on_a_terminal(&job, "-v run job.toml --out out --workers 2", "").await;
    let lines = screen(&bytes);
    let all = lines.join("\n");

    // One bar on the screen: its final state, whole on one line.
    let bars: Vec<_> = lines.iter().filter(|l| is_bar(l)).collect();
    assert_eq!(bars.len(), 1, "stale bar copies:\n{all}");
    assert!(
        bars[0].contains(" 12/12 ") && bars[0].contains("ok 12"),
        "{all}"
    );
    assert!(bars[0].contains("eta "), "the bar wrapped:\n{all}");
    // Each retry is its own debug line, intact, above the bar.
    let retries: Vec<_> = lines
        .iter()
        .filter(|l| l.contains("LLM request retry"))
        .collect();
    assert_eq!(retries.len(), 12, "{all}");
    assert!(
        retries
            .iter()
            .all(|l| l.contains("DEBUG") && l.starts_with("20")),
        "{all}"
    );
    let bar_at = lines.iter().position(|l| is_bar(l)).unwrap();
    let last_log = lines.iter().rposition(|l| l.contains("DEBUG")).unwrap();
    assert!(last_log < bar_at, "a log line below the bar:\n{all}");
    // A terminal gets colour unless NO_COLOR says no.
    assert!(has_colour(&bytes));
    let quiet = retrying_job(&llm, 2, "5s");
    let bytes = on_a_terminal(&quiet, "run job.toml --out out", "NO_COLOR=1").await;
    assert!(!has_colour(&bytes), "{}", String::from_utf8_lossy(&bytes));
    assert!(screen(&bytes).iter().any(|l| is_bar(l)));
}

async fn piped(job: &TestJob, args: &[&str]) -> Output {
    let mut cmd = tokio::process::Command::new(convoy_bin());
    cmd.args(args)
        .current_dir(job.dir.path())
        .env("TMPDIR", job.path("tmp"))
        .env("CONVOY_TEST_KEY", KEY)
        .env_remove("RUST_LOG")
        .env_remove("NO_COLOR");
    let out = cmd.output().await.unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn off_a_terminal_there_is_no_colour_and_retries_are_summed_up() {
    let llm = FakeLlm::start().await;
    let job = retrying_job(&llm, 8, "1h");
    let out = piped(&job, &["run", "job.toml", "--out", "out"]).await;
    assert!(
        !out.stderr.contains(&0x1b),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    // No line per retry at info level; one summary (the interval is an
    // hour: only the last word) with the count since the last one.
    assert!(!err.contains("LLM request retry"), "{err}");
    let summaries: Vec<_> = err
        .lines()
        .filter(|l| l.contains("LLM retries in the last"))
        .collect();
    assert_eq!(summaries.len(), 1, "{err}");
    assert!(summaries[0].contains("http_429 8"), "{err}");
    assert!(err.contains("progress: 8/8 done"), "{err}");

    // --color always colours even into a pipe; never keeps a terminal plain.
    let job = retrying_job(&llm, 1, "1h");
    let out = piped(
        &job,
        &["--color", "always", "run", "job.toml", "--out", "out"],
    )
    .await;
    assert!(has_colour(&out.stderr));
    let bytes = on_a_terminal(&job, "--color never run job.toml --out out2", "").await;
    assert!(!has_colour(&bytes), "{}", String::from_utf8_lossy(&bytes));
}
