//! convoy's own tools (`bash`, `finish`), how a model's tool call is
//! parsed (the `Toolbox` says what a call to each offered tool means), and
//! how command output becomes an observation.

use std::time::Duration;

use serde_json::{json, Value};

use super::toolbox::Toolbox;
use crate::workspace::RunOutput;

/// A parsed tool call, answered under its `id`.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolCall {
    pub id: String,
    pub action: Action,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Bash {
        command: String,
        timeout: Option<Duration>,
    },
    Finish {
        message: String,
    },
    /// A call to a manifest tool: its command, rendered with the call's
    /// arguments, and the tool's own timeout if it has one.
    Tool {
        name: String,
        command: String,
        timeout: Option<Duration>,
    },
    /// A call the model got wrong; the error goes back as the observation
    /// so the model can correct itself.
    Invalid {
        error: String,
    },
}

/// The schema of `bash`.
pub(super) fn bash_schema() -> Value {
    json!({
        "type": "function",
        "function": {
            "name": "bash",
            "description": "Run a shell command in your own persistent bash session: the working directory and exported variables carry over to the next call. Stdin is closed. Returns stdout and stderr as written, then the exit code if it is not 0.",
            "parameters": {
                "type": "object",
                "properties": {
                    "command": { "type": "string", "description": "The command line to run." },
                    "timeout": { "type": "integer", "description": "Seconds before the command is interrupted (default set by the job)." }
                },
                "required": ["command"]
            }
        }
    })
}

/// The schema of `finish`.
pub(super) fn finish_schema() -> Value {
    json!({
        "type": "function",
        "function": {
            "name": "finish",
            "description": "End the task with your final answer.",
            "parameters": {
                "type": "object",
                "properties": {
                    "message": { "type": "string", "description": "The final answer." }
                },
                "required": ["message"]
            }
        }
    })
}

/// Parses one entry of an assistant message's `tool_calls` against the
/// tools offered.
pub fn parse_call(index: usize, call: &Value, tools: &Toolbox) -> ToolCall {
    // The same id the canonical message sent back carries.
    let id = crate::llm::call_id(call, index);
    let action = parse_action(call, tools);
    ToolCall { id, action }
}

fn parse_action(call: &Value, tools: &Toolbox) -> Action {
    let invalid = |error: String| Action::Invalid { error };
    let Some(name) = call.pointer("/function/name").and_then(Value::as_str) else {
        return invalid("error: the tool call has no function name".into());
    };
    // Arguments are a JSON string per the API; some servers send an object.
    let args = match call.pointer("/function/arguments") {
        Some(Value::String(s)) if s.trim().is_empty() => json!({}),
        Some(Value::String(s)) => match serde_json::from_str::<Value>(s) {
            Ok(v @ Value::Object(_)) => v,
            Ok(_) => {
                return invalid(format!(
                    "error: the arguments of `{name}` must be a JSON object"
                ))
            }
            Err(e) => {
                return invalid(format!(
                    "error: the arguments of `{name}` are not valid JSON ({e}); send a JSON object"
                ))
            }
        },
        Some(v @ Value::Object(_)) => v.clone(),
        None | Some(Value::Null) => json!({}),
        Some(_) => {
            return invalid(format!(
                "error: the arguments of `{name}` must be a JSON object"
            ))
        }
    };
    tools.action(name, &args)
}

/// A call to `bash` with these arguments.
pub(super) fn bash_action(args: &Value) -> Action {
    match args.get("command").and_then(Value::as_str) {
        Some(command) => Action::Bash {
            command: command.to_string(),
            timeout: args
                .get("timeout")
                .and_then(Value::as_f64)
                .filter(|s| *s > 0.0 && s.is_finite())
                .map(|s| Duration::from_secs_f64(s.min(86_400.0))),
        },
        None => Action::Invalid {
            error: "error: `bash` needs a string argument `command`".into(),
        },
    }
}

/// A call to `finish` with these arguments.
pub(super) fn finish_action(args: &Value) -> Action {
    Action::Finish {
        message: args
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
    }
}

