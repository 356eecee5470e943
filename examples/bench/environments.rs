//! `scripts/bench.sh --environments`: what a task environment costs per
//! conversation. The same conversations (3 calls of `true`, then `finish`)
//! run in one container with isolation "user", without `[environment]` and
//! with each kind of environment: 3 small files, the files plus a `[verify]`
//! command (`true`), and the files plus a 50 MB seed directory. `setup_s`
//! is the time from the start of an attempt to its session being ready in
//! its fresh workdir (opening the session included), so the job without an
//! environment has none.

use super::fake_llm::FakeLlm;
use super::{percentile, run_with, Load, Run, USER};

/// The seed's size: 50 files of 1 MB, in 5 directories (a small repo's
/// worth of files is what a seed usually is; their count matters less
/// than the bytes to `cp -a`).
const SEED_MB: usize = 50;

/// Three small files every environment writes.
const FILES: &str = r#"files = { "task.md" = "Fix {{ id }}.", "src/main.py" = "print('hello')\n", "tests/test_main.py" = "def test(): pass\n" }"#;

/// Prints the table (and the cost of the seed per MB under it).
pub async fn table(llm: &FakeLlm, quick: bool) {
    let (convos, workers) = if quick { (200, 64) } else { (1000, 256) };
    let seed = seed_dir();
    let scratch = scratch_dir();
    let environment = format!("[environment]\nworkdir = \"/envs/{{{{ id }}}}\"\n{FILES}\n");
    // The same, with the workdirs on a host directory bind-mounted into
    // the container (not the container's own filesystem).
    let mounted = format!(
        "{}[[workspace.mounts]]\nhost = \"{}\"\ncontainer = \"/envs\"\n",
        environment,
        scratch.path().display()
    );
    let verify = "[verify]\ncommand = \"true\"\n";
    let jobs = [
        ("no `[environment]`", String::new()),
        ("files only (3 small files)", environment.clone()),
        (
            "files and `[verify]` (`true`)",
            format!("{environment}{verify}"),
        ),
        (
            "files and a 50 MB seed",
            format!(
                "{environment}seed = \"/seed\"\n[[workspace.mounts]]\nhost = \"{}\"\ncontainer = \"/seed\"\nread_only = true\n",
                seed.path().display()
            ),
        ),
        ("files only, workdirs on a mount", mounted.clone()),
        (
            "files and `[verify]`, workdirs on a mount",
            // [verify] after the mount's table: a table header ends it.
            format!("{mounted}{verify}"),
        ),
    ];
    println!(
        "convoy task environments benchmark ({convos} conversations of 3 calls, workers {workers}, one container, isolation \"user\")\n"
    );
    println!("| job | conversations/s (wall) | vs no environment | setup_s p50 (ms) | setup_s p99 (ms) | verify_s p50 (ms) | verify_s p99 (ms) | ok |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    // Warm-up (image layers, page cache, the daemon): not measured.
    run_with(llm, USER, Load::new(8, 3, 8), &jobs[3].1).await;
    let load = Load::new(convos, 3, workers);
    let (mut base, mut files_setup) = (f64::NAN, f64::NAN);
    let mut seed_line = None;
    for (i, (label, extra)) in jobs.iter().enumerate() {
        let r = run_with(llm, USER, load, extra).await;
        let rate = r.summary["conversations_per_s"].as_f64().unwrap();
        if i == 0 {
            base = rate;
        }
        let setup = phase_ms(&r, "setup_s");
        let verify = phase_ms(&r, "verify_s");
        if i == 1 {
            files_setup = percentile(&setup, 0.5);
        }
        println!(
            "| {label} | {rate:.1} ({:.1}s) | {:.2} | {} | {} | {} | {} | {} |",
            r.wall.as_secs_f64(),
            rate / base,
            cell(&setup, 0.5),
            cell(&setup, 0.99),
            cell(&verify, 0.5),
            cell(&verify, 0.99),
            r.summary["counts"]["ok"],
        );
        if i == 3 {
            seed_line = Some((
                (percentile(&setup, 0.5) - files_setup) / SEED_MB as f64,
                (convos * SEED_MB) as f64 / r.wall.as_secs_f64(),
            ));
        }
    }
    // One conversation at a time: what setup costs a conversation when
    // no other session opens or copies at the same moment.
    let mut alone = [f64::NAN; 3];
    for (k, i) in [1, 3, 4].into_iter().enumerate() {
        let r = run_with(llm, USER, Load::new(20, 3, 1), &jobs[i].1).await;
        let setup = phase_ms(&r, "setup_s");
        alone[k] = percentile(&setup, 0.5);
        println!(
            "| {}, 1 worker (20 conversations) | {:.1} ({:.1}s) | | {} | {} | - | - | {} |",
            jobs[i].0,
            r.summary["conversations_per_s"].as_f64().unwrap(),
            r.wall.as_secs_f64(),
            cell(&setup, 0.5),
            cell(&setup, 0.99),
            r.summary["counts"]["ok"],
        );
    }
    println!(
        "\nAlone, the seed adds {:.1} ms per MB to setup_s (p50 against files only).",
        (alone[1] - alone[0]) / SEED_MB as f64
    );
    if let Some((per_mb, mb_per_s)) = seed_line {
        println!(
            "At workers {workers} it adds {per_mb:.1} ms per MB to setup_s (p50 against files only); \
             the container copied {mb_per_s:.0} MB/s of seeds in total."
        );
    }
}

/// One phase's seconds over the run's tasks, in ms, sorted.
fn phase_ms(r: &Run, phase: &str) -> Vec<f64> {
    let mut ms: Vec<f64> = r
        .results
        .iter()
        .filter_map(|l| l["phases"][phase].as_f64())
        .map(|s| s * 1000.0)
        .collect();
    ms.sort_by(|a, b| a.partial_cmp(b).unwrap());
    ms
}

/// A percentile cell, or a dash when the phase never ran.
fn cell(sorted: &[f64], p: f64) -> String {
    if sorted.is_empty() {
        "-".to_string()
    } else {
        format!("{:.1}", percentile(sorted, p))
    }
}

/// A host directory for the workdirs, reachable by every session's uid.
fn scratch_dir() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// The seed directory on the host (bind-mounted read-only at `/seed`).
fn seed_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    // Not compressible, not sparse: every byte is copied.
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut megabyte = vec![0u8; 1 << 20];
    for i in 0..SEED_MB {
        for b in megabyte.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        let sub = dir.path().join(format!("pkg{}", i % 5));
        std::fs::create_dir_all(&sub).unwrap();
        std::fs::write(sub.join(format!("blob{i}.bin")), &megabyte).unwrap();
    }
    dir
}
