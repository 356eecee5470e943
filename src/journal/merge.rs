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
#[path = "merge_tests.rs"]
mod tests;
