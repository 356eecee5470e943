//! The fan-out: one thread takes the events in batches (whatever has
//! arrived) and hands each batch to every reporter in order, then lets
//! each flush. Order matters: the journal comes first and syncs at its
//! flush, so a task counts as done for the others only once its result is
//! durable. A reporter that fails is fed nothing more; if it is one whose
//! output the user relies on (`critical`), the run is stopped (outage)
//! through the engine's handle.

use tokio::sync::mpsc;

use crate::engine::EngineHandle;
use crate::events::{CancelReason, Event};

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

/// Feeds `reporters` until the engine drops its sender, then finishes
/// them in reverse order (the journal last: it holds the directory's
/// lock). The first failure of a critical reporter, if any, is the
/// error.
pub fn fan_out(
    reporters: Vec<Box<dyn Reporter>>,
    mut rx: mpsc::UnboundedReceiver<Event>,
    engine: EngineHandle,
) -> tokio::task::JoinHandle<anyhow::Result<()>> {
    tokio::task::spawn_blocking(move || {
        let mut live: Vec<Option<Box<dyn Reporter>>> = reporters.into_iter().map(Some).collect();
        let mut first_error: Option<anyhow::Error> = None;
        let mut fail = |slot: &mut Option<Box<dyn Reporter>>, e: anyhow::Error| {
            let r = slot.take().expect("a live reporter");
            let what = format!("{} failed: {e:#}", r.name());
            if r.critical() {
                engine.stop(CancelReason::Outage, what.clone());
                first_error.get_or_insert(anyhow::anyhow!(what));
            } else {
                tracing::warn!("{what}; the run goes on without it");
            }
        };
        while let Some(first) = rx.blocking_recv() {
            let mut batch = vec![first];
            while let Ok(ev) = rx.try_recv() {
                batch.push(ev);
            }
            for slot in &mut live {
                let Some(r) = slot else { continue };
                let result = batch
                    .iter()
                    .try_for_each(|ev| r.on(ev))
                    .and_then(|()| r.flush());
                if let Err(e) = result {
                    fail(slot, e);
                }
            }
        }
        for slot in live.iter_mut().rev() {
            if let Some(r) = slot.take() {
                if let Err(e) = r.finish() {
                    first_error.get_or_insert(e);
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    })
}
