//! The `--events` encoding: one JSON object per line, `type` and
//! `elapsed_s` first, then the event's fields. The schema is in the
//! README; fields are only ever added.

use serde_json::{Map, Value};

use super::kind::Event;

/// The event as one line of JSON, newline included.
pub fn to_json_line(ev: &Event) -> serde_json::Result<String> {
    let fields = match serde_json::to_value(&ev.kind)? {
        Value::Object(m) => m,
        other => unreachable!("every event kind serializes to an object, not {other}"),
    };
    let mut out = Map::with_capacity(fields.len() + 1);
    let mut fields = fields.into_iter();
    // `type` comes first from serde's internal tagging.
    if let Some((k, v)) = fields.next() {
        out.insert(k, v);
    }
    let elapsed = (ev.elapsed.as_secs_f64() * 1000.0).round() / 1000.0;
    out.insert("elapsed_s".into(), elapsed.into());
    out.extend(fields);
    let mut line = serde_json::to_string(&Value::Object(out))?;
    line.push('\n');
    Ok(line)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{CancelReason, EventKind};
    use std::time::Duration;

    #[test]
    fn type_and_elapsed_come_first_and_messages_stay_out() {
        let ev = Event {
            elapsed: Duration::from_millis(1500),
            kind: EventKind::TurnDone {
                id: "t-1".into(),
                attempt: 1,
                step: 2,
                messages: vec![serde_json::json!({"role": "user", "content": "x"})],
                turns: vec![serde_json::json!({"message": 0, "token_ids": [1]})],
            },
        };
        assert_eq!(
            to_json_line(&ev).unwrap(),
            "{\"type\":\"turn_done\",\"elapsed_s\":1.5,\"id\":\"t-1\",\"attempt\":1,\"step\":2}\n"
        );
        let ev = Event {
            elapsed: Duration::ZERO,
            kind: EventKind::CancelRequested {
                reason: CancelReason::SecondSignal,
                detail: "again".into(),
            },
        };
        assert_eq!(
            to_json_line(&ev).unwrap(),
            "{\"type\":\"cancel_requested\",\"elapsed_s\":0.0,\"reason\":\"second_signal\",\"detail\":\"again\"}\n"
        );
    }
}
