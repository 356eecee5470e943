//! The fan-out: one thread takes the events in batches (whatever has
//! arrived) and hands each batch to every reporter in order, then lets
//! each flush. Order matters: the journal comes first and syncs at its
//! flush, so a task counts as done for the others only once its result is
//! durable. A reporter that fails (or panics) is fed nothing more but the
//! run's end; if it is one whose output the user relies on (`critical`),
//! the run is stopped (outage) through the engine's handle.

use std::panic::AssertUnwindSafe;

use tokio::sync::mpsc;

use crate::engine::EngineHandle;
use crate::events::{CancelReason, Event, EventKind};

pub trait Reporter: Send {
    /// What it writes, for messages ("the journal").
    fn name(&self) -> &'static str;

    /// Whether the run must stop when this reporter fails (results or the
    /// event stream the user asked for can no longer be written).
    fn critical(&self) -> bool {
        true
    }

    fn on(&mut self, ev: &Event) -> anyhow::Result<()>;

    /// The end of a batch: make what was given durable or visible.
    fn flush(&mut self) -> anyhow::Result<()> {
        Ok(())
    }

    /// The stream ended.
    fn finish(self: Box<Self>) -> anyhow::Result<()> {
        Ok(())
    }
}

/// Feeds `reporters` until the engine's senders are gone, then finishes
/// them in reverse order (the journal last: it holds the directory's
/// lock). A reporter that failed (or panicked) gets nothing more but the
/// run's last event, so that what it can still write (`summary.json`) is
/// tried, and is finished all the same (the journal still closes). The
/// first failure of a critical reporter, if any, is the error.
pub fn fan_out(
    reporters: Vec<Box<dyn Reporter>>,
    mut rx: mpsc::UnboundedReceiver<Event>,
    engine: EngineHandle,
) -> tokio::task::JoinHandle<anyhow::Result<()>> {
    tokio::task::spawn_blocking(move || {
        let mut all: Vec<Slot> = reporters.into_iter().map(Slot::new).collect();
        let mut first_error: Option<anyhow::Error> = None;
        while let Some(first) = rx.blocking_recv() {
            let mut batch = vec![first];
            while let Ok(ev) = rx.try_recv() {
                batch.push(ev);
            }
            for slot in &mut all {
                let Err(e) = slot.feed(&batch) else { continue };
                let what = format!("{} failed: {e:#}", slot.reporter.name());
                if slot.reporter.critical() {
                    engine.stop(CancelReason::Outage, what.clone());
                    first_error.get_or_insert(anyhow::anyhow!(what));
                } else {
                    tracing::warn!("{what}; the run goes on without it");
                }
            }
        }
        for slot in all.into_iter().rev() {
            let failed = slot.failed;
            let finished = guarded(AssertUnwindSafe(|| slot.reporter.finish()));
            if let (Err(e), false) = (finished, failed) {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    })
}

/// A reporter and whether it failed.
struct Slot {
    reporter: Box<dyn Reporter>,
    failed: bool,
}

impl Slot {
    fn new(reporter: Box<dyn Reporter>) -> Slot {
        Slot {
            reporter,
            failed: false,
        }
    }

    /// Hands it the batch (a failed one: only the run's end, best effort);
    /// an error the first time it fails.
    fn feed(&mut self, batch: &[Event]) -> anyhow::Result<()> {
        let r = &mut self.reporter;
        if self.failed {
            let end = batch
                .iter()
                .filter(|ev| matches!(ev.kind, EventKind::RunFinished(_)));
            for ev in end {
                let _ = guarded(AssertUnwindSafe(|| r.on(ev)));
            }
            return Ok(());
        }
        let result = guarded(AssertUnwindSafe(|| {
            batch.iter().try_for_each(|ev| r.on(ev))?;
            r.flush()
        }));
        self.failed = result.is_err();
        result
    }
}

/// Runs `f`; a panic is an error (a reporter's bug must not take the
/// others, or the run's results, down with it).
fn guarded<T>(f: AssertUnwindSafe<impl FnOnce() -> anyhow::Result<T>>) -> anyhow::Result<T> {
    std::panic::catch_unwind(f).unwrap_or_else(|p| {
        Err(anyhow::anyhow!(
            "it panicked: {}",
            crate::engine::panic_message(&p)
        ))
    })
}
