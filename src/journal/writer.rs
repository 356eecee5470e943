//! Writing the run directory. Results, trajectories and partial turns are
//! appended by one writer; `sync` flushes and fsyncs them, so a result the
//! caller has seen synced survives a crash (the recorder syncs each batch
//! before counting its tasks as done). Opening a directory that holds
//! results continues that run: torn last lines are cut, the fingerprint is
//! checked, and the last final record of every task is handed back.

use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use serde::Serialize;
use serde_json::Value;
use thiserror::Error;

use super::fingerprint::{self, Fingerprint};
use super::read::{read_final, JournalReadError};
use crate::events::Finished;
use crate::events::{Status, TaskRecord};
use crate::manifest::Job;

#[derive(Debug, Error)]
pub enum JournalError {
    #[error("run directory `{}` is in use by another convoy run ({holder}); wait for it or choose another --out", dir.display())]
    Locked { dir: PathBuf, holder: String },
    #[error("run directory `{}` holds a run whose {} changed since it started ({}); rerun with --force to continue it anyway, or choose another --out", dir.display(), if parts.len() == 1 { "part" } else { "parts" }, parts.join(", "))]
    Changed { dir: PathBuf, parts: Vec<String> },
    #[error("run directory `{}` holds results but no {}: it was not written by this version of convoy; choose another --out or rerun with --force", dir.display(), fingerprint::FILE)]
    NoFingerprint { dir: PathBuf },
    #[error(transparent)]
    Read(#[from] JournalReadError),
    #[error("cannot write `{}`: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> JournalError + '_ {
    move |source| JournalError::Io {
        path: path.to_path_buf(),
        source,
    }
}

const RESULTS: &str = "results.jsonl";
const TRAJECTORIES: &str = "trajectories.jsonl";
const TURNS: &str = "turns.jsonl";
/// An external agent's model calls, as they happen (see `crate::gateway`).
pub const CALLS: &str = "calls.jsonl";
const LOCK: &str = "convoy.lock";
const SUMMARIES: &str = "summaries.jsonl";
/// The latest invocation: written when it starts, so `convoy report` can
/// tell a run still going (or one killed) from the one `summary.json`
/// describes.
pub const RUN_INFO: &str = "run.json";

/// `run.json`.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct RunInfo {
    pub pid: u32,
    /// RFC 3339, UTC.
    pub started_at: String,
    /// Tasks in this invocation's plan (after `--shard` and `--limit`).
    pub total_tasks: u64,
}

/// The run directory, open for appending. Holds the directory's lock for
/// as long as it lives (an flock: a killed convoy releases it too).
pub struct Journal {
    dir: PathBuf,
    results: BufWriter<File>,
    trajectories: BufWriter<File>,
    turns: BufWriter<File>,
    /// Opened at the first call (a job of convoy's own agent has none).
    calls: Option<BufWriter<File>>,
    /// When this invocation opened the directory (`run.json`'s
    /// `started_at`; each call line carries it, to tell runs apart).
    started_at: String,
    tools: Value,
    /// Ids with a final record, from earlier runs and this one: their
    /// partial turns are superseded.
    finals: HashSet<String>,
    _lock: Flock<File>,
}

/// What an earlier run of this directory left.
#[derive(Debug, Default)]
pub struct Previous {
    /// The last final record of every task that has one.
    pub records: HashMap<String, TaskRecord>,
    /// Files whose torn last line was cut off, with the bytes dropped.
    pub repaired: Vec<(String, u64)>,
}

#[derive(Serialize)]
struct TrajectoryLine<'a> {
    id: &'a str,
    attempt: u32,
    status: Status,
    messages: &'a [Value],
    tools: &'a Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    convoy: Option<Beside<'a>>,
}

/// What convoy keeps beside a trajectory's `messages` (the `convoy` key of
/// a trajectory or partial turn line), so `messages` stays OpenAI's chat
/// format: `turns`, one `{"message": <index in messages>, ...}` per
/// assistant turn with a record (token data). Left out when there is
/// none, so a job without those options writes what it always did.
#[derive(Serialize)]
struct Beside<'a> {
    turns: &'a [Value],
}

impl<'a> Beside<'a> {
    fn of(turns: &'a [Value]) -> Option<Beside<'a>> {
        (!turns.is_empty()).then_some(Beside { turns })
    }
}

/// A call as `calls.jsonl` keeps it: the invocation that made it first.
#[derive(Serialize)]
struct CallLine<'a> {
    run_started_at: &'a str,
    #[serde(flatten)]
    call: &'a crate::gateway::CallRecord,
}

