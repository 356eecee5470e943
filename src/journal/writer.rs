//! Writing the run directory. Results and trajectories are appended by one
//! writer; `sync` flushes and fsyncs both, so a result the caller has seen
//! synced survives a crash (the recorder syncs each batch before counting
//! its tasks as done).

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::events::Finished;
use crate::manifest::Job;

#[derive(Debug, Error)]
pub enum JournalError {
    #[error("run directory `{}` already holds results of another run; choose another --out (resuming is not supported yet)", .0.display())]
    Exists(PathBuf),
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

pub struct Journal {
    dir: PathBuf,
    results: BufWriter<File>,
    trajectories: BufWriter<File>,
    tools: Value,
}

#[derive(Serialize)]
struct TrajectoryLine<'a> {
    id: &'a str,
    messages: &'a [Value],
    tools: &'a Value,
}

impl Journal {
    /// Creates the run directory and its files; refuses a directory that
    /// already holds results, so no earlier run's data is overwritten.
    pub fn create(dir: &Path, job: &Job, tools: Value) -> Result<Journal, JournalError> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let results_path = dir.join("results.jsonl");
        if std::fs::metadata(&results_path).is_ok_and(|m| m.len() > 0) {
            return Err(JournalError::Exists(dir.to_path_buf()));
        }
        let snapshot = dir.join("manifest.toml");
        let text = format!(
            "# convoy snapshot of `{}`\n# fingerprint: {}\n{}",
            job.path.display(),
            fingerprint(job),
            job.text
        );
        std::fs::write(&snapshot, text).map_err(io(&snapshot))?;
        let open = |name: &str| -> Result<BufWriter<File>, JournalError> {
            let p = dir.join(name);
            let f = OpenOptions::new()
                .create(true)
                .write(true)
                .truncate(true)
                .open(&p)
                .map_err(io(&p))?;
            Ok(BufWriter::with_capacity(256 * 1024, f))
        };
        Ok(Journal {
            dir: dir.to_path_buf(),
            results: open("results.jsonl")?,
            trajectories: open("trajectories.jsonl")?,
            tools,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Appends a finished task's result and trajectory (not yet durable).
    pub fn append(&mut self, f: &Finished) -> Result<(), JournalError> {
        let traj = TrajectoryLine {
            id: &f.record.id,
            messages: &f.messages,
            tools: &self.tools,
        };
        let p = self.dir.join("trajectories.jsonl");
        write_line(&mut self.trajectories, &traj).map_err(io(&p))?;
        let p = self.dir.join("results.jsonl");
        write_line(&mut self.results, &f.record).map_err(io(&p))?;
        Ok(())
    }

    /// Makes everything appended so far durable. Trajectories go first, so
    /// a durable result always has its trajectory.
    pub fn sync(&mut self) -> Result<(), JournalError> {
        for (name, w) in [
            ("trajectories.jsonl", &mut self.trajectories),
            ("results.jsonl", &mut self.results),
        ] {
            let p = self.dir.join(name);
            w.flush().map_err(io(&p))?;
            w.get_ref().sync_data().map_err(io(&p))?;
        }
        Ok(())
    }

    /// Writes `summary.json` (atomically: temp file, then rename).
    pub fn write_summary(&self, summary: &impl Serialize) -> Result<(), JournalError> {
        let p = self.dir.join("summary.json");
        let tmp = self.dir.join("summary.json.tmp");
        let text = serde_json::to_string_pretty(summary).expect("summary serializes");
        std::fs::write(&tmp, text + "\n").map_err(io(&tmp))?;
        std::fs::rename(&tmp, &p).map_err(io(&p))
    }
}

fn write_line(w: &mut impl Write, value: &impl Serialize) -> std::io::Result<()> {
    serde_json::to_writer(&mut *w, value)?;
    w.write_all(b"\n")
}

/// What shapes the data: the manifest text and the task source's bytes.
pub fn fingerprint(job: &Job) -> String {
    let mut h = Sha256::new();
    h.update(job.text.as_bytes());
    if let Ok(bytes) = std::fs::read(job.resolve(&job.manifest.tasks.source)) {
        h.update(&bytes);
    }
    let digest = h.finalize();
    let hex: String = digest.iter().take(16).map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}
