//! `convoy merge` on hand-made run directories.

use super::*;

fn result(id: &str, status: &str, finished_at: &str) -> Value {
    json!({"id": id, "status": status, "attempt": 1, "finished_at": finished_at})
}

fn traj(id: &str, tag: &str) -> Value {
    json!({"id": id, "messages": [{"role": "user", "content": tag}], "tools": []})
}

fn run_dir(root: &Path, name: &str, model: &str, results: &[Value], trajs: &[Value]) -> PathBuf {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let lines = |vs: &[Value]| vs.iter().map(|v| format!("{v}\n")).collect::<String>();
    std::fs::write(dir.join("results.jsonl"), lines(results)).unwrap();
    std::fs::write(dir.join("trajectories.jsonl"), lines(trajs)).unwrap();
    std::fs::write(dir.join("manifest.toml"), format!("# {name}\n")).unwrap();
    let fp = json!({"version": 1, "parts": {"prompt": "sha256:p", "model": model}});
    std::fs::write(dir.join("fingerprint.json"), fp.to_string()).unwrap();
    dir
}

fn read_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

const T1: &str = "2024-01-01T00:00:01.000Z";
const T2: &str = "2024-01-01T00:00:02.5Z";

#[test]
fn dedupes_preferring_ok_then_latest() {
    let root = tempfile::tempdir().unwrap();
    let a = run_dir(
        root.path(),
        "a",
        "m",
        &[
            result("x", "failed", T2),
            result("y", "ok", T1),
            result("z", "timeout", T1),
            result("w", "ok", T1),
        ],
        &[traj("x", "a-x"), traj("y", "a-y"), traj("z", "a-z")],
    );
    // The last line is torn: `v` is not in this input.
    let b = run_dir(
        root.path(),
        "b",
        "m",
        &[
            result("z", "failed", T2),
            result("x", "ok", T1),
            result("y", "failed", T2),
            result("u", "ok", T1),
        ],
        &[
            traj("z", "b-z"),
            traj("x", "b-x"),
            traj("y", "b-y"),
            traj("u", "b-u"),
        ],
    );
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(b.join("results.jsonl"))
        .unwrap();
    f.write_all(b"{\"id\":\"v\",\"sta").unwrap();

    let out = root.path().join("out");
    let stats = merge(&out, &[a.clone(), b.clone()]).unwrap();
    assert_eq!(stats.tasks, 5);
    assert_eq!(stats.duplicates, 3);
    assert_eq!(stats.torn_lines, 1);
    // `w` has no trajectory in its input.
    assert_eq!(stats.missing_trajectories, 1);
    let expected: BTreeMap<String, usize> =
        [("ok".to_string(), 4), ("failed".to_string(), 1)].into();
    assert_eq!(stats.by_status, expected);

    // y (ok in a), w, then b's line order: z (later), x (ok), u.
    let results = read_lines(&out.join("results.jsonl"));
    let got: Vec<(&str, &str)> = results
        .iter()
        .map(|r| (r["id"].as_str().unwrap(), r["status"].as_str().unwrap()))
        .collect();
    assert_eq!(
        got,
        [
            ("y", "ok"),
            ("w", "ok"),
            ("z", "failed"),
            ("x", "ok"),
            ("u", "ok")
        ]
    );
    let tags: Vec<Value> = read_lines(&out.join("trajectories.jsonl"))
        .iter()
        .map(|t| t["messages"][0]["content"].clone())
        .collect();
    assert_eq!(tags, ["a-y", "b-z", "b-x", "b-u"]);

    assert_eq!(
        std::fs::read_to_string(out.join("manifest.toml")).unwrap(),
        "# a\n"
    );
    assert_eq!(
        std::fs::read(out.join("fingerprint.json")).unwrap(),
        std::fs::read(a.join("fingerprint.json")).unwrap()
    );
    let summary: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("merge.json")).unwrap()).unwrap();
    assert_eq!(summary["tasks"], 5);
    assert_eq!(summary["duplicates"], 3);
    assert_eq!(summary["by_status"], json!({"failed": 1, "ok": 4}));
    assert_eq!(summary["inputs"].as_array().unwrap().len(), 2);
    // No temporary file is left behind.
    let names: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().all(|n| !n.starts_with(".merge-")), "{names:?}");

    // The merged directory is now a finished run: merging into it again
    // is refused.
    let err = merge(&out, &[a, b]).unwrap_err().to_string();
    assert!(
        err.contains("already holds a non-empty results.jsonl"),
        "{err}"
    );
}

