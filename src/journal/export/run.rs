//! The export driver: reads the final records of a run directory, filters
//! them (status, reward, best of group: see `select`) and writes one line
//! per task in the chosen format.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};
use thiserror::Error;

pub use super::messages::ArgumentsAs;
use super::messages::{normalise, Counts};
use super::select::{select, Candidate, Dropped, Filters};
use crate::journal::read::{read_final, JournalReadError};
use crate::journal::Status;

/// The shape of each exported line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum ExportFormat {
    /// `{"messages", "tools"}` (TRL, `apply_chat_template`).
    #[default]
    Openai,
    /// `{"conversations", "system", "tools"}` (LLaMA-Factory).
    Sharegpt,
}

/// What to export.
#[derive(Debug, Clone, Default)]
pub struct ExportOptions {
    /// Final statuses to export (`ok`, `failed`, ...); empty exports all.
    pub only: Vec<String>,
    /// Keep only tasks with a reward at least this (unverified tasks have
    /// none and are left out).
    pub min_reward: Option<f64>,
    /// Keep only the highest-reward sample of each group (`tasks.repeat`).
    pub best_of_group: bool,
    /// Keep assistant `reasoning_content`, for training reasoning models.
    pub keep_reasoning: bool,
    /// Keep the trajectory's `convoy` key (token ids and logprobs per
    /// assistant turn) beside `messages`; `openai` format only, as its
    /// message indices hold only where the messages stay as they are.
    pub keep_token_data: bool,
    pub format: ExportFormat,
    /// How tool call arguments are written; `None`: strings for `openai`
    /// (as OpenAI sends them), objects for `sharegpt` (as LLaMA-Factory
    /// reads them).
    pub arguments: Option<ArgumentsAs>,
}

impl ExportOptions {
    fn arguments(&self) -> ArgumentsAs {
        self.arguments.unwrap_or(match self.format {
            ExportFormat::Openai => ArgumentsAs::String,
            ExportFormat::Sharegpt => ArgumentsAs::Object,
        })
    }

