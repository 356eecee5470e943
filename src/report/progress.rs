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
                if bar.position() < t.earlier {
                    // Tasks earlier runs finished are not this run's
                    // progress: the bar starts there, its rate from zero.
                    bar.set_position(t.earlier);
                    bar.reset_eta();
                }
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
        let (rate, eta) = rate_and_eta(t, self.total, elapsed);
        let rate = rate.map_or(String::new(), |r| format!(", {r:.1}/s"));
        eprintln!(
            "progress: {}/{} done, {counts}{rate}, elapsed {elapsed:.0}s, eta {eta}",
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

/// This run's rate (tasks it finished per second; none before it finished
/// one) and the ETA it gives for what is left (`?` while there is no rate).
pub fn rate_and_eta(t: &Tally, total: u64, elapsed_s: f64) -> (Option<f64>, String) {
    let rate = t.rate(elapsed_s);
    let left = total.saturating_sub(t.done);
    let eta = match rate {
        _ if left == 0 => "0s".to_string(),
        Some(r) => format!("{:.0}s", left as f64 / r),
        None => "?".to_string(),
    };
    (rate, eta)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tally of `earlier` tasks from earlier runs and `now` of this one.
    fn tally(earlier: u64, now: u64) -> Tally {
        Tally {
            done: earlier + now,
            earlier,
            ..Default::default()
        }
    }

    #[test]
    fn rate_and_eta_count_only_this_runs_tasks() {
        // Resumed, nothing finished yet: no rate, ETA unknown.
        assert_eq!(rate_and_eta(&tally(90, 0), 100, 5.0), (None, "?".into()));
        // 5 tasks in 10 s, 5 left: 0.5/s and 10 s (not 9.5/s and 1 s).
        assert_eq!(
            rate_and_eta(&tally(90, 5), 100, 10.0),
            (Some(0.5), "10s".into())
        );
    }

    #[test]
    fn a_resumed_run_with_nothing_left_has_no_rate_and_no_wait() {
        assert_eq!(rate_and_eta(&tally(1, 0), 1, 3.0), (None, "0s".into()));
    }
}
