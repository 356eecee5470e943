//! Learning that a shell's process ended, and removing its pane.
//!
//! Every pane stays when its process ends (`remain-on-exit on`), so that
//! its exit status can be read. tmux's `pane-died` hook does one thing:
//! `wait-for -S convoy-died`, which prints nothing, cannot fail and never
//! waits. A watcher of the helper's waits on that channel with a tmux
//! client of its own (never the control client, whose answers must stay
//! in step); on each wake it lists the dead panes of every session, tells
//! each death to whoever waits for it ([`super::completions::Deaths`]),
//! and removes the pane by its id.
//!
//! No death is missed although tmux 3.3a keeps no count of signals: a
//! signal wakes every waiter; one with no waiter marks the channel, and a
//! second one with no waiter clears that mark again (`cmd-wait-for.c`). So
//! the watcher registers its next wait before it lists: its client runs
//! `display-message -p ready ; wait-for convoy-died`, and both commands run
//! in one pass of that client's queue, so by the time `ready` is read the
//! wait is registered. A death before the listing is in the listing; one
//! after it wakes the registered wait, and the next round lists it. The
//! watcher also lists every few seconds while it waits, in case.
//!
//! Why not a hook that reports the death itself: with the report in a
//! foreground `run-shell` (the helper's until 2026-11-26), long runs on
//! tmux 3.3a slowed down and its server grew (to 290 MB over 25,000
//! conversations), and tmux drops a notification that comes just after
//! such a job ends, so some deaths were never told; with `run-shell -b`,
//! the job inherits the dead session's environment, so the session's
//! sweep kills it, and tmux then prints into the view mode of a pane that
//! a conversation types into (README, "A fleet of containers").

use std::time::Duration;

use super::super::tmux::{Tmux, CONTROL_SESSION};
use super::completions::SharedDeaths;

/// The wait channel the `pane-died` hook signals.
const CHANNEL: &str = "convoy-died";

/// The `pane-died` hook.
pub(super) fn hook() -> String {
    format!("wait-for -S {CHANNEL}")
}

/// How often the watcher lists while it waits, should a wake ever be
/// missed.
const SAFETY_WAKE: Duration = Duration::from_secs(5);

/// How long a new wait may take to say it is registered.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Watches for dead panes until the tmux server is gone.
pub(super) async fn watch(tmux: Tmux, deaths: SharedDeaths) {
    loop {
        let Some(mut wait) = register(&tmux).await else {
            if tmux.server_gone() {
                return;
            }
            // No client could wait (out of processes?): list now and then
            // all the same.
            reap(&tmux, &deaths).await;
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        };
        // After registering: a death from before (a previous helper's too)
        // is in this listing, one from after wakes the wait.
        reap(&tmux, &deaths).await;
        loop {
            tokio::select! {
                _ = wait.wait() => break,
                () = tokio::time::sleep(SAFETY_WAKE) => reap(&tmux, &deaths).await,
            }
        }
    }
}

/// A tmux client waiting on the channel, once it says its wait is
/// registered. Killed only when it does not say so in time (or with the
/// helper): tmux keeps a waiting client that went away for as long as the
/// server lives, a small cost that must stay rare.
async fn register(tmux: &Tmux) -> Option<tokio::process::Child> {
    use tokio::io::AsyncBufReadExt;
    let mut child = tmux
        .client(&["display-message", "-p", "ready", ";", "wait-for", CHANNEL])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .ok()?;
    let mut stdout = tokio::io::BufReader::new(child.stdout.take()?);
    let mut said = String::new();
    match tokio::time::timeout(READY_TIMEOUT, stdout.read_line(&mut said)).await {
        Ok(Ok(_)) if said.trim() == "ready" => Some(child),
        _ => None,
    }
}

/// Tells every dead pane's death and removes the pane.
async fn reap(tmux: &Tmux, deaths: &SharedDeaths) {
    let Ok(listed) = tmux
        .call(&[
            "list-panes",
            "-a",
            "-f",
            "#{pane_dead}",
            "-F",
            "#{session_name} #{pane_id} #{pane_dead_status} #{pane_dead_signal}",
        ])
        .await
    else {
        return;
    };
    for (session, pane, status) in listed.lines().filter_map(parse_dead) {
        // The control client's session stays: its client needs it.
        if session == CONTROL_SESSION {
            continue;
        }
        deaths
            .lock()
            .expect("deaths lock")
            .died((session.to_string(), pane), status);
        // Gone already (a close removed its session) is fine.
        let _ = tmux.call(&["kill-pane", "-t", &format!("%{pane}")]).await;
    }
}

/// `NAME %PANE STATUS SIGNAL`: the session, the pane id without its `%`,
/// and the exit status (-1 for a shell killed by a signal, which has
/// none). A pane whose terminal closed before tmux learned how its process
/// ended has neither yet (`exec` of a program that closed it): not told,
/// not removed; `pane-died` fires once tmux knows, and wakes the watcher.
fn parse_dead(line: &str) -> Option<(&str, u32, i32)> {
    let mut parts = line.split(' ');
    let session = parts.next()?;
    let pane = parts.next()?.strip_prefix('%')?.parse().ok()?;
    let status = parts.next().unwrap_or("");
    let signal = parts.next().unwrap_or("");
    match (status.parse().ok(), signal.is_empty()) {
        (Some(status), _) => Some((session, pane, status)),
        (None, false) => Some((session, pane, -1)),
        (None, true) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listed_dead_pane_parses_and_one_without_its_end_yet_waits() {
        assert_eq!(parse_dead("c3 %4242 127 "), Some(("c3", 4242, 127)));
        assert_eq!(parse_dead("c3 %7  9"), Some(("c3", 7, -1)));
        assert_eq!(parse_dead("c3 %7  "), None, "how it ended is not known yet");
        assert_eq!(parse_dead("c3 7 0 "), None);
        assert_eq!(parse_dead(""), None);
    }
}