    fn filters(&self) -> Filters<'_> {
        Filters {
            only: &self.only,
            min_reward: self.min_reward,
            best_of_group: self.best_of_group,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExportStats {
    /// Lines written.
    pub written: usize,
    /// Tasks whose final status is not in `only`.
    pub skipped_by_status: usize,
    /// Tasks below `min_reward`, or without a reward while it is set.
    pub skipped_by_reward: usize,
    /// Tasks another sample of their group beat (`best_of_group`).
    pub skipped_not_best: usize,
    /// Tasks with a result but no trajectory (skipped).
    pub missing_trajectory: usize,
    /// Tasks whose final trajectory records another attempt than their
    /// final result (exported anyway: the latest trajectory is the best
    /// record of the conversation there is).
    pub attempt_mismatch: usize,
    /// Torn last lines ignored, over both files.
    pub torn_lines: usize,
    /// Tool calls whose arguments were asked for as objects but are not a
    /// JSON object (the model wrote broken JSON): kept as the string.
    pub arguments_kept_as_string: usize,
    /// Tool results whose `tool_call_id` names no call: written without
    /// `name`.
    pub results_without_call: usize,
    /// sharegpt: conversations whose turns do not alternate as
    /// LLaMA-Factory requires (e.g. ending on a tool result), skipped.
    pub not_alternating: usize,
}

impl ExportStats {
    /// The line printed after an export.
    pub fn render(&self) -> String {
        let mut s = format!(
            "exported {} conversations ({} skipped by status, {} without a trajectory",
            self.written, self.skipped_by_status, self.missing_trajectory
        );
        // Only the filters in use are named, so a plain export reads as before.
        if self.skipped_by_reward > 0 {
            s.push_str(&format!(
                ", {} below the minimum reward or not verified",
                self.skipped_by_reward
            ));
        }
        if self.skipped_not_best > 0 {
            s.push_str(&format!(
                ", {} not the best sample of their group",
                self.skipped_not_best
            ));
        }
        if self.not_alternating > 0 {
            s.push_str(&format!(
                ", {} skipped for sharegpt: their turns do not alternate as LLaMA-Factory requires, e.g. they end on a tool result",
                self.not_alternating
            ));
        }
        s.push(')');
        if self.arguments_kept_as_string > 0 {
            s.push_str(&format!(
                "; {} tool calls kept their arguments as a string: not a JSON object \
                 (`datasets` before 5.0 cannot load a file mixing strings and objects there)",
                self.arguments_kept_as_string
            ));
        }
        if self.results_without_call > 0 {
            s.push_str(&format!(
                "; {} tool results answer no call and have no `name`",
                self.results_without_call
            ));
        }
        if self.torn_lines > 0 {
            s.push_str(&format!("; {} torn last lines ignored", self.torn_lines));
        }
        s
    }
}

#[derive(Debug, Error)]
pub enum ExportError {
    #[error("run directory `{}` does not exist", .0.display())]
    MissingDir(PathBuf),
    #[error(transparent)]
    Read(#[from] JournalReadError),
    #[error(
        "unknown status `{status}` in the status filter (expected one of {})",
        expected()
    )]
    UnknownStatus { status: String },
    #[error("--keep-token-data needs --format openai: the token data indexes the messages, which sharegpt merges into other turns")]
    TokenDataFormat,
    #[error("cannot write the export: {0}")]
    Write(std::io::Error),
}

fn expected() -> String {
    Status::ALL.map(Status::as_str).join(", ")
}

/// Writes the training lines of the run directory `dir` to `out`, in the
/// order of the final lines of `results.jsonl`. `out` is buffered here.
pub fn export(
    dir: &Path,
    options: &ExportOptions,
    out: &mut impl Write,
) -> Result<ExportStats, ExportError> {
    // A mistyped status would otherwise export nothing, silently.
    for status in &options.only {
        if !Status::ALL.iter().any(|s| s.as_str() == status) {
            return Err(ExportError::UnknownStatus {
                status: status.clone(),
            });
        }
    }
    if options.keep_token_data && options.format != ExportFormat::Openai {
        return Err(ExportError::TokenDataFormat);
    }
    if !dir.is_dir() {
        return Err(ExportError::MissingDir(dir.to_path_buf()));
    }
    let results = read_final(&dir.join("results.jsonl"))?;
    let trajectories = read_final(&dir.join("trajectories.jsonl"))?;
    let mut stats = ExportStats {
        torn_lines: results.torn_lines() + trajectories.torn_lines(),
        ..ExportStats::default()
    };
    let mut counts = Counts::default();
    let mut result_reader = results.reader()?;
    let mut trajectory_reader = trajectories.reader()?;
    let mut out = BufWriter::with_capacity(256 * 1024, out);

    // The best of a group is known only once all of it was read, so the
    // results (small) are all read before any trajectory (large) is.
    let order = results.in_line_order();
    let mut candidates = Vec::with_capacity(order.len());
    let mut attempts = Vec::with_capacity(order.len());
    for entry in &order {
        let result = result_reader.value(entry)?;
        let status = results.str_field(entry, &result, "status")?;
        let candidate = Candidate::from_result(&entry.id, status, &result)
            .map_err(|message| results.error_at(entry, message))?;
        candidates.push(candidate);
        attempts.push(result.get("attempt").cloned());
    }
    let verdicts = select(&candidates, options.filters());

    for ((entry, verdict), attempt) in order.into_iter().zip(verdicts).zip(attempts) {
        if let Some(dropped) = verdict {
            *match dropped {
                Dropped::Status => &mut stats.skipped_by_status,
                Dropped::Reward => &mut stats.skipped_by_reward,
                Dropped::NotBest => &mut stats.skipped_not_best,
            } += 1;
            continue;
        }
        let Some(t_entry) = trajectories.get(&entry.id) else {
            stats.missing_trajectory += 1;
            continue;
        };
        let trajectory = trajectory_reader.value(t_entry)?;
        // Only a disagreement counts: older trajectories carry no attempt.
        if let (Some(a), Some(b)) = (attempt, trajectory.get("attempt")) {
            if &a != b {
                stats.attempt_mismatch += 1;
            }
        }
        let line = training_line(trajectory, options, &mut counts)
            .map_err(|message| trajectories.error_at(t_entry, message))?;
        let Some(line) = line else {
            stats.not_alternating += 1;
            continue;
        };
        serde_json::to_writer(&mut out, &line)
            .map_err(|e| ExportError::Write(std::io::Error::from(e)))?;
        out.write_all(b"\n").map_err(ExportError::Write)?;
        stats.written += 1;
    }
    out.flush().map_err(ExportError::Write)?;
    stats.arguments_kept_as_string = counts.arguments_kept_as_string;
    stats.results_without_call = counts.results_without_call;
    Ok(stats)
}

/// The line of one trajectory record in the chosen format; `None` if the
/// format cannot hold it (see `sharegpt`).
fn training_line(
    trajectory: Value,
    options: &ExportOptions,
    counts: &mut Counts,
) -> Result<Option<Value>, String> {
    let Value::Object(mut record) = trajectory else {
        return Err("expected a trajectory object".to_string());
    };
    let Some(Value::Array(mut messages)) = record.remove("messages") else {
        return Err("expected an array `messages`".to_string());
    };
    normalise(
        &mut messages,
        options.keep_reasoning,
        options.arguments(),
        counts,
    )?;
    // Every line gets a `tools` list, so a data set loader sees one schema
    // even when a trajectory had no tools.
    let tools = match record.remove("tools") {
        None | Some(Value::Null) => Value::Array(Vec::new()),
        Some(tools) => tools,
    };
    match options.format {
        ExportFormat::Openai => {
            let mut line = Map::new();
            line.insert("messages".to_string(), Value::Array(messages));
            line.insert("tools".to_string(), tools);
            // Its `message` indices still hold: `normalise` keeps every
            // message in its place.
            if let Some(beside) = record.remove("convoy").filter(|_| options.keep_token_data) {
                line.insert("convoy".to_string(), beside);
            }
            Ok(Some(Value::Object(line)))
        }
        ExportFormat::Sharegpt => super::sharegpt::line(messages, &tools),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn lines(values: &[Value]) -> String {
        values.iter().map(|v| format!("{v}\n")).collect()
    }

    fn result(id: &str, status: &str, attempt: u32) -> Value {
        json!({"id": id, "status": status, "final": null, "steps": 1, "usage": {},
               "attempt": attempt, "started_at": "2024-01-01T00:00:00.000Z",
               "finished_at": "2024-01-01T00:00:01.000Z", "duration_s": 1.0, "error": null})
    }

    fn trajectory(id: &str, attempt: u32, text: &str) -> Value {
        json!({"id": id, "attempt": attempt, "status": "ok",
               "messages": [
                   {"role": "user", "content": text},
                   {"role": "assistant", "content": null, "reasoning_content": "think",
                    "refusal": null, "annotations": [],
                    "tool_calls": [{"id": "c1", "type": "function",
                                    "function": {"name": "sh", "arguments": "{}"}}]},
                   {"role": "tool", "tool_call_id": "c1", "content": "out"}
               ],
               "tools": [{"type": "function", "function": {"name": "sh", "parameters": {}}}]})
    }

    fn run(dir: &Path, options: &ExportOptions) -> (ExportStats, Vec<Value>) {
        let mut out = Vec::new();
        let stats = export(dir, options, &mut out).unwrap();
        let values = String::from_utf8(out)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        (stats, values)
    }

    fn run_dir() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let results = lines(&[
            result("a", "failed", 1),
            result("b", "ok", 1),
            result("c", "timeout", 1),
            result("d", "ok", 1),
            // A resumed run re-ran `a`: its final line is this one.
            result("a", "ok", 2),
        ]);
        std::fs::write(dir.path().join("results.jsonl"), results + "{\"id\":\"e\"").unwrap();
        let trajectories = lines(&[
            trajectory("a", 1, "a1"),
            trajectory("b", 1, "b"),
            trajectory("c", 1, "c"),
            trajectory("a", 2, "a2"),
        ]);
        std::fs::write(dir.path().join("trajectories.jsonl"), trajectories).unwrap();
        dir
    }

    #[test]
    fn exports_final_records_in_final_line_order_with_normalised_messages() {
        let dir = run_dir();
        let (stats, out) = run(dir.path(), &ExportOptions::default());
        assert_eq!(
            stats,
            ExportStats {
                written: 3,
                skipped_by_status: 0,
                missing_trajectory: 1,
                attempt_mismatch: 0,
                torn_lines: 1,
                ..ExportStats::default()
            }
        );
        let firsts: Vec<&Value> = out.iter().map(|l| &l["messages"][0]["content"]).collect();
        assert_eq!(firsts, ["b", "c", "a2"]);
        let line = &out[0];
        assert_eq!(
            line.as_object().unwrap().keys().collect::<Vec<_>>(),
            ["messages", "tools"]
        );
        let assistant = line["messages"][1].as_object().unwrap();
        assert_eq!(
            assistant.keys().collect::<Vec<_>>(),
            ["role", "content", "tool_calls"]
        );
        assert_eq!(assistant["content"], "");
        let tool = line["messages"][2].as_object().unwrap();
        assert_eq!(
            tool.keys().collect::<Vec<_>>(),
            ["role", "content", "tool_call_id", "name"]
        );
        assert_eq!(line["tools"][0]["function"]["name"], "sh");
    }

    #[test]
    fn filters_by_final_status() {
        let dir = run_dir();
        let options = ExportOptions {
            only: vec!["ok".to_string()],
            ..ExportOptions::default()
        };
        let (stats, out) = run(dir.path(), &options);
        assert_eq!((stats.written, stats.skipped_by_status), (2, 1));
        assert_eq!(stats.missing_trajectory, 1);
        let firsts: Vec<&Value> = out.iter().map(|l| &l["messages"][0]["content"]).collect();
        assert_eq!(firsts, ["b", "a2"]);
    }

    #[test]
    fn keeps_reasoning_when_asked() {
        let dir = run_dir();
        let options = ExportOptions {
            keep_reasoning: true,
            ..ExportOptions::default()
        };
        let (_, out) = run(dir.path(), &options);
        assert_eq!(out[0]["messages"][1]["reasoning_content"], "think");
        assert!(out[0]["messages"][1].get("refusal").is_none());
    }

    #[test]
    fn counts_a_trajectory_of_another_attempt() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("results.jsonl"),
            lines(&[result("a", "ok", 2)]),
        )
        .unwrap();
        std::fs::write(
            dir.path().join("trajectories.jsonl"),
            lines(&[trajectory("a", 1, "old")]),
        )
        .unwrap();
        let (stats, out) = run(dir.path(), &ExportOptions::default());
        assert_eq!((stats.written, stats.attempt_mismatch), (1, 1));
        assert_eq!(out[0]["messages"][0]["content"], "old");
    }

    #[test]
    fn unknown_status_in_the_filter_is_an_error() {
        let dir = run_dir();
        let options = ExportOptions {
            only: vec!["okk".to_string()],
            ..ExportOptions::default()
        };
        let err = export(dir.path(), &options, &mut Vec::new()).unwrap_err();
        assert!(err.to_string().starts_with("unknown status `okk`"), "{err}");
    }

    #[test]
    fn sharegpt_lines_with_object_arguments_by_default() {
        let dir = run_dir();
        let options = ExportOptions {
            format: ExportFormat::Sharegpt,
            ..ExportOptions::default()
        };
        let (stats, out) = run(dir.path(), &options);
        // Each fixture conversation ends on a tool result: not alternating.
        assert_eq!((stats.written, stats.not_alternating), (0, 3));
        assert!(
            stats.render().contains("3 skipped for sharegpt"),
            "{}",
            stats.render()
        );

        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("results.jsonl"),
            lines(&[result("a", "ok", 1)]),
        )
        .unwrap();
        let mut t = trajectory("a", 1, "go");
        t["messages"]
            .as_array_mut()
            .unwrap()
            .push(json!({"role": "assistant", "content": "done", "tool_calls": []}));
        std::fs::write(dir.path().join("trajectories.jsonl"), lines(&[t])).unwrap();
        let (stats, out2) = run(dir.path(), &options);
        assert!(out.is_empty());
        assert_eq!(stats.written, 1);
        let line = &out2[0];
        assert_eq!(
            line.as_object().unwrap().keys().collect::<Vec<_>>(),
            ["conversations", "system", "tools"]
        );
        let turns = &line["conversations"];
        assert_eq!(turns[1]["value"], "[{\"name\":\"sh\",\"arguments\":{}}]");
        assert_eq!(turns[2]["name"], "sh");
        assert_eq!(turns[3], json!({"from": "gpt", "value": "done"}));
    }

    #[test]
    fn token_data_is_dropped_unless_kept_and_only_openai_keeps_it() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, v: &Value| {
            std::fs::write(dir.path().join(name), lines(std::slice::from_ref(v))).unwrap();
        };
        write("results.jsonl", &result("a", "ok", 1));
        let mut t = trajectory("a", 1, "go");
        let turns = json!({"turns": [{"message": 1, "token_ids": [1, 2]}]});
        t["convoy"] = turns.clone();
        write("trajectories.jsonl", &t);
        let (_, out) = run(dir.path(), &ExportOptions::default());
        assert!(out[0].get("convoy").is_none(), "{}", out[0]);
        let keep = ExportOptions {
            keep_token_data: true,
            ..ExportOptions::default()
        };
        let (_, out) = run(dir.path(), &keep);
        assert_eq!(out[0]["convoy"], turns);
        let sharegpt = ExportOptions {
            format: ExportFormat::Sharegpt,
            ..keep
        };
        let err = export(dir.path(), &sharegpt, &mut Vec::new()).unwrap_err();
        assert!(err.to_string().contains("--format openai"), "{err}");
    }

    #[test]
    fn a_missing_run_directory_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope");
        let err = export(&missing, &ExportOptions::default(), &mut Vec::new()).unwrap_err();
        assert!(err.to_string().ends_with("nope` does not exist"), "{err}");
    }

    #[test]
    fn a_trajectory_without_messages_is_an_error_naming_its_line() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("results.jsonl"),
            lines(&[result("a", "ok", 1)]),
        )
        .unwrap();
        std::fs::write(
            dir.path().join("trajectories.jsonl"),
            lines(&[json!({"id": "x"}), json!({"id": "a", "messages": "hi"})]),
        )
        .unwrap();
        let err = export(dir.path(), &ExportOptions::default(), &mut Vec::new()).unwrap_err();
        assert!(
            err.to_string()
                .ends_with("trajectories.jsonl:2: expected an array `messages`"),
            "{err}"
        );
    }
}
