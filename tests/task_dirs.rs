//! A task's workdir as the workspace helper makes it: the real binary's
//! `convoy shim` driven over its stdio protocol, as root with a uid per
//! session (`user` isolation, as in the container) and as one user (the
//! local workspace). A file written by `prepare` is there, a fresh prepare
//! removes what the last attempt left, the hidden verify file is not there
//! before verification, and `remove` takes the workdir away.

mod support;

use std::os::unix::fs::{MetadataExt, PermissionsExt};

use serde_json::json;
use support::helper::Helper;

async fn attempts_and_verification(isolation: &str) {
    let tmp = tempfile::tempdir().unwrap();
    // Sessions of their own uid must reach the workdir's parent.
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let seed = tmp.path().join("seed");
    std::fs::create_dir_all(seed.join("src")).unwrap();
    std::fs::write(seed.join("src/bug.py"), "print(1/0)\n").unwrap();
    let workdir = tmp.path().join("tasks/t1");
    let mut h = Helper::start(&tmp.path().join("root"), isolation).await;

    // Attempt 1: seed and files in a fresh workdir; it leaves a file.
    let fresh = json!({"fresh": true, "seed": seed.display().to_string(),
        "files": [["docs/task.md", "fix the bug"]], "dirs": [".home"]});
    h.open("a1", &workdir, fresh.clone()).await;
    let seen = h.run("a1", "cat docs/task.md; echo; ls -A; ls src").await;
    assert_eq!(seen, "fix the bug\n.home\ndocs\nsrc\nbug.py\n");
    let owner = h
        .run("a1", "[ \"$(stat -c %u .)\" = \"$(id -u)\" ] && echo mine")
        .await;
    assert_eq!(owner, "mine\n", "the workdir belongs to the session's user");
    assert!(h
        .run("a1", "ls check.sh 2>&1 || true")
        .await
        .contains("No such file"));
    h.run("a1", "echo half-done > left.txt").await;
    h.close("a1").await;

    // Attempt 2 starts from a clean workdir: no trace of attempt 1.
    h.open("a2", &workdir, fresh).await;
    assert_eq!(h.run("a2", "ls -A").await, ".home\ndocs\nsrc\n");
    h.run("a2", "echo fixed > src/bug.py").await;
    h.close("a2").await;

    // Verification: the same workdir, plus its hidden file, as a check
    // of its own uid (with `user` isolation: not attempt 2's).
    let verify =
        json!({"fresh": false, "files": [["check.sh", "grep -q fixed src/bug.py && echo passed"]]});
    let ran = h
        .check(
            "v",
            &workdir,
            verify,
            "bash check.sh; echo $GREETING; id -u; exit 3",
            20000,
        )
        .await;
    assert_eq!(ran["kind"], "ran", "{ran}");
    assert_eq!(ran["exit_code"], 3, "{ran}");
    assert_eq!(ran["timed_out"], false, "{ran}");
    let lines: Vec<&str> = ran["output"].as_str().unwrap().lines().collect();
    assert_eq!(lines[..2], ["passed", "hi"], "{ran}");
    let uid: u32 = lines[2].parse().unwrap();
    if isolation == "user" {
        assert!(uid >= 1 << 20, "a session uid of its own: {uid}");
    }
    assert_eq!(h.call(json!({"op": "list"})).await["names"], json!([]));
    if isolation == "user" {
        let mode = std::fs::metadata(&workdir).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o700, "other sessions cannot look in");
    }

    let reply = h
        .call(json!({"op": "remove", "path": workdir.display().to_string()}))
        .await;
    assert_eq!(reply["kind"], "done", "{reply}");
    assert!(!workdir.exists());
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_attempt_gets_a_fresh_workdir_and_verify_files_come_only_after() {
    attempts_and_verification("none").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_uid_per_session_the_workdir_is_given_to_each_session_in_turn() {
    // As root only (the container's case): uids need root to hand out.
    if !nix::unistd::geteuid().is_root() {
        panic!("this test needs root, as the rest of the suite (see README)");
    }
    attempts_and_verification("user").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_seed_is_a_bad_workdir_and_nothing_is_left() {
    let tmp = tempfile::tempdir().unwrap();
    let mut h = Helper::start(&tmp.path().join("root"), "none").await;
    let workdir = tmp.path().join("w");
    let reply = h
        .call(
            json!({"op": "open", "session": "s", "workdir": workdir.display().to_string(),
            "env": [], "prepare": {"fresh": true, "seed": "/no/such/seed"}}),
        )
        .await;
    assert_eq!(reply["error"], "bad_workdir", "{reply}");
    assert!(reply["message"].as_str().unwrap().contains("/no/such/seed"));
    let listed = h.call(json!({"op": "list"})).await;
    assert_eq!(listed["names"], json!([]));
    h.shutdown().await;
}

/// Processes whose command line has `tag` (other than this test's own).
fn with_tag(tag: &str) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != std::process::id())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(tag))
        })
        .collect()
}

/// A check's processes end with it: what it left running (in the
/// background, `setsid`, `nohup`, `env -i`) and, past its timeout, the
/// command itself; the helper answers at once either way.
async fn a_check_leaves_nothing(isolation: &str) {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let workdir = tmp.path().join("w");
    let mut h = Helper::start(&tmp.path().join("root"), isolation).await;
    let fresh = json!({"fresh": true, "files": [["a.txt", "x"]]});
    // Numbers for `sleep`, apart from the other test's (which runs at the
    // same time in this process).
    let tag = format!("31{}{}", std::process::id(), isolation.as_bytes()[0]);
    let left = format!(
        "(setsid sleep {tag}1 &); nohup sleep {tag}2 >/dev/null 2>&1 & env -i /bin/sleep {tag}3 & echo started"
    );
    let ran = h.check("k1", &workdir, fresh.clone(), &left, 20000).await;
    assert_eq!(ran["exit_code"], 0, "{ran}");
    assert_eq!(ran["output"], "started\n", "{ran}");
    assert_eq!(with_tag(&tag), Vec::<u32>::new(), "left behind by a check");

    let started = std::time::Instant::now();
    let ran = h
        .check(
            "k2",
            &workdir,
            fresh,
            &format!("echo before; sleep {tag}4"),
            500,
        )
        .await;
    assert_eq!(ran["timed_out"], true, "{ran}");
    assert_eq!(ran["output"], "before\n", "{ran}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(15),
        "the helper answered a timed-out check only after {:?}",
        started.elapsed()
    );
    assert_eq!(
        with_tag(&tag),
        Vec::<u32>::new(),
        "left by a timed-out check"
    );
    let stats = h.call(json!({"op": "stats"})).await;
    assert_eq!(stats["processes"], json!([]), "{stats}");
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_check_leaves_nothing_behind_as_the_helpers_user() {
    a_check_leaves_nothing("none").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_check_leaves_nothing_behind_as_a_uid_of_its_own() {
    if !nix::unistd::geteuid().is_root() {
        panic!("this test needs root, as the rest of the suite (see README)");
    }
    a_check_leaves_nothing("user").await;
}
