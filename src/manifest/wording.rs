//! Saying where and what in a manifest: the line of a key or a byte
//! offset, the key a syntax error sits in, the offending line with a caret
//! under the spot, and serde's type words ("expected u32") turned into the
//! manifest's ("a whole number >= 1").

/// 1-based line of a byte offset.
pub(super) fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// Line where `key` (dotted path; `tools[1].name` for an entry of an
/// array) is written, if it is written at all.
pub(super) fn line_of_key(text: &str, key: &str) -> Option<usize> {
    use toml_edit::{Item, TableLike, Value};
    /// Where the walk is: a key's item, an entry of an array of tables, or
    /// a value inside an array.
    enum Node<'a> {
        Item(&'a Item),
        Table(&'a toml_edit::Table),
        Value(&'a Value),
    }
    let doc: toml_edit::ImDocument<&str> = toml_edit::ImDocument::parse(text).ok()?;
    let mut node = Node::Item(doc.as_item());
    let mut span = None;
    for part in key.split('.') {
        let mut pieces = part.split('[');
        let name = pieces.next()?;
        let table: &dyn TableLike = match node {
            Node::Item(item) => item.as_table_like()?,
            Node::Table(t) => t,
            Node::Value(v) => v.as_inline_table()?,
        };
        let (k, item) = table.get_key_value(name)?;
        span = k.span().or_else(|| item.span()).or(span);
        node = Node::Item(item);
        for index in pieces {
            let i: usize = index.strip_suffix(']')?.parse().ok()?;
            node = match node {
                Node::Item(Item::ArrayOfTables(a)) => {
                    let t = a.get(i)?;
                    span = t.span().or(span);
                    Node::Table(t)
                }
                Node::Item(Item::Value(Value::Array(a))) | Node::Value(Value::Array(a)) => {
                    let v = a.get(i)?;
                    span = v.span().or(span);
                    Node::Value(v)
                }
                _ => return None,
            };
        }
    }
    span.map(|s| line_of(text, s.start))
}

/// The least value of each whole-number key; validation enforces the same
/// (a test checks they agree). Used to say `a whole number >= 1` where
/// serde would say `u32`.
pub(super) const MINIMUMS: &[(&str, u64)] = &[
    ("tasks.repeat", 1),
    ("llm.max_in_flight", 1),
    ("llm.outage_after", 1),
    ("llm.requests_per_minute", 1),
    ("llm.tokens_per_minute", 1),
    ("llm.max_total_tokens", 1),
    ("agent.max_steps", 1),
    ("agent.max_observation_chars", 200),
    ("run.workers", 1),
    ("run.max_attempts", 1),
    ("workspace.nofile", 64),
    ("workspace.pids_limit", 16),
    ("workspace.session_pids", 16),
];

/// serde's words for types ("invalid type: string \"x\", expected u32")
/// in the manifest's words ("must be a whole number >= 1, found string \"x\"").
pub(super) fn plain_words(message: &str, key: &str) -> String {
    let min = MINIMUMS
        .iter()
        .find(|(k, _)| *k == key)
        .map_or(0, |(_, m)| *m);
    // An integer too large for its type is "invalid value: integer `N`".
    let too_large = |found: &str, max: u64| {
        found
            .strip_prefix("integer `")
            .and_then(|n| n.strip_suffix('`'))
            .and_then(|n| n.parse::<u128>().ok())
            .is_some_and(|n| n > max as u128)
    };
    let wanted = |rust: &str, found: &str| -> Option<String> {
        let unsigned = |max: u64| {
            if too_large(found, max) {
                format!("a whole number from {min} to {max}")
            } else {
                format!("a whole number >= {min}")
            }
        };
        Some(match rust {
            "u8" => unsigned(u8::MAX.into()),
            "u16" => unsigned(u16::MAX.into()),
            "u32" => unsigned(u32::MAX.into()),
            "u64" | "usize" => unsigned(u64::MAX),
            "i8" | "i16" | "i32" | "i64" | "isize" if min > 0 => {
                format!("a whole number >= {min}")
            }
            "i8" | "i16" | "i32" | "i64" | "isize" => "a whole number".to_string(),
            "f32" | "f64" => "a number".to_string(),
            "a boolean" => "true or false".to_string(),
            "a duration" => "a duration such as \"30s\" or \"10m\"".to_string(),
            "a map" => "a table".to_string(),
            "a sequence" => "a list".to_string(),
            r if r.starts_with("struct ") => "a table".to_string(),
            _ => return None,
        })
    };
    let found_words = |found: &str| match found {
        "sequence" => "a list".to_string(),
        "map" => "a table".to_string(),
        other => other.to_string(),
    };
    if let Some(rest) = message.strip_prefix("unknown field ") {
        return unknown_word(rest, "key");
    }
    if let Some(rest) = message.strip_prefix("unknown variant ") {
        return unknown_word(rest, "value");
    }
    for prefix in ["invalid type: ", "invalid value: "] {
        if let Some((found, expected)) = message
            .strip_prefix(prefix)
            .and_then(|rest| rest.rsplit_once(", expected "))
        {
            let expected = wanted(expected, found).unwrap_or_else(|| expected.to_string());
            return format!("must be {expected}, found {}", found_words(found));
        }
    }
    message.to_string()
}

/// serde's "`x`, expected one of `a`, `b`" (after "unknown field " or
/// "unknown variant ") in the manifest's words: a key gets the closest
/// known key as a suggestion, a value the list it must come from.
fn unknown_word(rest: &str, what: &str) -> String {
    let quoted = |s: &str| -> Vec<String> {
        s.split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_string)
            .collect()
    };
    let Some((found, expected)) = rest.split_once(", expected ") else {
        return format!("unknown {what} {rest}");
    };
    let found = found.trim_matches('`');
    let known = quoted(expected);
    if what == "value" {
        let list: Vec<String> = known.iter().map(|k| format!("\"{k}\"")).collect();
        return match list.as_slice() {
            [] => format!("unknown value \"{found}\""),
            [one] => format!("must be {one}, found \"{found}\""),
            [init @ .., last] => {
                format!("must be {} or {last}, found \"{found}\"", init.join(", "))
            }
        };
    }
    let closest = known
        .iter()
        .map(|k| (strsim::jaro_winkler(found, k), k))
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0));
    match closest {
        Some((_, k)) => format!("unknown key `{found}` (did you mean `{k}`?)"),
        None if known.is_empty() => format!("unknown key `{found}` (this table takes no keys)"),
        None => format!("unknown key `{found}` (known here: {})", known.join(", ")),
    }
}

