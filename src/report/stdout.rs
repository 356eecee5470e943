//! What convoy prints for the user on stdout (summaries, reports, plans,
//! exports). A reader that goes away early (`convoy report | head`) is the
//! reader's choice, not an error: once stdout is a closed pipe, further
//! output is dropped quietly instead of panicking (`println!`) or failing
//! the command. convoy ignores SIGPIPE as every Rust program does, since it
//! also writes to its helper's pipes and to sockets, where a broken pipe is
//! an error to handle, not a reason to die.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

static CLOSED: AtomicBool = AtomicBool::new(false);

/// Writes `text` to stdout as is; other write errors are reported once on
/// stderr and then treated like a closed pipe.
pub(crate) fn say(text: &str) {
    if CLOSED.load(Ordering::Relaxed) {
        return;
    }
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        CLOSED.store(true, Ordering::Relaxed);
        if !is_closed_pipe(&e) {
            eprintln!("error: cannot write to stdout: {e}");
        }
    }
}

/// Whether `e` is stdout's reader having gone away.
pub(crate) fn is_closed_pipe(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::BrokenPipe
}
