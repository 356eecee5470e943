//! Live progress. On a terminal: an indicatif bar with done/ok/failed,
//! in-flight and ETA. Otherwise (cron, CI, a pipe): one plain line every
//! few seconds, so logs stay readable.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use std::sync::{Arc, Mutex};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::summary::Tally;
use crate::monitor::Gauges;

pub struct Progress {
    bar: Option<ProgressBar>,
    gauges: Arc<Mutex<Gauges>>,
    total: u64,
    started: Instant,
    last_line: Instant,
    every: Duration,
}

impl Progress {
    /// A bar when stderr is a terminal, plain lines every `every` otherwise.
    pub fn new(total: u64, every: Duration, gauges: Arc<Mutex<Gauges>>) -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template(
                    "{elapsed_precise} [{bar:30.cyan/blue}] {pos}/{len} {msg} eta {eta}",
                )
                .expect("valid template")
                .progress_chars("=> "),
            );
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        let now = Instant::now();
        Progress {
            bar,
            gauges,
            total,
            started: now,
            last_line: now,
            every,
        }
    }

    /// Shows the current counts; plain mode prints at most every `every`.
    pub fn update(&mut self, t: &Tally) {
        let counts = self.counts(t);
        match &self.bar {
            Some(bar) => {
                bar.set_position(t.done);
                bar.set_message(counts);
            }
            None => {
                if self.last_line.elapsed() >= self.every {
                    self.last_line = Instant::now();
                    self.print_line(t, &counts);
                }
            }
        }
    }

    /// Task counts, then what the monitor saw last: convoy's FDs, tmux
    /// sessions and workspace processes, LLM requests in flight against the
    /// adaptive limit, and a loud LEAK once a rule tripped.
    fn counts(&self, t: &Tally) -> String {
        let g = self.gauges.lock().expect("gauges lock").clone();
        let mut s = format!(
            "ok {} failed {} in-flight {} | fds {} sessions {} procs {}",
            t.ok(),
            t.not_ok(),
            t.in_flight,
            g.open_fds,
            g.tmux_sessions,
            g.workspace_procs
        );
        if g.llm_limit > 0 {
            s.push_str(&format!(" | llm {}/{}", g.llm_in_flight, g.llm_limit));
        }
        if g.leaks > 0 {
            s.push_str(&format!(" | LEAK x{}", g.leaks));
        }
        s
    }

    fn print_line(&self, t: &Tally, counts: &str) {
        let elapsed = self.started.elapsed().as_secs_f64();
        let rate = t.done as f64 / elapsed.max(1e-9);
        let eta = if rate > 0.0 {
            format!("{:.0}s", (self.total.saturating_sub(t.done)) as f64 / rate)
        } else {
            "?".into()
        };
        eprintln!(
            "progress: {}/{} done, {counts}, {rate:.1}/s, elapsed {elapsed:.0}s, eta {eta}",
            t.done, self.total
        );
    }

    /// The last word: clears the bar, or prints a final plain line.
    pub fn finish(&mut self, t: &Tally) {
        match self.bar.take() {
            Some(bar) => bar.finish_and_clear(),
            None => {
                let counts = self.counts(t);
                self.print_line(t, &counts);
            }
        }
    }
}