/// `convoy.turns` indexes the attempt's whole conversation: its partial
/// lines' messages in order.
#[derive(Serialize)]
struct TurnLine<'a> {
    id: &'a str,
    attempt: u32,
    turn: u32,
    partial: bool,
    messages: &'a [Value],
    #[serde(skip_serializing_if = "Option::is_none")]
    convoy: Option<Beside<'a>>,
}

impl Journal {
    /// Opens (creating or continuing) the run directory. A directory with
    /// results is continued only if its fingerprint matches (or `force`);
    /// its torn last lines are repaired first.
    pub fn open(
        dir: &Path,
        job: &Job,
        tools: Value,
        force: bool,
    ) -> Result<(Journal, Previous), JournalError> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let lock = lock(dir)?;
        let fp = Fingerprint::of(job, &tools);
        let results_path = dir.join(RESULTS);
        let has_results = std::fs::metadata(&results_path).is_ok_and(|m| m.len() > 0);
        let mut previous = Previous::default();
        repair(dir, &mut previous)?;
        if has_results {
            match Fingerprint::read(dir).map_err(io(&dir.join(fingerprint::FILE)))? {
                Some(old) => {
                    let parts = old.changed(&fp);
                    if !parts.is_empty() && !force {
                        return Err(JournalError::Changed {
                            dir: dir.to_path_buf(),
                            parts,
                        });
                    }
                }
                None if !force => {
                    return Err(JournalError::NoFingerprint {
                        dir: dir.to_path_buf(),
                    })
                }
                None => {}
            }
            let (records, lines) = read_records(dir)?;
            previous.records = records;
            drop_orphan_trajectories(dir, lines, &mut previous)?;
        } else {
            drop_orphan_trajectories(dir, 0, &mut previous)?;
        }
        let fp_path = dir.join(fingerprint::FILE);
        let text = serde_json::to_string_pretty(&fp).expect("a fingerprint serializes");
        write_atomically(&fp_path, &text)?;
        let snapshot = dir.join("manifest.toml");
        let text = format!(
            "# convoy snapshot of `{}`\n# fingerprint: {} (parts in {})\n{}",
            job.path.display(),
            fp.short(),
            fingerprint::FILE,
            job.text
        );
        write_atomically(&snapshot, &text)?;
        let open = |name: &str| -> Result<BufWriter<File>, JournalError> {
            let p = dir.join(name);
            let f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&p)
                .map_err(io(&p))?;
            Ok(BufWriter::with_capacity(256 * 1024, f))
        };
        let journal = Journal {
            dir: dir.to_path_buf(),
            results: open(RESULTS)?,
            trajectories: open(TRAJECTORIES)?,
            turns: open(TURNS)?,
            calls: None,
            started_at: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
            tools,
            finals: previous.records.keys().cloned().collect(),
            _lock: lock,
        };
        Ok((journal, previous))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Appends one finished model turn of a conversation: the messages it
    /// added and its replies' records (not yet durable). A killed run keeps
    /// these partial records.
    pub fn append_turn(
        &mut self,
        id: &str,
        attempt: u32,
        turn: u32,
        messages: &[Value],
        turns: &[Value],
    ) -> Result<(), JournalError> {
        let line = TurnLine {
            id,
            attempt,
            turn,
            partial: true,
            messages,
            convoy: Beside::of(turns),
        };
        write_line(&mut self.turns, &line).map_err(io(&self.dir.join(TURNS)))
    }

    /// Appends an external agent's model call (not yet durable).
    pub fn append_call(&mut self, call: &crate::gateway::CallRecord) -> Result<(), JournalError> {
        let path = self.dir.join(CALLS);
        if self.calls.is_none() {
            let f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(io(&path))?;
            self.calls = Some(BufWriter::with_capacity(256 * 1024, f));
        }
        let w = self.calls.as_mut().expect("opened above");
        let line = CallLine {
            run_started_at: &self.started_at,
            call,
        };
        write_line(w, &line).map_err(io(&path))
    }

    /// Appends a finished task's result and trajectory (not yet durable).
    pub fn append(&mut self, f: &Finished) -> Result<(), JournalError> {
        let traj = TrajectoryLine {
            id: &f.record.id,
            attempt: f.record.attempt,
            status: f.record.status,
            messages: &f.messages,
            tools: f.tools.as_ref().unwrap_or(&self.tools),
            convoy: Beside::of(&f.turns),
        };
        write_line(&mut self.trajectories, &traj).map_err(io(&self.dir.join(TRAJECTORIES)))?;
        write_line(&mut self.results, &f.record).map_err(io(&self.dir.join(RESULTS)))?;
        self.finals.insert(f.record.id.clone());
        Ok(())
    }

    /// Makes everything appended so far durable. Turns and trajectories go
    /// first, so a durable result always has its trajectory.
    pub fn sync(&mut self) -> Result<(), JournalError> {
        if let Some(w) = &mut self.calls {
            let p = self.dir.join(CALLS);
            w.flush().map_err(io(&p))?;
            w.get_ref().sync_data().map_err(io(&p))?;
        }
        for (name, w) in [
            (TURNS, &mut self.turns),
            (TRAJECTORIES, &mut self.trajectories),
            (RESULTS, &mut self.results),
        ] {
            let p = self.dir.join(name);
            w.flush().map_err(io(&p))?;
            w.get_ref().sync_data().map_err(io(&p))?;
        }
        Ok(())
    }

    /// Records that this invocation started, with its plan's size
    /// (`run.json`, atomically).
    pub fn write_started(&self, total_tasks: u64) -> Result<(), JournalError> {
        let info = RunInfo {
            pid: std::process::id(),
            started_at: self.started_at.clone(),
            total_tasks,
        };
        let text = serde_json::to_string_pretty(&info).expect("run info serializes");
        write_atomically(&self.dir.join(RUN_INFO), &(text + "\n"))
    }

    /// Writes `summary.json`, this run's summary (atomically: temp file,
    /// then rename), and appends it as one line to `summaries.jsonl`, the
    /// directory's history: a resumed job keeps every run's summary there.
    pub fn write_summary(&self, summary: &impl Serialize) -> Result<(), JournalError> {
        let history = self.dir.join(SUMMARIES);
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&history)
            .map_err(io(&history))?;
        // One write of the whole line: a crash leaves at most a torn last
        // line, which readers of JSONL files here ignore.
        let line = serde_json::to_string(summary).expect("summary serializes") + "\n";
        f.write_all(line.as_bytes())
            .and_then(|()| f.sync_data())
            .map_err(io(&history))?;
        let text = serde_json::to_string_pretty(summary).expect("summary serializes");
        write_atomically(&self.dir.join("summary.json"), &(text + "\n"))
    }

    /// Ends the run: drops the partial turns that final records superseded
    /// (the file goes when none is left), then releases the lock.
    pub fn close(mut self) -> Result<(), JournalError> {
        use std::io::BufRead;
        self.sync()?;
        let path = self.dir.join(TURNS);
        let tmp = path.with_extension("tmp");
        // Streamed: a long run's turns file is as large as its trajectories.
        let input = File::open(&path).map_err(io(&path))?;
        let mut out = BufWriter::new(File::create(&tmp).map_err(io(&tmp))?);
        let mut kept = 0u64;
        for line in std::io::BufReader::new(input).lines() {
            let line = line.map_err(io(&path))?;
            let open = serde_json::from_str::<IdOnly>(&line)
                .is_ok_and(|t| !self.finals.contains(t.id.as_str()));
            if open {
                kept += 1;
                writeln!(out, "{line}").map_err(io(&tmp))?;
            }
        }
        out.flush()
            .and_then(|()| out.get_ref().sync_data())
            .map_err(io(&tmp))?;
        drop(out);
        if kept == 0 {
            std::fs::remove_file(&tmp).map_err(io(&tmp))?;
            std::fs::remove_file(&path).map_err(io(&path))
        } else {
            std::fs::rename(&tmp, &path).map_err(io(&path))
        }
    }
}

