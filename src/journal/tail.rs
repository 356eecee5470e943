//! Cutting a torn last line: the bytes after a journal file's last newline
//! are a write a crash interrupted, and go before the run continues.
//!
//! Only the end of the file is read, a block at a time backwards until a
//! newline turns up: `trajectories.jsonl` of a long run holds gigabytes,
//! and a continued run must not hold it in memory to find its last line.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// How much of the file is read at a time, from the end. A torn line is
/// at most one record long; most fit in one block.
const BLOCK: u64 = 64 * 1024;

/// Cuts `path` after its last newline (to nothing if it has none) and
/// syncs it. Returns the bytes dropped; a missing file drops none.
pub(super) fn repair_tail(path: &Path) -> io::Result<u64> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let len = file.metadata()?.len();
    let keep = end_of_last_line(&file, len)?;
    if keep < len {
        let f = OpenOptions::new().write(true).open(path)?;
        f.set_len(keep)?;
        f.sync_all()?;
    }
    Ok(len - keep)
}

/// Where the last complete line of the first `len` bytes of `file` ends
/// (just past its newline), or 0 when there is no newline.
fn end_of_last_line(file: &File, len: u64) -> io::Result<u64> {
    let mut buf = vec![0; BLOCK.min(len) as usize];
    let mut end = len;
    while end > 0 {
        let start = end.saturating_sub(BLOCK);
        let block = &mut buf[..(end - start) as usize];
        file.read_exact_at(block, start)?;
        if let Some(i) = block.iter().rposition(|&b| b == b'\n') {
            return Ok(start + i as u64 + 1);
        }
        end = start;
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes `text` to a fresh file, repairs it; returns what was dropped
    /// and what is left.
    fn repaired(text: &[u8]) -> (u64, Vec<u8>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("trajectories.jsonl");
        std::fs::write(&path, text).unwrap();
        let dropped = repair_tail(&path).unwrap();
        (dropped, std::fs::read(&path).unwrap())
    }

    fn torn(len: u64) -> Vec<u8> {
        vec![b'x'; len as usize]
    }

    #[test]
    fn a_file_that_ends_with_a_newline_is_left_as_it_is() {
        let text = b"{\"id\":\"a\"}\n{\"id\":\"b\"}\n";
        assert_eq!(repaired(text), (0, text.to_vec()));
    }

    #[test]
    fn a_torn_last_line_is_cut() {
        let (dropped, left) = repaired(b"{\"id\":\"a\"}\n{\"id\":\"b\"}\n{\"id\":");
        assert_eq!(dropped, 6);
        assert_eq!(left, b"{\"id\":\"a\"}\n{\"id\":\"b\"}\n");
    }

    #[test]
    fn a_torn_line_longer_than_a_block_is_cut_whole() {
        let whole = b"{\"id\":\"a\"}\n".to_vec();
        for tail in [BLOCK, BLOCK + 1, 2 * BLOCK + 17] {
            let (dropped, left) = repaired(&[whole.clone(), torn(tail)].concat());
            assert_eq!(
                (dropped, &left),
                (tail, &whole),
                "torn line of {tail} bytes"
            );
        }
    }

    #[test]
    fn a_newline_that_ends_the_block_before_is_found() {
        // The last block read is all torn line; the newline ends the block
        // before it.
        let whole = [torn(BLOCK - 1), b"\n".to_vec()].concat();
        let (dropped, left) = repaired(&[whole.clone(), torn(BLOCK)].concat());
        assert_eq!((dropped, left), (BLOCK, whole));
    }

    #[test]
    fn a_file_of_one_torn_line_is_emptied() {
        assert_eq!(repaired(b"{\"id\":\"a\",\"sta"), (14, vec![]));
        assert_eq!(repaired(&torn(BLOCK * 3)), (BLOCK * 3, vec![]));
    }

    #[test]
    fn an_empty_or_missing_file_needs_nothing() {
        assert_eq!(repaired(b""), (0, vec![]));
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(repair_tail(&dir.path().join("none.jsonl")).unwrap(), 0);
        assert!(!dir.path().join("none.jsonl").exists());
    }
}
