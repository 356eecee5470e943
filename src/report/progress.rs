//! Live progress. On a terminal: one indicatif line with the elapsed time,
//! a bar, done/total, ok/failed, in-flight, the monitor's gauges and the
//! ETA, sized to the terminal (80 columns hold it). Otherwise (cron, CI, a
//! pipe): one plain line every `monitor.interval`, so logs stay readable.
//! Either way, LLM retries are summed up at most once per interval.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::IsTerminal;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};

use super::retries::RetryDigest;
use super::term;
use crate::events::RunStats;
use crate::monitor::Gauges;

/// What one status line shows.
#[derive(Debug, Clone, Default)]
pub struct Status {
    pub elapsed: Duration,
    pub done: u64,
    pub total: u64,
    pub ok: u64,
    pub failed: u64,
    pub in_flight: u64,
    pub gauges: Gauges,
    /// None until a task of this invocation has finished.
    pub eta: Option<Duration>,
}

/// Counts the bar's draw callback reads; the gauges it reads live.
#[derive(Debug, Default)]
struct Counts {
    done: u64,
    ok: u64,
    failed: u64,
    in_flight: u64,
    /// Tasks done before this invocation started (a continued run): not
    /// this run's progress, so not in its ETA.
    baseline: Option<u64>,
}

impl Counts {
    /// What the status line shows, with `gauges` and the time so far.
    fn status(&self, elapsed: Duration, total: u64, gauges: Gauges) -> Status {
        Status {
            elapsed,
            done: self.done,
            total,
            ok: self.ok,
            failed: self.failed,
            in_flight: self.in_flight,
            gauges,
            eta: eta(
                elapsed,
                self.done,
                self.baseline.unwrap_or(self.done),
                total,
            ),
        }
    }
}

pub struct Progress {
    bar: Option<ProgressBar>,
    counts: Arc<Mutex<Counts>>,
    gauges: Arc<Mutex<Gauges>>,
    total: u64,
    started: Instant,
    last_line: Instant,
    every: Duration,
    retries: RetryDigest,
    /// Below the info level: no progress at all.
    quiet: bool,
}

impl Progress {
    /// A bar when stderr is a terminal, plain lines every `every` otherwise;
    /// neither below the info level (`-q`), where stderr carries only
    /// warnings and errors.
    pub fn new(total: u64, every: Duration) -> Progress {
        let gauges = Arc::new(Mutex::new(Gauges::default()));
        let counts = Arc::new(Mutex::new(Counts::default()));
        let quiet = !tracing::enabled!(tracing::Level::INFO);
        let bar = (std::io::stderr().is_terminal() && !quiet)
            .then(|| bar(total, counts.clone(), gauges.clone()));
        term::set_active_bar(bar.clone());
        let now = Instant::now();
        Progress {
            bar,
            counts,
            gauges,
            total,
            started: now,
            last_line: now,
            every,
            retries: RetryDigest::new(every),
            quiet,
        }
    }

    /// Takes the current counts; plain mode prints at most every `every`.
    /// The bar redraws on its own tick, reading the gauges live.
    pub fn update(&mut self, t: &RunStats) {
        {
            let mut c = self.counts.lock().expect("counts lock");
            c.baseline = Some(t.earlier);
            c.done = t.done;
            c.ok = t.ok();
            c.failed = t.not_ok();
            c.in_flight = t.in_flight;
        }
        match &self.bar {
            Some(bar) => bar.set_position(t.done),
            None => {
                if self.last_line.elapsed() >= self.every {
                    self.last_line = Instant::now();
                    self.print_line();
                }
            }
        }
    }

    /// The monitor's latest figures.
    pub fn gauges(&mut self, g: Gauges) {
        *self.gauges.lock().expect("gauges lock") = g;
    }

    /// Logs (info) the LLM retries by reason since the last such line, at
    /// most once per interval; `totals` are the job's counts so far.
    pub fn retries(&mut self, totals: &BTreeMap<String, u64>) {
        if let Some(line) = self.retries.observe(Instant::now(), totals, false) {
            tracing::info!("{line}");
        }
    }

    fn status(&self) -> Status {
        let gauges = self.gauges.lock().expect("gauges lock").clone();
        let c = self.counts.lock().expect("counts lock");
        c.status(self.started.elapsed(), self.total, gauges)
    }

    fn print_line(&self) {
        if self.quiet {
            return;
        }
        term::eprint_line(&plain_line(&self.status()));
    }

    /// The last word: the bar's final state stays on screen (or a final
    /// plain line is printed), then the retries not yet summed up.
    pub fn finish(&mut self, t: &RunStats, retries: &BTreeMap<String, u64>) {
        self.update(t);
        match self.bar.take() {
            Some(bar) => term::end_bar(&bar, false),
            None => self.print_line(),
        }
        if let Some(line) = self.retries.observe(Instant::now(), retries, true) {
            tracing::info!("{line}");
        }
    }
}

/// A run that ends without `finish` (an error on the way) must not leave
/// the bar ticking on screen, nor log lines routed around it.
impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(bar) = self.bar.take() {
            term::end_bar(&bar, true);
        }
    }
}

