//! Completion records: the line a session's shell writes to the shared
//! FIFO when a command is done (`NAME K STATUS prompt|exit|ready`), and the
//! requests waiting for them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::sync::oneshot;

/// Requests waiting for a completion record, keyed by (session, sequence).
pub(super) type Waiters = Arc<Mutex<HashMap<(String, u64), oneshot::Sender<Completion>>>>;

#[derive(Debug, Clone, Copy)]
pub(super) struct Completion {
    pub status: i32,
    pub shell_exited: bool,
}

/// The longest record a shell writes is well under this; anything longer
/// is not a record.
const MAX_RECORD: u64 = 512;

/// Reads completion records and wakes their waiters. Any session can write
/// to the FIFO, so what arrives is untrusted: a line that is not UTF-8,
/// not a record, or longer than a record is skipped (never the end of the
/// reader, which would stop every session's commands), and a line without
/// an end is never buffered beyond `MAX_RECORD`.
pub(super) async fn read_completions(receiver: tokio::net::unix::pipe::Receiver, waiters: Waiters) {
    let mut reader = BufReader::new(receiver);
    let mut line = Vec::new();
    loop {
        line.clear();
        match (&mut reader)
            .take(MAX_RECORD)
            .read_until(b'\n', &mut line)
            .await
        {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        if line.last() != Some(&b'\n') {
            // Too long: drop the rest of it, in bounded pieces.
            while !line.ends_with(b"\n") {
                line.clear();
                match (&mut reader)
                    .take(MAX_RECORD)
                    .read_until(b'\n', &mut line)
                    .await
                {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
            continue;
        }
        if let Some((key, completion)) = parse_record(&line) {
            let waiter = waiters.lock().expect("waiters lock").remove(&key);
            if let Some(tx) = waiter {
                let _ = tx.send(completion);
            }
        }
    }
}

/// `NAME K STATUS prompt|exit|ready\n`, or nothing.
fn parse_record(line: &[u8]) -> Option<((String, u64), Completion)> {
    let line = std::str::from_utf8(line).ok()?.trim_end_matches('\n');
    let mut parts = line.split(' ');
    let (name, seq, status) = (parts.next()?, parts.next()?, parts.next()?);
    let (seq, status) = (seq.parse::<u64>().ok()?, status.parse::<i32>().ok()?);
    let shell_exited = parts.next() == Some("exit");
    Some((
        (name.to_string(), seq),
        Completion {
            status,
            shell_exited,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_parse_and_garbage_does_not() {
        let ((name, seq), c) = parse_record(b"c3 7 130 exit\n").unwrap();
        assert_eq!(
            (name.as_str(), seq, c.status, c.shell_exited),
            ("c3", 7, 130, true)
        );
        assert!(parse_record(b"\xff\xfe 1 0\n").is_none());
        assert!(parse_record(b"c3 x 0\n").is_none());
        assert!(parse_record(b"\n").is_none());
    }
}