#[derive(serde::Deserialize)]
struct IdOnly {
    id: String,
}

/// Takes the directory's lock, or says who holds it.
fn lock(dir: &Path) -> Result<Flock<File>, JournalError> {
    let path = dir.join(LOCK);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .map_err(io(&path))?;
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        // The pid is written only under the flock: a lock file that names
        // a pid (the lock test waits for its run's) is a held lock, where
        // the file alone, created just above, is not.
        Ok(mut held) => {
            held.set_len(0).map_err(io(&path))?;
            writeln!(held, "{}", std::process::id()).map_err(io(&path))?;
            Ok(held)
        }
        Err((_, Errno::EWOULDBLOCK)) => {
            let pid = std::fs::read_to_string(&path).unwrap_or_default();
            Err(JournalError::Locked {
                dir: dir.to_path_buf(),
                holder: match pid.trim() {
                    "" => "pid unknown".to_string(),
                    p => format!("pid {p}"),
                },
            })
        }
        Err((_, e)) => Err(io(&path)(std::io::Error::from(e))),
    }
}

/// Who holds the lock of run directory `dir` (its pid, as the holder wrote
/// it), or `None` when no convoy is running there. Opens the lock file
/// read-only, never creates it.
///
/// It asks by taking a shared lock for an instant: a `convoy run` starting
/// on `dir` in that instant would be refused as if another run held it, a
/// window of microseconds that only a report racing a start can hit.
pub fn lock_holder(dir: &Path) -> Option<String> {
    let path = dir.join(LOCK);
    let file = File::open(&path).ok()?;
    match Flock::lock(file, FlockArg::LockSharedNonblock) {
        Ok(_free) => None,
        Err((_, Errno::EWOULDBLOCK)) => Some(
            std::fs::read_to_string(&path)
                .unwrap_or_default()
                .trim()
                .to_string(),
        ),
        Err(_) => None,
    }
}