fn bar(total: u64, counts: Arc<Mutex<Counts>>, gauges: Arc<Mutex<Gauges>>) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    // The gauges lock may be held by the monitor; never wait for it while
    // drawing (a log line needs the bar's lock): show the last values seen.
    let last_gauges = Arc::new(Mutex::new(Gauges::default()));
    let style = ProgressStyle::with_template("{status}")
        .expect("valid template")
        .with_key(
            "status",
            move |state: &ProgressState, w: &mut dyn std::fmt::Write| {
                let gauges = match gauges.try_lock() {
                    Ok(g) => {
                        let g = g.clone();
                        *last_gauges.lock().expect("gauges copy") = g.clone();
                        g
                    }
                    Err(_) => last_gauges.lock().expect("gauges copy").clone(),
                };
                // Never held while the bar is drawn or written to.
                let status =
                    counts
                        .lock()
                        .expect("counts lock")
                        .status(state.elapsed(), total, gauges);
                let width = console::Term::stderr()
                    .size_checked()
                    .map_or(80, |(_, cols)| cols as usize);
                let _ = w.write_str(&status_line(&status, width, term::color()));
            },
        );
    bar.set_style(style);
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// Time left at the rate of this invocation's tasks; None until one of
/// them finished (tasks of an earlier run of the directory do not count).
fn eta(elapsed: Duration, done: u64, baseline: u64, total: u64) -> Option<Duration> {
    if done >= total {
        return Some(Duration::ZERO);
    }
    let ran = done.saturating_sub(baseline);
    if ran == 0 || elapsed.is_zero() {
        return None;
    }
    let per_task = elapsed.as_secs_f64() / ran as f64;
    Some(Duration::from_secs_f64(
        per_task * total.saturating_sub(done) as f64,
    ))
}

/// "45s", "7m05s", "12m", "3h07m": short enough for the status line.
fn short_duration(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..600 => format!("{}m{:02}s", s / 60, s % 60),
        600..3600 => format!("{}m", s / 60),
        _ if s < 100 * 3600 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        _ => ">99h".to_string(),
    }
}

fn clock(d: Duration) -> String {
    let s = d.as_secs();
    if s < 3600 {
        format!("{:02}:{:02}", s / 60, s % 60)
    } else {
        format!("{}:{:02}:{:02}", s / 3600, (s % 3600) / 60, s % 60)
    }
}

const MIN_BAR: usize = 10;
const MAX_BAR: usize = 30;

/// The status line for a terminal `width` columns wide: elapsed, bar,
/// done/total, then as many of the other fields as fit, most useful first
/// (a leak, the ETA, ok/failed, in flight, the workspace gauges, the LLM
/// limit); the bar takes what is left. Never wider than `width` when the
/// essentials fit, so it never wraps (a wrapped line leaves stale copies).
pub fn status_line(s: &Status, width: usize, color: bool) -> String {
    let g = &s.gauges;
    let eta = s.eta.map_or("?".to_string(), short_duration);
    // (priority, text); shown in this order, admitted by priority.
    let mut fields: Vec<(u8, String)> = vec![
        (1, format!("ok {}", s.ok)),
        (1, format!("fail {}", s.failed)),
        (2, format!("run {}", s.in_flight)),
        (3, format!("fd {}", g.open_fds)),
        (3, format!("tmux {}", unknown_as_mark(g.tmux_sessions))),
        (4, format!("ps {}", unknown_as_mark(g.workspace_procs))),
    ];
    if g.llm_limit > 0 {
        fields.push((4, format!("llm {}/{}", g.llm_in_flight, g.llm_limit)));
    }
    if g.leaks > 0 {
        fields.push((0, format!("LEAK x{}", g.leaks)));
    }
    fields.push((0, format!("eta {eta}")));

    let head = format!("{} ", clock(s.elapsed));
    let count = format!(" {}/{}", s.done, s.total);
    let mut used = head.len() + 2 + MIN_BAR + count.len();
    let mut shown = vec![false; fields.len()];
    for priority in 0..=4 {
        for (i, (p, text)) in fields.iter().enumerate() {
            if *p == priority && used + 1 + text.len() <= width {
                used += 1 + text.len();
                shown[i] = true;
            }
        }
    }
    let bar_width = (MIN_BAR + width.saturating_sub(used)).min(MAX_BAR);
    let filled = (bar_width as u64 * s.done.min(s.total))
        .checked_div(s.total)
        .map_or(bar_width, |f| f as usize);
    let mut bar = "=".repeat(filled);
    if filled < bar_width {
        bar.push('>');
        bar.push_str(&" ".repeat(bar_width - filled - 1));
    }
    let mut line = head;
    if color {
        let _ = write!(line, "[{}]", console::style(bar).cyan().for_stderr());
    } else {
        let _ = write!(line, "[{bar}]");
    }
    line.push_str(&count);
    for ((_, text), show) in fields.iter().zip(shown) {
        if !show {
            continue;
        }
        line.push(' ');
        if color && text.starts_with("LEAK") {
            let _ = write!(line, "{}", console::style(text).red().bold().for_stderr());
        } else {
            line.push_str(text);
        }
    }
    // Narrower than the essentials: cut (a wrapped line would stay behind).
    if console::measure_text_width(&line) > width {
        return console::truncate_str(&console::strip_ansi_codes(&line), width, "").into_owned();
    }
    line
}

