//! Reading a journal JSONL file (`results.jsonl`, `trajectories.jsonl`) as
//! its final records: one per id, the last line for an id winning, because a
//! resumed run appends a new line for a task it re-ran.
//!
//! The scan keeps only each id's winning line number and byte range, not
//! the records: trajectories of thousands of conversations can be larger
//! than memory, and export and merge need each final record once, so they
//! load it from the file when they get to it (`FinalReader`).
//!
//! A crash can leave the last line torn; it is ignored and counted. Any
//! other bad line is an error naming the file and line, since it means the
//! file is not a journal or was damaged, and silently dropping records would
//! hand a trainer a quietly smaller data set.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum JournalReadError {
    #[error("cannot read `{}`: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}:{line}: {message}", path.display())]
    Line {
        path: PathBuf,
        line: usize,
        message: String,
    },
}

impl JournalReadError {
    fn line(path: &Path, line: usize, message: impl Into<String>) -> Self {
        JournalReadError::Line {
            path: path.to_path_buf(),
            line,
            message: message.into(),
        }
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> JournalReadError + '_ {
    move |source| JournalReadError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The winning line of one id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Final {
    pub id: String,
    /// 1-based line number of the last line for this id.
    pub line: usize,
    offset: u64,
    /// Bytes of the line, without its newline.
    len: usize,
}

/// The final records of one journal file, in the order their ids first
/// appeared.
#[derive(Debug)]
pub struct Finals {
    path: PathBuf,
    entries: Vec<Final>,
    index: HashMap<String, usize>,
    /// Records read (every non-blank line but a torn one).
    lines: usize,
    /// The line number of a torn last line.
    torn_at: Option<usize>,
}

/// Only the id is looked at while scanning; serde still checks that the
/// rest of the line is valid JSON while skipping it.
#[derive(Deserialize)]
struct Keyed {
    id: String,
}

/// Scans `path` and returns each id's winning line. A torn last line (no
/// trailing newline, or invalid JSON) is counted in `torn_lines`; any other
/// invalid line, or a line without a string `id`, is an error.
pub fn read_final(path: &Path) -> Result<Finals, JournalReadError> {
    let file = File::open(path).map_err(io(path))?;
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut finals = Finals {
        path: path.to_path_buf(),
        entries: Vec::new(),
        index: HashMap::new(),
        lines: 0,
        torn_at: None,
    };
    let mut buf = Vec::new();
    let mut offset = 0u64;
    let mut line = 0usize;
    // An unparsable line is forgiven only if it turns out to be the last
    // one, which is not known until the next non-blank line or the end.
    let mut pending: Option<(usize, String)> = None;
    loop {
        buf.clear();
        let n = reader.read_until(b'\n', &mut buf).map_err(io(path))?;
        if n == 0 {
            break;
        }
        line += 1;
        let start = offset;
        offset += n as u64;
        if buf.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        if let Some((at, message)) = pending.take() {
            return Err(JournalReadError::line(path, at, message));
        }
        if buf.last() != Some(&b'\n') {
            // Only the end of the file lacks a newline. The writer puts the
            // newline after the record and syncs both before a task counts
            // as done, so a line without one was never acknowledged, even if
            // it happens to parse; a resume re-runs that task.
            finals.torn_at = Some(line);
            break;
        }
        match serde_json::from_slice::<Keyed>(&buf) {
            Ok(Keyed { id }) => {
                finals.lines += 1;
                finals.upsert(id, line, start, n - 1)
            }
            Err(e) if e.is_syntax() || e.is_eof() => {
                pending = Some((line, format!("invalid JSON: {}", describe(&e))));
            }
            Err(e) => {
                return Err(JournalReadError::line(
                    path,
                    line,
                    format!("expected an object with a string `id`: {}", describe(&e)),
                ))
            }
        }
    }
    if let Some((at, _)) = pending {
        finals.torn_at = Some(at);
    }
    Ok(finals)
}

/// serde_json's message without its "at line 1 column N" suffix, which
/// would contradict the file's line number; the column is kept.
fn describe(e: &serde_json::Error) -> String {
    let text = e.to_string();
    match text.rsplit_once(" at line ") {
        Some((message, _)) => format!("{message} (column {})", e.column()),
        None => text,
    }
}

impl Finals {
    fn upsert(&mut self, id: String, line: usize, offset: u64, len: usize) {
        match self.index.get(&id) {
            Some(&i) => {
                let entry = &mut self.entries[i];
                entry.line = line;
                entry.offset = offset;
                entry.len = len;
            }
            None => {
                self.index.insert(id.clone(), self.entries.len());
                self.entries.push(Final {
                    id,
                    line,
                    offset,
                    len,
                });
            }
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Final records in the order their ids first appeared.
    pub fn entries(&self) -> &[Final] {
        &self.entries
    }

    /// Final records in the order of their winning lines: the file as it
    /// reads once every superseded line is struck out.
    pub fn in_line_order(&self) -> Vec<&Final> {
        let mut v: Vec<&Final> = self.entries.iter().collect();
        v.sort_by_key(|e| e.line);
        v
    }

    pub fn get(&self, id: &str) -> Option<&Final> {
        self.index.get(id).map(|&i| &self.entries[i])
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Lines ignored because the file ended in a torn line (0 or 1).
    pub fn torn_lines(&self) -> usize {
        usize::from(self.torn_at.is_some())
    }

    /// The line number of the torn last line, if there was one.
    pub fn torn_at(&self) -> Option<usize> {
        self.torn_at
    }

    /// Records read, superseded ones included.
    pub fn lines(&self) -> usize {
        self.lines
    }

    /// An error about the record of `entry`, with its file and line.
    pub fn error_at(&self, entry: &Final, message: impl Into<String>) -> JournalReadError {
        JournalReadError::line(&self.path, entry.line, message)
    }

    /// The string field `key` of a loaded record, or an error naming the
    /// record's line.
    pub fn str_field<'v>(
        &self,
        entry: &Final,
        record: &'v Value,
        key: &str,
    ) -> Result<&'v str, JournalReadError> {
        record
            .get(key)
            .and_then(Value::as_str)
            .ok_or_else(|| self.error_at(entry, format!("expected a string `{key}`")))
    }

    /// Opens the file again to load final records.
    pub fn reader(&self) -> Result<FinalReader<'_>, JournalReadError> {
        let file = File::open(&self.path).map_err(io(&self.path))?;
        Ok(FinalReader {
            finals: self,
            file,
            buf: Vec::new(),
        })
    }
}

/// Loads final records of one `Finals` from its file.
pub struct FinalReader<'a> {
    finals: &'a Finals,
    file: File,
    buf: Vec<u8>,
}

impl FinalReader<'_> {
    /// The record's line as written, without its newline. Checked to still
    /// be the record scanned, in case the file was rewritten meanwhile.
    pub fn raw(&mut self, entry: &Final) -> Result<&[u8], JournalReadError> {
        let path = &self.finals.path;
        self.file
            .seek(SeekFrom::Start(entry.offset))
            .map_err(io(path))?;
        self.buf.resize(entry.len, 0);
        let changed = || {
            JournalReadError::line(
                path,
                entry.line,
                format!(
                    "the line changed while reading (expected id `{}`); was a run still writing the file?",
                    entry.id
                ),
            )
        };
        match self.file.read_exact(&mut self.buf) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Err(changed()),
            Err(e) => return Err(io(path)(e)),
        }
        match serde_json::from_slice::<Keyed>(&self.buf) {
            Ok(k) if k.id == entry.id => Ok(&self.buf),
            _ => Err(changed()),
        }
    }

    /// The record, parsed.
    pub fn value(&mut self, entry: &Final) -> Result<Value, JournalReadError> {
        let finals = self.finals;
        let raw = self.raw(entry)?;
        // `raw` already checked that the line parses; keep the error anyway.
        serde_json::from_slice(raw)
            .map_err(|e| JournalReadError::line(&finals.path, entry.line, describe(&e)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &tempfile::TempDir, text: &str) -> PathBuf {
        let p = dir.path().join("results.jsonl");
        std::fs::write(&p, text).unwrap();
        p
    }

    fn ids(f: &Finals) -> Vec<&str> {
        f.entries().iter().map(|e| e.id.as_str()).collect()
    }

    #[test]
    fn torn_last_line_is_ignored_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(&dir, "{\"id\":\"a\"}\n{\"id\":\"b\",\"sta");
        let f = read_final(&p).unwrap();
        assert_eq!(ids(&f), ["a"]);
        assert_eq!(f.torn_lines(), 1);
    }

    #[test]
    fn invalid_last_line_with_newline_is_torn() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(&dir, "{\"id\":\"a\"}\n{\"id\":\"b\",\"sta\n\n");
        let f = read_final(&p).unwrap();
        assert_eq!(ids(&f), ["a"]);
        assert_eq!(f.torn_lines(), 1);
    }

    #[test]
    fn last_line_without_newline_is_torn_even_if_it_parses() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(&dir, "{\"id\":\"a\"}\n{\"id\":\"b\"}");
        let f = read_final(&p).unwrap();
        assert_eq!(ids(&f), ["a"]);
        assert_eq!(f.torn_lines(), 1);
    }

    #[test]
    fn bad_middle_line_is_an_error_with_its_line_number() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(&dir, "{\"id\":\"a\"}\n\n{oops\n{\"id\":\"b\"}\n");
        let err = read_final(&p).unwrap_err().to_string();
        assert!(err.contains("results.jsonl:3: invalid JSON"), "{err}");
    }

    #[test]
    fn line_without_string_id_is_an_error_even_last() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(&dir, "{\"id\":\"a\"}\n{\"id\":7}\n");
        let err = read_final(&p).unwrap_err().to_string();
        assert!(
            err.contains("results.jsonl:2: expected an object with a string `id`"),
            "{err}"
        );
    }

    #[test]
    fn last_line_for_an_id_wins_in_first_seen_order() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            &dir,
            "{\"id\":\"a\",\"n\":1}\n{\"id\":\"b\",\"n\":2}\n{\"id\":\"a\",\"n\":3}\n",
        );
        let f = read_final(&p).unwrap();
        assert_eq!(ids(&f), ["a", "b"]);
        let order: Vec<&str> = f.in_line_order().iter().map(|e| e.id.as_str()).collect();
        assert_eq!(order, ["b", "a"]);
        let mut r = f.reader().unwrap();
        let a = r.value(f.get("a").unwrap()).unwrap();
        assert_eq!(a["n"], 3);
        assert_eq!(
            r.raw(f.get("b").unwrap()).unwrap(),
            b"{\"id\":\"b\",\"n\":2}"
        );
        assert_eq!(f.torn_lines(), 0);
    }

    #[test]
    fn a_rewritten_file_is_reported_not_misread() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(&dir, "{\"id\":\"a\"}\n{\"id\":\"b\"}\n");
        let f = read_final(&p).unwrap();
        std::fs::write(&p, "{\"id\":\"a\"}\n").unwrap();
        let err = f.reader().unwrap().raw(f.get("b").unwrap()).unwrap_err();
        assert!(err.to_string().contains(":2: the line changed"), "{err}");
    }
}