/// The text a model sees for a command's result. Output comes first, byte
/// for byte; notes about the exit code, timeout or shell follow.
pub fn observation(out: &RunOutput, timeout: Duration, max_chars: usize) -> String {
    let mut s = String::new();
    if out.shell_restarted {
        s.push_str("[the previous shell had exited; this command ran in a new shell]\n");
    }
    s.push_str(&out.output);
    let mut note = |text: String| {
        if !s.is_empty() && !s.ends_with('\n') {
            s.push('\n');
        }
        s.push_str(&text);
    };
    if out.timed_out {
        let how = if out.killed {
            "interrupted with C-c, then its process group was killed"
        } else {
            "interrupted with C-c"
        };
        note(format!(
            "[command timed out after {}; {how}]",
            humantime::format_duration(timeout)
        ));
    } else if out.exit_code != 0 {
        note(format!("[exit code: {}]", out.exit_code));
    }
    if out.shell_exited {
        note("[the shell exited; the next command starts in a new shell]".into());
    }
    truncate(&s, max_chars)
}

/// Keeps the head and tail of `s` within `max` characters and says how many
/// were cut from the middle.
pub fn truncate(s: &str, max: usize) -> String {
    let total = s.chars().count();
    if total <= max {
        return s.to_string();
    }
    let keep = max.saturating_sub(60);
    let head = keep / 2;
    let tail = keep - head;
    let cut = total - head - tail;
    let head_end = s.char_indices().nth(head).map_or(s.len(), |(i, _)| i);
    let tail_start = s
        .char_indices()
        .nth(total - tail)
        .map_or(s.len(), |(i, _)| i);
    format!(
        "{}\n[... {cut} characters cut ...]\n{}",
        &s[..head_end],
        &s[tail_start..]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_arguments_and_unknown_tools_become_errors() {
        let tools = Toolbox::builtin();
        let c = json!({"id": "a", "function": {"name": "bash", "arguments": "{oops"}});
        assert!(matches!(
            parse_call(0, &c, &tools).action,
            Action::Invalid { .. }
        ));
        let c = json!({"id": "a", "function": {"name": "bash", "arguments": "[\"ls\"]"}});
        assert!(matches!(
            parse_call(0, &c, &tools).action,
            Action::Invalid { .. }
        ));
        let c = json!({"id": "a", "function": {"name": "python", "arguments": "{}"}});
        match parse_call(0, &c, &tools).action {
            Action::Invalid { error } => assert_eq!(
                error,
                "error: there is no tool `python`; the tools are `bash` and `finish`"
            ),
            other => panic!("{other:?}"),
        }
        let c = json!({"id": "b", "function": {"name": "bash", "arguments": "{\"command\":\"ls\",\"timeout\":5}"}});
        assert_eq!(
            parse_call(0, &c, &tools),
            ToolCall {
                id: "b".into(),
                action: Action::Bash {
                    command: "ls".into(),
                    timeout: Some(Duration::from_secs(5))
                }
            }
        );
    }

    #[test]
    fn truncate_keeps_head_and_tail_and_counts() {
        let s: String = (0..1000)
            .map(|i| char::from(b'a' + (i % 26) as u8))
            .collect();
        let t = truncate(&s, 300);
        assert!(t.chars().count() <= 300);
        assert!(t.starts_with("abc"));
        assert!(t.ends_with(&s[s.len() - 100..]));
        assert!(t.contains("[... 760 characters cut ...]"), "{t}");
        assert_eq!(truncate("héllo", 300), "héllo");
    }

    #[test]
    fn observation_is_the_output_exactly_when_all_went_well() {
        let out = RunOutput {
            output: "a\tb\n☃ no newline".into(),
            ..Default::default()
        };
        assert_eq!(
            observation(&out, Duration::from_secs(1), 1000),
            "a\tb\n☃ no newline"
        );
        let out = RunOutput {
            output: "x".into(),
            exit_code: 3,
            ..Default::default()
        };
        assert_eq!(
            observation(&out, Duration::from_secs(1), 1000),
            "x\n[exit code: 3]"
        );
    }
}
