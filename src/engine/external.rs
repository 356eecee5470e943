//! An external agent's attempt (`agent.kind = "external"`): the job's own
//! program runs in the conversation's session and talks to the model
//! through the gateway with a token of its own, valid while it runs. Each
//! of its model calls is recorded as it is answered (`calls.jsonl`); its
//! trajectory is the longest chain of its calls; its answer is what it
//! wrote to `CONVOY_ANSWER`.
//!
//! The prompts and the answer live in the session's own directory
//! (`$CONVOY_SESSION_DIR`, the helper's for this session: mode 0700, its
//! uid's), which no other session can read. Not HOME: without an
//! environment, sessions of the local workspace share the user's.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;

use super::attempt::Attempt;
use super::phases::tail;
use super::ports::{Models, Sessions};
use super::state::{Activity, Shared};
use crate::agent::{AgentError, Conversation, Shell};
use crate::events::EventKind;
use crate::tasks::{quote, Task};

/// How long writing the prompt files and reading the answer may take.
const FILES_TIMEOUT: Duration = Duration::from_secs(60);
/// What the record keeps of the agent's own output.
const OUTPUT_TAIL: usize = 2000;
/// The most of its output the helper sends back (head and tail).
const MAX_OUTPUT: u64 = 64 * 1024;
/// The most of its answer that is read.
const MAX_ANSWER: u64 = 16 << 20;

/// The gateway as the engine reaches it: the tokens of the running
/// conversations and the port agents call.
#[derive(Clone)]
pub struct GatewayAccess {
    pub tokens: Arc<crate::gateway::Tokens>,
    pub port: u16,
}

impl std::fmt::Debug for GatewayAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "GatewayAccess {{ port: {} }}", self.port)
    }
}

/// What the attempt's deadline leaves the agent's command: the rest,
/// less the time to interrupt it, read what it did and answer, so that
/// the command's own timeout (not the attempt's) ends it and its calls,
/// trajectory and output are kept.
const WIND_DOWN: Duration = Duration::from_secs(5);

/// Runs the task's agent command in `session` until `deadline`; fills
/// `conv` with its trajectory, usage and output; returns its answer.
#[allow(clippy::too_many_arguments)]
pub(super) async fn run<W: Sessions, M: Models>(
    task: &Task,
    run: u32,
    command: &str,
    shared: &Shared<W, M>,
    session: &impl Shell,
    conv: &mut Conversation,
    activity: &Arc<Mutex<Activity>>,
    deadline: std::time::Instant,
) -> Result<String, Attempt> {
    let cfg = &shared.cfg;
    let Some(gw) = &cfg.gateway else {
        return Err(Attempt::External(
            "the model gateway is not running (agent.kind = \"external\" needs it)".into(),
        ));
    };
    let (tx, mut calls) = mpsc::unbounded_channel();
    let grant = gw.tokens.grant(crate::gateway::Conversation::new(
        task.id.clone(),
        run,
        shared.models.forwarder(task),
        cfg.limits.max_steps,
        move |c| {
            let _ = tx.send(c);
        },
    ));
    let files = format!(
        "printf %s {} >\"$CONVOY_SESSION_DIR/agent.prompt\" && printf %s {} >\"$CONVOY_SESSION_DIR/agent.system\" && rm -f \"$CONVOY_SESSION_DIR/agent.answer\"",
        quote(&task.user),
        quote(task.system.as_deref().unwrap_or_default())
    );
    let made = session
        .run(&files, FILES_TIMEOUT, 4096)
        .await
        .map_err(|e| Attempt::Agent(AgentError::Workspace(e)))?;
    if made.exit_code != 0 || made.timed_out {
        return Err(Attempt::External(format!(
            "the agent's prompt files could not be written: {}",
            made.output.trim()
        )));
    }
    let base = format!("http://127.0.0.1:{}/v1", gw.port);
    let line = format!(
        "export OPENAI_BASE_URL={base} OPENAI_API_BASE={base} OPENAI_API_KEY={} CONVOY_TASK_ID={} \
         CONVOY_PROMPT_FILE=\"$CONVOY_SESSION_DIR/agent.prompt\" CONVOY_SYSTEM_FILE=\"$CONVOY_SESSION_DIR/agent.system\" \
         CONVOY_ANSWER=\"$CONVOY_SESSION_DIR/agent.answer\"; {command}",
        grant.token,
        quote(&task.id)
    );
    *activity.lock().expect("activity lock") = Activity::new("agent");
    let ran = {
        let left = deadline
            .saturating_duration_since(std::time::Instant::now())
            .saturating_sub(WIND_DOWN)
            .max(Duration::from_secs(1));
        let running = session.run(&line, left, MAX_OUTPUT);
        tokio::pin!(running);
        loop {
            tokio::select! {
                out = &mut running => break out,
                Some(call) = calls.recv() => record(shared, call),
            }
        }
    };
    let summary = grant.conversation.summary();
    // The token ends with the agent: anything it left running is refused.
    drop(grant);
    while let Ok(call) = calls.try_recv() {
        record(shared, call);
    }
    if summary.calls > 0 {
        conv.messages = summary.messages;
        conv.turns = summary.turns;
    }
    conv.steps = summary.calls;
    conv.usage = summary.usage;
    // Its own tools; none known when it made no call.
    conv.tools = Some(summary.tools.unwrap_or_else(|| serde_json::json!([])));
    let out = ran.map_err(|e| Attempt::Agent(AgentError::Workspace(e)))?;
    conv.agent_output = Some(tail(&out.output, OUTPUT_TAIL));
    if let Some(why) = summary.fatal {
        return Err(Attempt::Fatal(why));
    }
    if out.timed_out {
        return Err(Attempt::Deadline(cfg.task_timeout));
    }
    if summary.over_max_steps {
        return Err(Attempt::Agent(AgentError::MaxSteps(cfg.limits.max_steps)));
    }
    if out.exit_code != 0 {
        return Err(Attempt::External(format!(
            "the agent exited with status {}; its output ends: {}",
            out.exit_code,
            tail(&out.output, 500).trim()
        )));
    }
    let answer = session
        .run(
            "cat \"$CONVOY_SESSION_DIR/agent.answer\" 2>/dev/null || true",
            FILES_TIMEOUT,
            MAX_ANSWER,
        )
        .await
        .map_err(|e| Attempt::Agent(AgentError::Workspace(e)))?;
    Ok(answer.output)
}

fn record<W, M>(shared: &Shared<W, M>, call: crate::gateway::CallRecord) {
    shared.emit.emit(EventKind::CallDone {
        id: call.id.clone(),
        attempt: call.attempt,
        seq: call.seq,
        status: call.status,
        record: Box::new(call),
    });
}
