//! Completion records: the line a session's shell writes to its own FIFO
//! when a command is done (`NAME K STATUS prompt|exit|ready`) or when it
//! cannot start bash (`NAME %PANE 127 died`), the deaths of shells'
//! processes ([`super::dead_panes`] tells them), and the requests waiting
//! for them.
//!
//! A session's FIFO can be written by that session alone (with `user`
//! isolation: by its uid), and a record read from it counts only if it
//! names that session: no session can complete another's command.

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

/// Shells whose process ended (told by [`super::dead_panes`], which then
/// removes the dead pane), for a shell start waiting to know whether its
/// own shell died. Keyed by session and pane id (never reused by the
/// server), so the death of the shell a restart replaces is never taken
/// for the new one's; a death that
/// comes before anyone waits for it is kept (a few, the latest) for a start
/// that asks a moment later.
#[derive(Default)]
pub(super) struct Deaths {
    waiting: HashMap<(String, u32), oneshot::Sender<i32>>,
    seen: std::collections::VecDeque<((String, u32), i32)>,
}

/// Deaths kept for a start that has not asked yet.
const DEATHS_KEPT: usize = 256;

pub(super) type SharedDeaths = Arc<Mutex<Deaths>>;

impl Deaths {
    /// Resolves with the exit status of the shell in pane `%pane` of
    /// `session` once it died (at once if it did already).
    pub fn expect(&mut self, session: &str, pane: u32) -> oneshot::Receiver<i32> {
        let key = (session.to_string(), pane);
        let (tx, rx) = oneshot::channel();
        match self.seen.iter().position(|(k, _)| *k == key) {
            Some(i) => {
                let (_, status) = self.seen.remove(i).expect("found");
                let _ = tx.send(status);
            }
            None => {
                self.waiting.insert(key, tx);
            }
        }
        rx
    }

    pub fn cancel(&mut self, session: &str, pane: u32) {
        self.waiting.remove(&(session.to_string(), pane));
    }

    pub fn died(&mut self, key: (String, u32), status: i32) {
        match self.waiting.remove(&key) {
            Some(tx) => {
                let _ = tx.send(status);
            }
            // Told twice (a shell's own record, then tmux): kept once, so
            // that repeats never push other deaths out.
            None if self.seen.iter().any(|(k, _)| *k == key) => {}
            None => {
                if self.seen.len() >= DEATHS_KEPT {
                    self.seen.pop_front();
                }
                self.seen.push_back((key, status));
            }
        }
    }
}

/// The longest record a shell writes is well under this; anything longer
/// is not a record.
const MAX_RECORD: u64 = 512;

/// Reads completion records from the FIFO of session `only` (records
/// naming another session are dropped) and wakes their waiters. What a
/// session writes is untrusted: a line that is not UTF-8, not a record,
/// or longer than a record is skipped (never the end of the reader, which
/// would stop every session's commands), and a line without an end is
/// never buffered beyond `MAX_RECORD`.
pub(super) async fn read_completions(
    receiver: tokio::net::unix::pipe::Receiver,
    only: String,
    waiters: Waiters,
    deaths: SharedDeaths,
) {
    let mut reader = BufReader::new(receiver);
    let mut line = Vec::new();
    while read_bounded(&mut reader, &mut line).await {
        if line.last() != Some(&b'\n') {
            // Too long: drop the rest of it, in bounded pieces.
            while !line.ends_with(b"\n") {
                if !read_bounded(&mut reader, &mut line).await {
                    return;
                }
            }
            continue;
        }
        let record = parse_record(&line).filter(|r| {
            let name = match r {
                Record::Done((name, _), _) | Record::Died((name, _), _) => name,
            };
            *name == only
        });
        match record {
            Some(Record::Done(key, completion)) => {
                let waiter = waiters.lock().expect("waiters lock").remove(&key);
                if let Some(tx) = waiter {
                    let _ = tx.send(completion);
                }
            }
            Some(Record::Died(key, status)) => {
                deaths.lock().expect("deaths lock").died(key, status);
            }
            None => {}
        }
    }
}

enum Record {
    /// A shell's record: (session, sequence), and how the command ended.
    Done((String, u64), Completion),
    /// A shell that cannot start: (session, pane id without its `%`), and
    /// its exit status.
    Died((String, u32), i32),
}

/// Reads into `line` (cleared first) up to a newline or `MAX_RECORD`
/// bytes; false at the end of the stream or on an error.
async fn read_bounded<R: tokio::io::AsyncBufRead + Unpin>(
    reader: &mut R,
    line: &mut Vec<u8>,
) -> bool {
    line.clear();
    matches!(
        reader.take(MAX_RECORD).read_until(b'\n', line).await,
        Ok(n) if n > 0
    )
}

/// `NAME K STATUS prompt|exit|ready\n` or `NAME %PANE STATUS died\n`.
fn parse_record(line: &[u8]) -> Option<Record> {
    let line = std::str::from_utf8(line).ok()?.trim_end_matches('\n');
    let mut parts = line.split(' ');
    let (name, seq, status) = (parts.next()?, parts.next()?, parts.next()?);
    if let Some(pane) = seq.strip_prefix('%') {
        let pane = pane.parse::<u32>().ok()?;
        let status = status.parse::<i32>().ok()?;
        return (parts.next() == Some("died"))
            .then(|| Record::Died((name.to_string(), pane), status));
    }
    let status = status.parse::<i32>().ok()?;
    let seq = seq.parse::<u64>().ok()?;
    Some(Record::Done(
        (name.to_string(), seq),
        Completion {
            status,
            shell_exited: parts.next() == Some("exit"),
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_parse_and_garbage_does_not() {
        let Some(Record::Done((name, seq), c)) = parse_record(b"c3 7 130 exit\n") else {
            panic!("not a record");
        };
        assert_eq!(
            (name.as_str(), seq, c.status, c.shell_exited),
            ("c3", 7, 130, true)
        );
        assert!(matches!(
            parse_record(b"c3 %4242 127 died\n"),
            Some(Record::Died((n, 4242), 127)) if n == "c3"
        ));
        assert!(parse_record(b"c3 %42 127 prompt\n").is_none());
        assert!(parse_record(b"c3 %42  died\n").is_none());
        assert!(parse_record(b"\xff\xfe 1 0\n").is_none());
        assert!(parse_record(b"c3 x 0\n").is_none());
        assert!(parse_record(b"\n").is_none());
    }

    #[test]
    fn a_death_is_told_to_its_own_start_only_even_when_it_came_first() {
        let mut d = Deaths::default();
        d.died(("c1".into(), 10), 0);
        let mut new_shell = d.expect("c1", 11);
        assert!(
            new_shell.try_recv().is_err(),
            "the old shell's death is not the new one's"
        );
        d.died(("c1".into(), 11), 127);
        assert_eq!(new_shell.try_recv().unwrap(), 127);
        d.died(("c2".into(), 20), 1);
        assert_eq!(d.expect("c2", 20).try_recv().unwrap(), 1);
    }

    #[test]
    fn a_death_told_twice_is_kept_once_and_pushes_no_other_out() {
        let mut d = Deaths::default();
        d.died(("c1".into(), 1), 127);
        for _ in 0..DEATHS_KEPT {
            d.died(("c2".into(), 2), 0);
        }
        assert_eq!(d.seen.len(), 2);
        assert_eq!(d.expect("c1", 1).try_recv().unwrap(), 127);
    }
}
