//! Merging run directories of one job (typically its `--shard I/N` runs)
//! into one run directory, as if a single run had produced it.
//!
//! Inputs must share their `fingerprint.json` parts: directories of
//! different prompts, models or task sets would merge into a data set that
//! no single job describes. An id found in several inputs (a shard re-run
//! elsewhere, overlapping retries) keeps one record: an `ok` one if any,
//! else the one that finished last.
//!
//! Records are copied byte for byte. Every output file is written under a
//! temporary name and renamed into place, `results.jsonl` last: a directory
//! whose `results.jsonl` is present is complete, and one without it is
//! treated as empty by the next merge or run, so a crash never leaves
//! something that looks like a finished merge.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde_json::{json, Map, Value};
use thiserror::Error;

use super::atomic::AtomicFile;
use super::read::{read_final, Final, Finals, JournalReadError};

#[derive(Debug, Error)]
pub enum MergeError {
    #[error("merge needs at least one input run directory")]
    NoInputs,
    #[error("`{}` already holds a non-empty results.jsonl; merge into a new directory", .0.display())]
    OutNotEmpty(PathBuf),
    #[error("`{}` has no fingerprint.json, so it cannot be checked to come from the same job", .0.display())]
    MissingFingerprint(PathBuf),
    #[error("invalid fingerprint `{}`: {message}", path.display())]
    BadFingerprint { path: PathBuf, message: String },
    #[error(
        "`{}` and `{}` come from different jobs (fingerprint parts differ: {}); only runs of one job can be merged",
        first.display(), other.display(), parts.join(", ")
    )]
    FingerprintMismatch {
        first: PathBuf,
        other: PathBuf,
        parts: Vec<String>,
    },
    #[error(transparent)]
    Read(#[from] JournalReadError),
    #[error("cannot write `{}`: {source}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn write_err(path: &Path) -> impl FnOnce(std::io::Error) -> MergeError + '_ {
    move |source| MergeError::Write {
        path: path.to_path_buf(),
        source,
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MergeStats {
    /// Tasks in the merged directory.
    pub tasks: usize,
    /// Records dropped because another input had the same id.
    pub duplicates: usize,
    /// Merged tasks per final status.
    pub by_status: BTreeMap<String, usize>,
    /// Chosen records whose input had no trajectory for them: the result
    /// is merged, the trajectory cannot be.
    pub missing_trajectories: usize,
    /// Torn last lines ignored, over all inputs' files.
    pub torn_lines: usize,
}

/// One input directory's final records.
struct Input {
    dir: PathBuf,
    results: Finals,
    trajectories: Finals,
}

/// The record currently kept for an id.
struct Choice {
    input: usize,
    /// Index into the input's `results.entries()`.
    entry: usize,
    status: String,
    finished_at: Option<String>,
}

/// Merges the run directories `inputs` into `out` (created if needed).
pub fn merge(out: &Path, inputs: &[PathBuf]) -> Result<MergeStats, MergeError> {
    if inputs.is_empty() {
        return Err(MergeError::NoInputs);
    }
    let out_results = out.join("results.jsonl");
    if std::fs::metadata(&out_results).is_ok_and(|m| m.len() > 0) {
        return Err(MergeError::OutNotEmpty(out.to_path_buf()));
    }
    // Fingerprints first: refusing is cheap, reading the journals is not.
    let fingerprint = read_fingerprint(&inputs[0])?;
    for dir in &inputs[1..] {
        let other = read_fingerprint(dir)?;
        let parts = differing_parts(&fingerprint.1, &other.1);
        if !parts.is_empty() {
            return Err(MergeError::FingerprintMismatch {
                first: inputs[0].clone(),
                other: dir.clone(),
                parts,
            });
        }
    }

    let inputs = inputs
        .iter()
        .map(|dir| -> Result<Input, MergeError> {
            Ok(Input {
                dir: dir.clone(),
                results: read_final(&dir.join("results.jsonl"))?,
                trajectories: read_final(&dir.join("trajectories.jsonl"))?,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;

    let mut stats = MergeStats::default();
    let mut chosen: Vec<Choice> = Vec::new();
    let mut slot: HashMap<&str, usize> = HashMap::new();
    for (i, input) in inputs.iter().enumerate() {
        stats.torn_lines += input.results.torn_lines() + input.trajectories.torn_lines();
        let mut reader = input.results.reader()?;
        for (k, entry) in input.results.entries().iter().enumerate() {
            let record = reader.value(entry)?;
            let candidate = Choice {
                input: i,
                entry: k,
                status: input
                    .results
                    .str_field(entry, &record, "status")?
                    .to_string(),
                finished_at: record
                    .get("finished_at")
                    .and_then(Value::as_str)
                    .map(str::to_string),
            };
            match slot.get(entry.id.as_str()) {
                None => {
                    slot.insert(&entry.id, chosen.len());
                    chosen.push(candidate);
                }
                Some(&s) => {
                    stats.duplicates += 1;
                    if better(&inputs, &candidate, &chosen[s])? {
                        chosen[s] = candidate;
                    }
                }
            }
        }
    }
    // Input order, then line order: the same inputs always merge into the
    // same bytes.
    let line = |c: &Choice| inputs[c.input].results.entries()[c.entry].line;
    chosen.sort_by_key(|c| (c.input, line(c)));

    std::fs::create_dir_all(out).map_err(write_err(out))?;
    let out_trajectories = out.join("trajectories.jsonl");
    let mut results_tmp = AtomicFile::create(&out_results).map_err(write_err(&out_results))?;
    let mut trajectories_tmp =
        AtomicFile::create(&out_trajectories).map_err(write_err(&out_trajectories))?;
    {
        let mut readers = inputs
            .iter()
            .map(|input| Ok((input.results.reader()?, input.trajectories.reader()?)))
            .collect::<Result<Vec<_>, JournalReadError>>()?;
        let mut results_w = BufWriter::with_capacity(256 * 1024, results_tmp.file());
        let mut trajectories_w = BufWriter::with_capacity(256 * 1024, trajectories_tmp.file());
        for c in &chosen {
            let input = &inputs[c.input];
            let entry = &input.results.entries()[c.entry];
            let (results_r, trajectories_r) = &mut readers[c.input];
            write_line(&mut results_w, results_r.raw(entry)?).map_err(write_err(&out_results))?;
            match input.trajectories.get(&entry.id) {
                Some(t) => write_line(&mut trajectories_w, trajectories_r.raw(t)?)
                    .map_err(write_err(&out_trajectories))?,
                None => stats.missing_trajectories += 1,
            }
            *stats.by_status.entry(c.status.clone()).or_default() += 1;
        }
        results_w.flush().map_err(write_err(&out_results))?;
        trajectories_w
            .flush()
            .map_err(write_err(&out_trajectories))?;
    }
    stats.tasks = chosen.len();

    let manifest_path = inputs[0].dir.join("manifest.toml");
    let manifest = std::fs::read(&manifest_path).map_err(|source| JournalReadError::Io {
        path: manifest_path,
        source,
    })?;
    let summary = json!({
        "inputs": inputs.iter().map(|i| i.dir.display().to_string()).collect::<Vec<_>>(),
        "tasks": stats.tasks,
        "duplicates": stats.duplicates,
        "by_status": stats.by_status,
        "missing_trajectories": stats.missing_trajectories,
        "torn_lines": stats.torn_lines,
    });
    let summary = serde_json::to_string_pretty(&summary).expect("a json value serializes") + "\n";

    let mut files = vec![trajectories_tmp];
    if let Some(calls) = merge_calls(out, &inputs, &chosen)? {
        files.push(calls);
    }
    for (name, bytes) in [
        ("manifest.toml", manifest.as_slice()),
        ("fingerprint.json", fingerprint.0.as_slice()),
        ("merge.json", summary.as_bytes()),
    ] {
        let path = out.join(name);
        let mut tmp = AtomicFile::create(&path).map_err(write_err(&path))?;
        tmp.file().write_all(bytes).map_err(write_err(&path))?;
        files.push(tmp);
    }
    // Last, see the module docs.
    files.push(results_tmp);
    for tmp in files {
        let path = tmp.path().to_path_buf();
        tmp.commit().map_err(write_err(&path))?;
    }
    Ok(stats)
}

/// External agents' model calls (`calls.jsonl`): each kept task's, from
/// the input whose record was kept, in that input's order. `None` when no
/// input has any.
fn merge_calls(
    out: &Path,
    inputs: &[Input],
    chosen: &[Choice],
) -> Result<Option<AtomicFile>, MergeError> {
    use std::io::BufRead;
    let sources: Vec<PathBuf> = inputs.iter().map(|i| i.dir.join(super::CALLS)).collect();
    if !sources.iter().any(|p| p.exists()) {
        return Ok(None);
    }
    let from: HashMap<&str, usize> = chosen
        .iter()
        .map(|c| {
            (
                inputs[c.input].results.entries()[c.entry].id.as_str(),
                c.input,
            )
        })
        .collect();
    let path = out.join(super::CALLS);
    let mut tmp = AtomicFile::create(&path).map_err(write_err(&path))?;
    {
        let mut w = BufWriter::with_capacity(256 * 1024, tmp.file());
        for (i, source) in sources.iter().enumerate() {
            let Ok(file) = std::fs::File::open(source) else {
                continue;
            };
            for line in std::io::BufReader::new(file).lines() {
                let line = line.map_err(|source_err| JournalReadError::Io {
                    path: source.clone(),
                    source: source_err,
                })?;
                // A torn last line (a killed run) has no id to keep it by.
                let id = serde_json::from_str::<Value>(&line)
                    .ok()
                    .and_then(|v| v.get("id").and_then(Value::as_str).map(str::to_string));
                if id.is_some_and(|id| from.get(id.as_str()) == Some(&i)) {
                    write_line(&mut w, line.as_bytes()).map_err(write_err(&path))?;
                }
            }
        }
        w.flush().map_err(write_err(&path))?;
    }
    Ok(Some(tmp))
}

/// Reads `dir/fingerprint.json`: its bytes, to copy, and its `parts`.
fn read_fingerprint(dir: &Path) -> Result<(Vec<u8>, Map<String, Value>), MergeError> {
    let path = dir.join("fingerprint.json");
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(MergeError::MissingFingerprint(dir.to_path_buf()))
        }
        Err(source) => return Err(JournalReadError::Io { path, source }.into()),
    };
    let bad = |message: String| MergeError::BadFingerprint {
        path: path.clone(),
        message,
    };
    let value: Value = serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
    match value.get("parts") {
        Some(Value::Object(parts)) => Ok((bytes, parts.clone())),
        _ => Err(bad("expected an object `parts`".to_string())),
    }
}

/// Names of the parts that differ, including parts only one side has.
fn differing_parts(a: &Map<String, Value>, b: &Map<String, Value>) -> Vec<String> {
    let mut parts: Vec<String> = a
        .iter()
        .filter(|(k, v)| b.get(k.as_str()) != Some(v))
        .map(|(k, _)| k.clone())
        .collect();
    parts.extend(b.keys().filter(|k| !a.contains_key(k.as_str())).cloned());
    parts
}

/// Whether `new` should replace `old`: an `ok` record beats any other;
/// between equals the later `finished_at` wins, and a tie keeps `old`, the
/// earlier input.
fn better(inputs: &[Input], new: &Choice, old: &Choice) -> Result<bool, JournalReadError> {
    let (new_ok, old_ok) = (new.status == "ok", old.status == "ok");
    if new_ok != old_ok {
        return Ok(new_ok);
    }
    Ok(finished_at(inputs, new)? > finished_at(inputs, old)?)
}

fn finished_at(inputs: &[Input], c: &Choice) -> Result<SystemTime, JournalReadError> {
    let results = &inputs[c.input].results;
    let entry: &Final = &results.entries()[c.entry];
    // Parsed rather than compared as text: fractional digits may differ.
    c.finished_at
        .as_deref()
        .and_then(|s| humantime::parse_rfc3339(s).ok())
        .ok_or_else(|| {
            results.error_at(
                entry,
                "expected `finished_at` as an RFC 3339 UTC time, to choose between duplicates",
            )
        })
}

fn write_line(w: &mut impl Write, line: &[u8]) -> std::io::Result<()> {
    w.write_all(line)?;
    w.write_all(b"\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(id: &str, status: &str, finished_at: &str) -> Value {
        json!({"id": id, "status": status, "attempt": 1, "finished_at": finished_at})
    }

    fn traj(id: &str, tag: &str) -> Value {
        json!({"id": id, "messages": [{"role": "user", "content": tag}], "tools": []})
    }

    fn run_dir(
        root: &Path,
        name: &str,
        model: &str,
        results: &[Value],
        trajs: &[Value],
    ) -> PathBuf {
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
            serde_json::from_str(&std::fs::read_to_string(out.join("merge.json")).unwrap())
                .unwrap();
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
}
