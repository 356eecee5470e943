//! stderr as people and log collectors see it: whether to colour, and a
//! writer for log lines that never tears the progress bar.
//!
//! Logs and the bar share stderr. Written plainly, a log line lands on the
//! bar's line and the next redraw leaves a stale copy of the bar above it.
//! So every log line goes through `LogWriter`, which hides the bar
//! (indicatif's `suspend`), writes the line and lets the bar redraw below.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use indicatif::ProgressBar;

use crate::cli::Color;

/// The bar on screen, if any: log lines are written around it.
static ACTIVE_BAR: Mutex<Option<ProgressBar>> = Mutex::new(None);
static COLOR: AtomicBool = AtomicBool::new(false);

/// Decides (once, at start) whether stderr gets colour: `always`, `never`,
/// or with `auto` only a terminal without `NO_COLOR` (https://no-color.org:
/// set and not empty).
pub fn init_color(choice: Color) -> bool {
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    let on = match choice {
        Color::Always => true,
        Color::Never => false,
        Color::Auto => !no_color && std::io::stderr().is_terminal(),
    };
    COLOR.store(on, Ordering::Relaxed);
    // indicatif styles through `console`, which decides on its own: align it.
    console::set_colors_enabled_stderr(on);
    on
}

/// Whether stderr output may carry ANSI colour.
pub fn color() -> bool {
    COLOR.load(Ordering::Relaxed)
}

/// Makes `bar` the one log lines are written around (None: plain stderr).
pub(crate) fn set_active_bar(bar: Option<ProgressBar>) {
    *ACTIVE_BAR.lock().unwrap_or_else(|e| e.into_inner()) = bar;
}

/// Ends the active bar: its final state stays on screen (or, `abandon`ed,
/// as it was) and what follows starts on a new line. Under the same lock
/// as log lines, so none is written around a bar that is going away.
pub(crate) fn end_bar(bar: &ProgressBar, abandon: bool) {
    let mut slot = ACTIVE_BAR.lock().unwrap_or_else(|e| e.into_inner());
    *slot = None;
    if abandon {
        bar.abandon();
    } else {
        bar.finish();
    }
    if !bar.is_hidden() {
        let _ = writeln!(std::io::stderr());
    }
}

/// Writes one line (a newline is added) to stderr above the progress bar.
pub fn eprint_line(line: &str) {
    let _ = LogWriter.write_all(format!("{line}\n").as_bytes());
}

/// stderr for `tracing`: each formatted event arrives as one write, which is
/// put above the bar when one is on screen.
#[derive(Debug, Clone, Copy, Default)]
pub struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let bar = ACTIVE_BAR.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let write = || {
            let mut err = std::io::stderr().lock();
            err.write_all(buf).and_then(|()| err.flush())
        };
        match bar {
            Some(bar) if !bar.is_hidden() => bar.suspend(write)?,
            _ => write()?,
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = LogWriter;

    fn make_writer(&'a self) -> Self::Writer {
        LogWriter
    }
}
