//! Reading a run directory into a `Report`.
//!
//! The files are read tolerantly because a run can stop at any instant:
//! unknown fields are ignored, a missing `summary.json` or `turns.jsonl`
//! only narrows what can be said, and the last line of a JSONL file may be
//! cut by a crash mid-write. Anything else malformed is an error with the
//! file and line, because silently skipping it would make the counts lie.
//! Everything is opened read-only: reporting never changes the directory,
//! and works on a run that is still going.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

use crate::journal::{lock_holder, read_final, Finals, RunInfo, RUN_INFO};

use super::leaks::leak_report;
use super::model::{
    FailureReason, Percentiles, Report, ReportError, ResultLine, RunState, SummaryFile, Tokens,
    TornLine,
};
use super::rewards::{phase_times, rewards};

/// Failure reasons kept in the report; the long tail is rarely actionable.
const TOP_REASONS: usize = 5;
/// A reason is cut to this many characters so one huge stack trace cannot
/// swamp the report.
const REASON_CHARS: usize = 120;

/// Reads the run directory `dir` into a report.
pub fn analyze(dir: &Path) -> Result<Report, ReportError> {
    if !dir.is_dir() {
        return Err(ReportError::MissingDir(dir.to_path_buf()));
    }
    let results_path = dir.join("results.jsonl");
    let summary_path = dir.join("summary.json");
    let turns_path = dir.join("turns.jsonl");
    let has_results = results_path.is_file();
    let has_summary = summary_path.is_file();
    if !has_results && !has_summary {
        return Err(ReportError::NotRunDir(dir.to_path_buf()));
    }

    let summary: Option<SummaryFile> = if has_summary {
        Some(read_json(&summary_path)?)
    } else {
        None
    };
    let run_path = dir.join(RUN_INFO);
    let run: Option<RunInfo> = if run_path.is_file() {
        Some(read_json(&run_path)?)
    } else {
        None
    };
    let pid = lock_holder(dir);
    let state = match (&pid, &summary) {
        (Some(_), _) => RunState::Running,
        (None, Some(s)) if describes_latest(s, run.as_ref()) => RunState::Finished,
        (None, _) => RunState::Stopped,
    };
    // A summary of an earlier run says nothing about the latest one's
    // leaks, wall time or exit.
    let summary = summary.map(|s| match state {
        RunState::Finished => s,
        _ => SummaryFile {
            name: s.name,
            total_tasks: s.total_tasks,
            ..SummaryFile::default()
        },
    });

    let mut torn_lines = Vec::new();
    let mut torn = |file: &str, f: &Finals| {
        torn_lines.extend(f.torn_at().map(|line| TornLine {
            file: file.into(),
            line: line as u64,
        }))
    };
    let (finals, result_lines) = if has_results {
        let f = read_final(&results_path)?;
        torn("results.jsonl", &f);
        let mut reader = f.reader()?;
        let records = f
            .in_line_order()
            .into_iter()
            .map(|e| {
                serde_json::from_value::<ResultLine>(reader.value(e)?)
                    .map_err(|err| f.error_at(e, format!("not a result record: {err}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        (records, f.lines() as u64)
    } else {
        (Vec::new(), 0)
    };

    let mut in_flight = 0;
    if turns_path.is_file() {
        let done: HashSet<&str> = finals.iter().map(|r| r.id.as_str()).collect();
        let turns = read_final(&turns_path)?;
        torn("turns.jsonl", &turns);
        in_flight = turns
            .entries()
            .iter()
            .filter(|t| !done.contains(t.id.as_str()))
            .count();
    }

    let summary = summary.unwrap_or_default();
    Ok(Report {
        name: summary.name.clone().unwrap_or_else(|| dir_name(dir)),
        dir: dir.to_path_buf(),
        state,
        pid,
        started_at: run.as_ref().map(|r| r.started_at.clone()),
        total_tasks: run.map(|r| r.total_tasks).or(summary.total_tasks),
        finished: finals.len() as u64,
        result_lines,
        counts: count_statuses(&finals),
        failure_reasons: failure_reasons(&finals),
        quarantined: finals
            .iter()
            .filter(|r| r.status == crate::journal::Status::WorkspaceCrash.as_str())
            .map(|r| r.id.clone())
            .collect(),
        tokens: tokens(&finals),
        retries: finals.iter().map(|r| r.usage.retries).sum(),
        invalid_tool_calls: finals
            .iter()
            .filter_map(|r| r.usage.invalid_tool_calls)
            .reduce(|a, b| a + b),
        steps: percentiles(finals.iter().map(|r| r.steps).collect(), u64::cmp),
        duration_s: percentiles(
            finals.iter().map(|r| r.duration_s).collect(),
            f64::total_cmp,
        ),
        rewards: rewards(&finals),
        phases: phase_times(&finals),
        leaks: leak_report(state, has_summary, summary.leaks),
        in_flight: in_flight as u64,
        torn_lines_ignored: torn_lines.len() as u64,
        torn_lines,
        stopped_because: summary.stopped_because,
        run_duration_s: summary.duration_s,
        exit_code: summary.exit_code,
        llm: summary.llm,
        containers: summary.metrics.and_then(|m| m.get("containers").cloned()),
    })
}

/// Reads `summary.json` or `run.json`. Both are written atomically (temp
/// file, then rename), so unlike the JSONL files a broken one is not a
/// crash artefact: it is an error.
fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, ReportError> {
    let text = std::fs::read(path).map_err(|source| ReportError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_slice(&text).map_err(|source| ReportError::Summary {
        path: path.to_path_buf(),
        source,
    })
}

/// Whether `summary` is the latest run's: it finished after that run
/// started (`run.json` is written as a run starts, the summary as it
/// ends). Without `run.json` (older directories) the summary is all there
/// is.
fn describes_latest(summary: &SummaryFile, run: Option<&RunInfo>) -> bool {
    let Some(run) = run else {
        return true;
    };
    let time = |s: Option<&str>| s.and_then(|s| humantime::parse_rfc3339(s).ok());
    match (
        time(summary.finished_at.as_deref()),
        time(Some(&run.started_at)),
    ) {
        (Some(end), Some(start)) => end >= start,
        _ => false,
    }
}

pub fn dir_name(dir: &Path) -> String {
    // `.` and `..` have no file name of their own; the absolute path does.
    let named = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .or_else(|| {
            std::fs::canonicalize(dir)
                .ok()?
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
        });
    named.unwrap_or_else(|| dir.display().to_string())
}

fn count_statuses(finals: &[ResultLine]) -> BTreeMap<String, u64> {
    let mut counts = BTreeMap::new();
    for r in finals {
        *counts.entry(r.status.clone()).or_default() += 1;
    }
    counts
}

fn failure_reasons(finals: &[ResultLine]) -> Vec<FailureReason> {
    // (count, example id, first position) per normalised reason; the first
    // position breaks ties so the order does not depend on hashing.
    let mut groups: HashMap<String, (u64, &str, usize)> = HashMap::new();
    for (i, r) in finals.iter().enumerate().filter(|(_, r)| r.status != "ok") {
        let reason = match r.error.as_deref() {
            Some(e) if !e.trim().is_empty() => normalize_reason(e),
            _ => format!("(no error recorded; status {})", r.status),
        };
        groups.entry(reason).or_insert((0, r.id.as_str(), i)).0 += 1;
    }
    let mut groups: Vec<_> = groups.into_iter().collect();
    groups.sort_by(|a, b| b.1 .0.cmp(&a.1 .0).then(a.1 .2.cmp(&b.1 .2)));
    groups
        .into_iter()
        .take(TOP_REASONS)
        .map(|(reason, (count, id, _))| FailureReason {
            reason,
            count,
            example_id: id.to_string(),
        })
        .collect()
}

/// Masks what differs between two occurrences of the same failure (ports,
/// pids, byte counts, durations) so they group together: every run of
/// digits becomes `N`, whitespace (newlines of a multi-line error included)
/// becomes one space, and the result is cut to `REASON_CHARS` characters.
fn normalize_reason(error: &str) -> String {
    let mut out = String::new();
    let mut in_digits = false;
    let mut in_space = false;
    for c in error.trim().chars() {
        if c.is_ascii_digit() {
            if !in_digits {
                out.push('N');
            }
            in_digits = true;
            in_space = false;
        } else if c.is_whitespace() {
            if !in_space {
                out.push(' ');
            }
            in_space = true;
            in_digits = false;
        } else {
            out.push(c);
            in_digits = false;
            in_space = false;
        }
    }
    match out.char_indices().nth(REASON_CHARS) {
        Some((cut, _)) => out[..cut].trim_end().to_string(),
        None => out,
    }
}

fn tokens(finals: &[ResultLine]) -> Tokens {
    let mut t = Tokens::default();
    for r in finals {
        t.prompt += r.usage.prompt_tokens;
        t.completion += r.usage.completion_tokens;
        t.total += r
            .usage
            .total_tokens
            .unwrap_or(r.usage.prompt_tokens + r.usage.completion_tokens);
    }
    if !finals.is_empty() {
        let n = finals.len() as f64;
        t.mean_prompt = t.prompt as f64 / n;
        t.mean_completion = t.completion as f64 / n;
        t.mean_total = t.total as f64 / n;
    }
    t
}

/// Sorts `values` and takes p50, p90, p99 and the maximum; `None` if empty.
pub(super) fn percentiles<T: Copy>(
    mut values: Vec<T>,
    cmp: impl Fn(&T, &T) -> std::cmp::Ordering,
) -> Option<Percentiles<T>> {
    values.sort_by(cmp);
    Some(Percentiles {
        p50: nearest_rank(&values, 50)?,
        p90: nearest_rank(&values, 90)?,
        p99: nearest_rank(&values, 99)?,
        max: nearest_rank(&values, 100)?,
    })
}

/// The nearest-rank `pct` percentile of `sorted` (ascending): the smallest
/// value with at least `pct`% of the values at or below it. It is always
/// one of the values, never an interpolation, so "p90 steps" is a step
/// count some task really took.
///
/// The rank is computed in integers: `ceil(0.9 * 10)` in floating point is
/// 10, not 9, because 0.9 * 10 is 9.000000000000002.
fn nearest_rank<T: Copy>(sorted: &[T], pct: u32) -> Option<T> {
    let n = sorted.len();
    if n == 0 {
        return None;
    }
    let pct = pct.clamp(1, 100) as usize;
    let rank = (pct * n).div_ceil(100).clamp(1, n);
    Some(sorted[rank - 1])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(id: &str, status: &str, steps: u64, error: Option<&str>) -> String {
        serde_json::json!({
            "id": id, "status": status, "final": null, "steps": steps,
            "usage": {"prompt_tokens": 100, "completion_tokens": 10, "total_tokens": 110, "retries": 1},
            "attempt": 1, "started_at": "2024-05-01T10:00:00Z",
            "finished_at": "2024-05-01T10:00:02Z", "duration_s": steps as f64 * 0.5,
            "error": error, "extra_field": [1, 2]
        })
        .to_string()
    }

    fn run_dir(results: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("results.jsonl"), results).unwrap();
        dir
    }

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<u64> = (1..=10).collect();
        assert_eq!(nearest_rank(&v, 50), Some(5));
        // The float formula gives 10 here (0.9 * 10 rounds up past 9).
        assert_eq!(nearest_rank(&v, 90), Some(9));
        assert_eq!(nearest_rank(&v, 99), Some(10));
        assert_eq!(nearest_rank(&v, 100), Some(10));
        assert_eq!(nearest_rank(&[7u64], 50), Some(7));
        assert_eq!(nearest_rank::<u64>(&[], 50), None);
        let hundred: Vec<u64> = (1..=100).collect();
        assert_eq!(nearest_rank(&hundred, 99), Some(99));
        assert_eq!(nearest_rank(&hundred, 50), Some(50));
        let p = percentiles(vec![3.0, 1.0, 2.0], f64::total_cmp).unwrap();
        assert_eq!((p.p50, p.p90, p.max), (2.0, 3.0, 3.0));
    }

    #[test]
    fn reasons_mask_digits_and_are_cut() {
        assert_eq!(
            normalize_reason("HTTP 503 after 3 tries\n  at port 8080"),
            "HTTP N after N tries at port N"
        );
        let long = format!("é{}", "x".repeat(300));
        let cut = normalize_reason(&long);
        assert_eq!(cut.chars().count(), REASON_CHARS);
        assert!(cut.starts_with('é'));
    }

    #[test]
    fn last_line_for_an_id_wins() {
        let text = [
            result("a", "failed", 2, Some("boom 1")),
            result("b", "ok", 4, None),
            result("a", "ok", 6, None),
        ]
        .join("\n")
            + "\n";
        let dir = run_dir(&text);
        let r = analyze(dir.path()).unwrap();
        assert_eq!(r.finished, 2);
        assert_eq!(r.result_lines, 3);
        assert_eq!(r.counts.get("ok"), Some(&2));
        assert_eq!(r.counts.get("failed"), None);
        assert!(r.failure_reasons.is_empty());
        assert_eq!(r.tokens.total, 220);
        assert_eq!(r.retries, 2);
        assert_eq!(r.steps.unwrap().max, 6);
        assert_eq!(r.torn_lines_ignored, 0);
    }

    #[test]
    fn torn_last_line_is_ignored() {
        let text = format!(
            "{}\n{}\n{}",
            result("a", "ok", 1, None),
            result("b", "timeout", 3, Some("deadline of 300s passed")),
            &result("c", "ok", 2, None)[..40]
        );
        let dir = run_dir(&text);
        let r = analyze(dir.path()).unwrap();
        assert_eq!(r.finished, 2);
        assert_eq!(r.torn_lines_ignored, 1);
        assert_eq!(
            r.torn_lines,
            vec![TornLine {
                file: "results.jsonl".into(),
                line: 3
            }]
        );
        assert_eq!(
            r.failure_reasons,
            vec![FailureReason {
                reason: "deadline of Ns passed".into(),
                count: 1,
                example_id: "b".into()
            }]
        );
        assert!(r.render().contains("torn lines ignored: 1"));
    }

    #[test]
    fn torn_line_cut_inside_a_character_is_ignored() {
        let full = result("c", "ok", 2, Some("é"));
        let cut = full.find('é').unwrap() + 1;
        let mut bytes = format!("{}\n", result("a", "ok", 1, None)).into_bytes();
        bytes.extend_from_slice(&full.as_bytes()[..cut]);
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("results.jsonl"), bytes).unwrap();
        let r = analyze(dir.path()).unwrap();
        assert_eq!((r.finished, r.torn_lines_ignored), (1, 1));
    }

    #[test]
    fn bad_middle_line_is_an_error_with_its_line_number() {
        let text = format!(
            "{}\nnot json\n{}\n",
            result("a", "ok", 1, None),
            result("b", "ok", 1, None)
        );
        let dir = run_dir(&text);
        let err = analyze(dir.path()).unwrap_err();
        assert!(matches!(err, ReportError::Journal(_)), "{err}");
        assert!(err.to_string().contains("results.jsonl:2:"), "{err}");
    }

    #[test]
    fn wrong_shape_is_an_error_even_on_the_last_line() {
        let text = format!("{}\n{{\"id\": \"x\"}}\n", result("a", "ok", 1, None));
        let dir = run_dir(&text);
        let err = analyze(dir.path()).unwrap_err();
        assert!(err.to_string().contains("results.jsonl:2:"), "{err}");
    }

    #[test]
    fn not_a_run_directory() {
        let dir = tempfile::tempdir().unwrap();
        let err = analyze(dir.path()).unwrap_err();
        assert!(matches!(err, ReportError::NotRunDir(_)));
        assert!(err.to_string().contains("not a run directory"));
        let missing = dir.path().join("nope");
        let err = analyze(&missing).unwrap_err();
        assert!(err.to_string().contains("does not exist"), "{err}");
    }

    #[test]
    fn in_flight_and_missing_summary() {
        let dir = run_dir(&format!("{}\n", result("a", "ok", 1, None)));
        write_turns(dir.path(), &[("a", 1), ("b", 1), ("b", 2), ("c", 1)]);
        let r = analyze(dir.path()).unwrap();
        assert_eq!(r.in_flight, 2);
        assert_eq!(r.state, RunState::Stopped);
        assert!(r.leaks.verdict.starts_with("unknown (no summary.json"));
        assert_eq!(r.total_tasks, None);
        assert!(r
            .render()
            .contains("in flight when the run stopped (partial trajectories kept): 2"));
    }

    #[test]
    fn summary_supplies_name_total_and_leaks() {
        let dir = run_dir(&format!(
            "{}\n{}\n",
            result("a", "failed", 1, Some("tool `shell` exited 127")),
            result("b", "failed", 1, Some("tool `shell` exited 2"))
        ));
        let summary = serde_json::json!({
            "name": "nightly <eval>", "total_tasks": 5, "duration_s": 12.5,
            "stopped_because": "ctrl-c", "exit_code": 130,
            "leaks": {"verdict": "leak", "findings": [
                {"rule": "orphan_session", "at_s": 4.0, "detail": "convoy-7 has no owner"}
            ], "reaped": 0, "stray_sessions": ["convoy-7"], "stray_processes": []},
            "llm": {"model": "m", "requests": 9}
        });
        std::fs::write(dir.path().join("summary.json"), summary.to_string()).unwrap();
        let r = analyze(dir.path()).unwrap();
        assert_eq!(r.name, "nightly <eval>");
        assert_eq!(r.total_tasks, Some(5));
        assert_eq!(r.leaks.verdict, "leak");
        assert_eq!(r.leaks.findings.len(), 1);
        assert_eq!(r.failure_reasons[0].count, 2);
        assert_eq!(r.failure_reasons[0].example_id, "a");
        assert_eq!(r.stopped_because.as_deref(), Some("ctrl-c"));
        let text = r.render();
        assert!(text.contains("orphan_session at 4s"), "{text}");
        assert!(text.contains("stopped: ctrl-c"), "{text}");
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["counts"]["failed"], 2);
    }

    #[test]
    fn an_unknown_verdict_prints_why() {
        let dir = run_dir(&format!("{}\n", result("a", "ok", 1, None)));
        let summary = serde_json::json!({"name": "job", "exit_code": 0, "leaks": {
            "verdict": "unknown", "why": ["the workspace could not be listed at the end: gone"],
            "findings": [], "reaped": 0, "stray_sessions": [], "stray_processes": []}});
        std::fs::write(dir.path().join("summary.json"), summary.to_string()).unwrap();
        let text = analyze(dir.path()).unwrap().render();
        assert!(
            text.contains("leaks: unknown\n  not checked: the workspace could not be listed"),
            "{text}"
        );
    }

    /// `turns.jsonl` with one partial turn per (id, turn).
    fn write_turns(dir: &Path, turns: &[(&str, u32)]) {
        let text: String = turns
            .iter()
            .map(|(id, turn)| {
                let t = serde_json::json!({"id": id, "attempt": 1, "turn": turn, "partial": true,
                                           "messages": []});
                format!("{t}\n")
            })
            .collect();
        std::fs::write(dir.join("turns.jsonl"), text).unwrap();
    }

    fn write_run_info(dir: &Path, started_at: &str, total: u64) {
        let info = serde_json::json!({"pid": 1, "started_at": started_at, "total_tasks": total});
        std::fs::write(dir.join(RUN_INFO), info.to_string()).unwrap();
    }

    #[test]
    fn a_summary_of_an_earlier_run_is_not_the_latest_runs_verdict() {
        let dir = run_dir(&format!("{}\n", result("a", "ok", 1, None)));
        let summary = serde_json::json!({
            "name": "job", "total_tasks": 3, "finished_at": "2024-05-01T10:00:05.000Z",
            "exit_code": 1, "leaks": {"verdict": "clean"}
        });
        std::fs::write(dir.path().join("summary.json"), summary.to_string()).unwrap();
        // The latest run started after that summary was written, and never
        // wrote its own.
        write_run_info(dir.path(), "2024-05-01T11:00:00.000Z", 7);
        let r = analyze(dir.path()).unwrap();
        assert_eq!(r.state, RunState::Stopped);
        assert_eq!((r.total_tasks, r.exit_code), (Some(7), None));
        assert!(r
            .leaks
            .verdict
            .starts_with("unknown (the latest run did not finish"));
        assert!(r
            .render()
            .contains("state: stopped before its end, started 2024-05-01T11:00:00.000Z"));
        // Once it writes its summary, the summary is the latest run's.
        write_run_info(dir.path(), "2024-05-01T10:00:00.000Z", 7);
        let r = analyze(dir.path()).unwrap();
        assert_eq!(r.state, RunState::Finished);
        assert_eq!((r.exit_code, r.leaks.verdict.as_str()), (Some(1), "clean"));
    }

    #[test]
    fn a_held_lock_is_a_running_run_counted_as_done_and_in_flight() {
        use nix::fcntl::{Flock, FlockArg};
        let dir = run_dir(&format!("{}\n", result("a", "ok", 1, None)));
        write_turns(dir.path(), &[("a", 1), ("b", 1)]);
        write_run_info(dir.path(), "2024-05-01T11:00:00.000Z", 10);
        let lock = dir.path().join("convoy.lock");
        std::fs::write(&lock, "4242\n").unwrap();
        let file = std::fs::OpenOptions::new().write(true).open(&lock).unwrap();
        let held = Flock::lock(file, FlockArg::LockExclusiveNonblock).unwrap();
        let r = analyze(dir.path()).unwrap();
        assert_eq!(r.state, RunState::Running);
        assert_eq!(r.pid.as_deref(), Some("4242"));
        assert_eq!((r.finished, r.in_flight, r.total_tasks), (1, 1, Some(10)));
        assert!(r.leaks.verdict.starts_with("not known yet"));
        let text = r.render();
        assert!(text.contains("state: running (pid 4242"), "{text}");
        assert!(
            text.contains("tasks finished: 1 of 10 (1 result lines); in flight: 1"),
            "{text}"
        );
        drop(held);
        assert_eq!(analyze(dir.path()).unwrap().state, RunState::Stopped);
    }
}