/// A workspace gauge the last sample got no answer for shows as `?`,
/// never as 0.
fn unknown_as_mark(v: Option<u64>) -> String {
    v.map_or_else(|| "?".to_string(), |n| n.to_string())
}

/// The plain line for logs (no width limit, no colour).
pub fn plain_line(s: &Status) -> String {
    let g = &s.gauges;
    let mut line = format!(
        "progress: {}/{} done, ok {} failed {} in-flight {} | fds {} sessions {} procs {}",
        s.done,
        s.total,
        s.ok,
        s.failed,
        s.in_flight,
        g.open_fds,
        unknown_as_mark(g.tmux_sessions),
        unknown_as_mark(g.workspace_procs)
    );
    if g.llm_limit > 0 {
        let _ = write!(line, " | llm {}/{}", g.llm_in_flight, g.llm_limit);
    }
    if g.leaks > 0 {
        let _ = write!(line, " | LEAK x{}", g.leaks);
    }
    let _ = write!(
        line,
        ", elapsed {}, eta {}",
        short_duration(s.elapsed),
        s.eta.map_or("?".to_string(), short_duration)
    );
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    fn big() -> Status {
        Status {
            elapsed: Duration::from_secs(3 * 3600 + 61),
            done: 123_456,
            total: 1_000_000,
            ok: 120_000,
            failed: 3_456,
            in_flight: 1024,
            gauges: Gauges {
                open_fds: 2015,
                tmux_sessions: Some(1024),
                workspace_procs: Some(3072),
                llm_in_flight: 1000,
                llm_limit: 1024,
                leaks: 3,
            },
            eta: Some(Duration::from_secs(20 * 3600)),
        }
    }

    #[test]
    fn the_line_fits_80_columns_even_with_big_numbers() {
        let line = status_line(&big(), 80, false);
        assert!(line.chars().count() <= 80, "{} columns: {line}", line.len());
        // What matters most survives the squeeze.
        assert!(line.contains("123456/1000000"), "{line}");
        assert!(
            line.contains("LEAK x3") && line.contains("eta 20h00m"),
            "{line}"
        );
        assert!(line.contains("ok 120000 fail 3456"), "{line}");
    }

    #[test]
    fn a_typical_job_shows_every_field_in_80_columns() {
        let s = Status {
            elapsed: Duration::from_secs(83),
            done: 1200,
            total: 10_000,
            ok: 1190,
            failed: 10,
            in_flight: 128,
            gauges: Gauges {
                open_fds: 150,
                tmux_sessions: Some(128),
                workspace_procs: Some(400),
                llm_in_flight: 100,
                llm_limit: 256,
                ..Gauges::default()
            },
            eta: Some(Duration::from_secs(605)),
        };
        let line = status_line(&s, 80, false);
        assert!(line.len() <= 80, "{} columns: {line}", line.len());
        for field in [
            "01:23 [",
            "1200/10000",
            "ok 1190 fail 10",
            "run 128",
            "fd 150 tmux 128",
            "eta 10m",
        ] {
            assert!(line.contains(field), "{field:?} missing: {line}");
        }
    }

    #[test]
    fn narrow_terminals_drop_fields_but_never_wrap() {
        for width in [10, 25, 40, 50, 60, 100, 200] {
            let line = status_line(&big(), width, false);
            assert!(line.len() <= width, "{width}: {line}");
            let coloured = status_line(&big(), width, true);
            assert!(
                console::measure_text_width(&coloured) <= width,
                "{width}: {coloured}"
            );
        }
        // With colour the visible width is the same.
        let plain = status_line(&big(), 80, false);
        let coloured = status_line(&big(), 80, true);
        assert_eq!(console::measure_text_width(&coloured), plain.len());
    }

    #[test]
    fn eta_is_unknown_until_a_task_of_this_run_finished() {
        let s = Status {
            total: 10,
            ..Status::default()
        };
        assert!(status_line(&s, 80, false).ends_with("eta ?"));
        assert!(plain_line(&s).ends_with("eta ?"));
        // Nothing left (a continued run that had nothing to do): no wait.
        assert_eq!(eta(Duration::from_secs(1), 7, 7, 7), Some(Duration::ZERO));
        // A continued run: 500 done before, none yet now.
        assert_eq!(eta(Duration::from_secs(9), 500, 500, 1000), None);
        // 10 tasks in 10 s, 490 left: 490 s (the 500 skipped ones do not
        // make it look faster).
        assert_eq!(
            eta(Duration::from_secs(10), 510, 500, 1000),
            Some(Duration::from_secs(490))
        );
    }

    #[test]
    fn workspace_gauges_the_workspace_did_not_answer_show_as_unknown_not_zero() {
        let s = Status::default();
        assert!(status_line(&s, 120, false).contains("tmux ? ps ?"));
        assert!(plain_line(&s).contains("sessions ? procs ?"));
    }
}