/// Cuts the torn last lines a killed run left.
fn repair(dir: &Path, previous: &mut Previous) -> Result<(), JournalError> {
    for name in [RESULTS, TRAJECTORIES, TURNS, CALLS, SUMMARIES] {
        let path = dir.join(name);
        let dropped = super::tail::repair_tail(&path).map_err(io(&path))?;
        if dropped > 0 {
            tracing::warn!(
                "{}: cut a torn last line ({dropped} bytes) left by a run that was killed",
                path.display()
            );
            previous.repaired.push((name.to_string(), dropped));
        }
    }
    Ok(())
}

/// Each batch appends one trajectory line per result line, in the same
/// order, and syncs trajectories first: lines past the results' count
/// belong to results a crash lost (their tasks run again) and are dropped.
fn drop_orphan_trajectories(
    dir: &Path,
    results: u64,
    previous: &mut Previous,
) -> Result<(), JournalError> {
    let path = dir.join(TRAJECTORIES);
    let dropped = truncate_after_lines(&path, results)?;
    if dropped > 0 {
        tracing::warn!(
            "{}: dropped {dropped} bytes of trajectories whose results a killed run never wrote",
            path.display()
        );
        previous.repaired.push((TRAJECTORIES.to_string(), dropped));
    }
    Ok(())
}

/// Keeps the first `lines` lines of `path`; returns the bytes dropped.
fn truncate_after_lines(path: &Path, lines: u64) -> Result<u64, JournalError> {
    use std::io::BufRead;
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(io(path)(e)),
    };
    let len = file.metadata().map_err(io(path))?.len();
    let mut reader = std::io::BufReader::new(file);
    let (mut keep, mut buf) = (0u64, Vec::new());
    for _ in 0..lines {
        buf.clear();
        let n = reader.read_until(b'\n', &mut buf).map_err(io(path))?;
        if n == 0 {
            break;
        }
        keep += n as u64;
    }
    if keep < len {
        let f = OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(io(path))?;
        f.set_len(keep).map_err(io(path))?;
        f.sync_all().map_err(io(path))?;
    }
    Ok(len - keep)
}

/// The last final record of every task in `results.jsonl`, and how many
/// lines it has.
fn read_records(dir: &Path) -> Result<(HashMap<String, TaskRecord>, u64), JournalError> {
    let finals = read_final(&dir.join(RESULTS))?;
    let mut reader = finals.reader()?;
    let mut records = HashMap::with_capacity(finals.len());
    for entry in finals.entries() {
        let value = reader.value(entry)?;
        let record: TaskRecord = serde_json::from_value(value)
            .map_err(|e| finals.error_at(entry, format!("not a result record: {e}")))?;
        records.insert(record.id.clone(), record);
    }
    Ok((records, finals.lines() as u64))
}

/// Writes `text` to `path` through a temp file and a rename, so a crash
/// leaves the old file or the new one, never half of one.
fn write_atomically(path: &Path, text: &str) -> Result<(), JournalError> {
    super::atomic::write_atomically(path, text.as_bytes()).map_err(io(path))
}

fn write_line(w: &mut impl Write, value: &impl Serialize) -> std::io::Result<()> {
    serde_json::to_writer(&mut *w, value)?;
    w.write_all(b"\n")
}