#[test]
fn refuses_inputs_of_different_jobs_naming_the_parts() {
    let root = tempfile::tempdir().unwrap();
    let a = run_dir(root.path(), "a", "m1", &[result("x", "ok", T1)], &[]);
    let b = run_dir(root.path(), "b", "m2", &[result("y", "ok", T1)], &[]);
    let out = root.path().join("out");
    let err = merge(&out, &[a, b]).unwrap_err().to_string();
    assert!(err.contains("fingerprint parts differ: model"), "{err}");
    assert!(err.contains("/a`") && err.contains("/b`"), "{err}");
    assert!(!out.join("results.jsonl").exists());
}

#[test]
fn refuses_an_input_without_fingerprint() {
    let root = tempfile::tempdir().unwrap();
    let a = run_dir(root.path(), "a", "m", &[result("x", "ok", T1)], &[]);
    let b = run_dir(root.path(), "b", "m", &[result("y", "ok", T1)], &[]);
    std::fs::remove_file(b.join("fingerprint.json")).unwrap();
    let err = merge(&root.path().join("out"), &[a, b])
        .unwrap_err()
        .to_string();
    assert!(err.contains("/b` has no fingerprint.json"), "{err}");
}

#[test]
fn refuses_an_out_directory_with_results() {
    let root = tempfile::tempdir().unwrap();
    let a = run_dir(root.path(), "a", "m", &[result("x", "ok", T1)], &[]);
    let out = root.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("results.jsonl"), "{\"id\":\"old\"}\n").unwrap();
    let err = merge(&out, &[a]).unwrap_err();
    assert!(matches!(err, MergeError::OutNotEmpty(_)), "{err}");
    assert_eq!(
        std::fs::read_to_string(out.join("results.jsonl")).unwrap(),
        "{\"id\":\"old\"}\n"
    );
}

#[test]
fn an_empty_results_file_in_out_is_overwritten() {
    let root = tempfile::tempdir().unwrap();
    let a = run_dir(
        root.path(),
        "a",
        "m",
        &[result("x", "ok", T1)],
        &[traj("x", "t")],
    );
    let out = root.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("results.jsonl"), "").unwrap();
    let stats = merge(&out, &[a]).unwrap();
    assert_eq!((stats.tasks, stats.duplicates), (1, 0));
    assert_eq!(read_lines(&out.join("results.jsonl")).len(), 1);
}

#[test]
fn a_duplicate_without_a_valid_finished_at_is_an_error_naming_its_line() {
    let root = tempfile::tempdir().unwrap();
    let a = run_dir(root.path(), "a", "m", &[result("x", "failed", T1)], &[]);
    let b = run_dir(
        root.path(),
        "b",
        "m",
        &[result("x", "failed", "yesterday")],
        &[],
    );
    let err = merge(&root.path().join("out"), &[a, b])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("b/results.jsonl:1: expected `finished_at`"),
        "{err}"
    );
}

#[test]
fn external_agents_calls_come_from_the_input_whose_record_is_kept() {
    let root = tempfile::tempdir().unwrap();
    let a = run_dir(
        root.path(),
        "a",
        "m",
        &[result("x", "failed", T1), result("y", "ok", T1)],
        &[traj("x", "a"), traj("y", "a")],
    );
    let b = run_dir(
        root.path(),
        "b",
        "m",
        &[result("x", "ok", T2)],
        &[traj("x", "b")],
    );
    let call = |id: &str, tag: &str| format!("{}\n", json!({"id": id, "seq": 1, "tag": tag}));
    std::fs::write(
        a.join("calls.jsonl"),
        call("x", "a") + &call("y", "a") + "{\"id\": \"x\", \"tor",
    )
    .unwrap();
    std::fs::write(b.join("calls.jsonl"), call("x", "b")).unwrap();
    let out = root.path().join("out");
    merge(&out, &[a, b]).unwrap();
    let tags: Vec<(String, String)> = read_lines(&out.join("calls.jsonl"))
        .iter()
        .map(|c| {
            (
                c["id"].as_str().unwrap().into(),
                c["tag"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        tags,
        [("y".to_string(), "a".to_string()), ("x".into(), "b".into())]
    );
}
