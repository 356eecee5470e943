//! What each conversation is waiting on, for `convoy ctl status`: its
//! model handle and its session wrapped so that every call marks the
//! conversation as waiting on the model or on a command, and since when.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::state::Activity;
use crate::agent::{Model, Shell};
use crate::llm::{ChatReply, LlmError};
use crate::workspace::{RunOutput, WorkspaceError};

/// How much of a command `status` shows.
const COMMAND_SHOWN: usize = 80;

fn mark(activity: &Mutex<Activity>, waiting_on: &'static str, command: Option<String>) {
    let mut a = activity.lock().expect("activity lock");
    a.waiting_on = waiting_on;
    a.command = command;
    a.since = Instant::now();
}

/// A model handle that marks its conversation as waiting on the model.
pub(super) struct Tracked<M> {
    inner: M,
    activity: Arc<Mutex<Activity>>,
}

impl<M> Tracked<M> {
    pub fn new(inner: M, activity: Arc<Mutex<Activity>>) -> Tracked<M> {
        Tracked { inner, activity }
    }
}

impl<M: Model + Sync> Model for Tracked<M> {
    fn complete(
        &self,
        messages: &[Value],
        tools: &Value,
    ) -> impl Future<Output = Result<ChatReply, LlmError>> + Send {
        mark(&self.activity, "model", None);
        self.inner.complete(messages, tools)
    }
}

/// A session that marks its conversation as waiting on a command.
pub(super) struct TrackedShell<S> {
    inner: S,
    activity: Arc<Mutex<Activity>>,
}

impl<S> TrackedShell<S> {
    pub fn new(inner: S, activity: Arc<Mutex<Activity>>) -> TrackedShell<S> {
        TrackedShell { inner, activity }
    }

    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: Shell + Sync> Shell for TrackedShell<S> {
    fn run(
        &self,
        command: &str,
        timeout: Duration,
        max_output_bytes: u64,
    ) -> impl Future<Output = Result<RunOutput, WorkspaceError>> + Send {
        let shown: String = command.chars().take(COMMAND_SHOWN).collect();
        mark(&self.activity, "command", Some(shown));
        self.inner.run(command, timeout, max_output_bytes)
    }
}