/// `message` and, under it, the line of `text` the span starts on with a
/// caret at the column: what a syntax error needs to be found.
pub(super) fn with_caret(
    text: &str,
    span: Option<std::ops::Range<usize>>,
    message: &str,
) -> String {
    let Some(span) = span else {
        return message.to_string();
    };
    let start = span.start.min(text.len());
    let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
    let line_end = text[start..].find('\n').map_or(text.len(), |i| start + i);
    let line_text = &text[line_start..line_end];
    let number = line_of(text, start).to_string();
    let column = text[line_start..start].chars().count();
    let pad = " ".repeat(number.len());
    format!(
        "{message}\n  {pad} |\n  {number} | {line_text}\n  {pad} | {}^",
        " ".repeat(column)
    )
}

/// The dotted key written on `line` (1-based): the table header above it
/// plus the key before its `=`; the header itself if `line` is one. A
/// heuristic for syntax errors, where no parser can say.
pub(super) fn key_at_line(text: &str, line: usize) -> Option<String> {
    let unquote = |k: &str| {
        k.split('.')
            .map(|p| p.trim().trim_matches('"').trim_matches('\''))
            .collect::<Vec<_>>()
            .join(".")
    };
    let mut table = String::new();
    for (i, l) in text.lines().enumerate().take(line) {
        let l = l.trim();
        let on_line = i + 1 == line;
        if l.starts_with('[') {
            let name = l.trim_start_matches('[');
            let name = name.split(']').next().unwrap_or("");
            table = unquote(name);
            if on_line {
                return (!table.is_empty()).then(|| table.clone());
            }
        } else if on_line {
            let (key, _) = l.split_once('=')?;
            if key.contains('#') || key.trim().is_empty() {
                return None;
            }
            let key = unquote(key);
            return Some(if table.is_empty() {
                key
            } else {
                format!("{table}.{key}")
            });
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::{line_of_key, plain_words};

    #[test]
    fn keys_inside_arrays_are_found_by_index() {
        let text = "[agent]\ntools = [\"a\",\n  \"b\"]\n\n[[tools]]\nname = \"a\"\n\n[[tools]]\nname = \"b\"\ncommand = \"x\"\n";
        assert_eq!(line_of_key(text, "agent.tools"), Some(2));
        assert_eq!(line_of_key(text, "tools[0].name"), Some(6));
        assert_eq!(line_of_key(text, "tools[1].name"), Some(9));
        assert_eq!(line_of_key(text, "tools[1].command"), Some(10));
        assert_eq!(line_of_key(text, "tools[2].name"), None);
        let inline = "x = 1\nitems = [\n  { name = \"a\" },\n  { name = \"b\" },\n]\n";
        assert_eq!(line_of_key(inline, "items[1].name"), Some(4));
    }

    #[test]
    fn unknown_keys_get_the_closest_known_key_or_the_list() {
        assert_eq!(
            plain_words(
                "unknown field `max_step`, expected one of `max_steps`, `command_timeout`",
                "agent.max_step"
            ),
            "unknown key `max_step` (did you mean `max_steps`?)"
        );
        assert_eq!(
            plain_words("unknown field `zz`, expected `host` or `container`", "x"),
            "unknown key `zz` (known here: host, container)"
        );
    }

    #[test]
    fn unknown_values_list_the_accepted_ones_in_the_manifests_words() {
        assert_eq!(
            plain_words(
                "unknown variant `locl`, expected `docker` or `local`",
                "workspace.kind"
            ),
            "must be \"docker\" or \"local\", found \"locl\""
        );
        assert_eq!(
            plain_words("unknown variant `x`, expected one of `a`, `b`, `c`", "k"),
            "must be \"a\", \"b\" or \"c\", found \"x\""
        );
    }
}
