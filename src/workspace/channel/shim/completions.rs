//! Completion records: the line a session's shell writes to the shared
//! FIFO when a command is done (`NAME K STATUS prompt|exit|ready`), and the
//! requests waiting for them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::oneshot;

/// Requests waiting for a completion record, keyed by (session, sequence).
pub(super) type Waiters = Arc<Mutex<HashMap<(String, u64), oneshot::Sender<Completion>>>>;

#[derive(Debug, Clone, Copy)]
pub(super) struct Completion {
    pub status: i32,
    pub shell_exited: bool,
}

/// Reads completion records and wakes their waiters.
pub(super) async fn read_completions(receiver: tokio::net::unix::pipe::Receiver, waiters: Waiters) {
    let mut lines = BufReader::new(receiver).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let mut parts = line.split(' ');
        let (Some(name), Some(seq), Some(status)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let (Ok(seq), Ok(status)) = (seq.parse::<u64>(), status.parse::<i32>()) else {
            continue;
        };
        let shell_exited = parts.next() == Some("exit");
        let waiter = waiters
            .lock()
            .expect("waiters lock")
            .remove(&(name.to_string(), seq));
        if let Some(tx) = waiter {
            let _ = tx.send(Completion {
                status,
                shell_exited,
            });
        }
    }
}
