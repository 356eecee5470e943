//! A call's arguments checked against its tool's `parameters`, before the
//! tool's command is built; and, at load, the `parameters` themselves.
//!
//! The part of JSON Schema that tool schemas use is checked: `type` (one
//! name or a list), `enum`, `properties`, `required`, `items` and
//! `additionalProperties`. Other keywords (`description`, `default`,
//! `minimum`, `pattern`, ...) go to the model as given and are not
//! enforced. Keys an object schema does not list are refused when it lists
//! `properties` (stricter than JSON Schema, where they pass by default: a
//! misspelt optional argument must not be dropped without a word), unless
//! `additionalProperties` is `true` or a schema; an object schema without
//! `properties` takes any keys unless `additionalProperties = false`.
//!
//! Written here rather than taken from a JSON Schema crate: those check
//! all of the specification (formats, `$ref` resolution, regex engines)
//! and report in their own words, where the model needs one short sentence
//! per problem that names the argument.

use serde_json::{Map, Value};

/// The JSON types a schema's `type` may name.
const TYPES: &[&str] = &[
    "string", "number", "integer", "boolean", "array", "object", "null",
];

/// Every problem of `args` under `schema`, in the schema's order; empty
/// when the call is good.
pub fn check_arguments(schema: &Value, args: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    check(schema, args, "", &mut problems);
    problems
}

fn check(schema: &Value, value: &Value, path: &str, problems: &mut Vec<String>) {
    let Some(schema) = schema.as_object() else {
        return;
    };
    if let Some(wanted) = schema.get("type") {
        let names = type_names(wanted);
        if !names.is_empty() && !names.iter().any(|t| is_type(value, t)) {
            let wanted: Vec<String> = names.iter().map(|t| type_words(t)).collect();
            problems.push(format!(
                "argument `{path}` must be {}, not {}",
                or_list(&wanted),
                value_words(value)
            ));
            return;
        }
    }
    if let Some(Value::Array(choices)) = schema.get("enum") {
        if !choices.contains(value) {
            let choices: Vec<String> = choices.iter().map(Value::to_string).collect();
            problems.push(format!(
                "argument `{path}` must be one of {}, not {value}",
                choices.join(", ")
            ));
            return;
        }
    }
    match value {
        Value::Object(object) => check_object(schema, object, path, problems),
        Value::Array(items) => {
            if let Some(item_schema) = schema.get("items") {
                for (i, item) in items.iter().enumerate() {
                    check(item_schema, item, &format!("{path}[{i}]"), problems);
                }
            }
        }
        _ => {}
    }
}

fn check_object(
    schema: &Map<String, Value>,
    object: &Map<String, Value>,
    path: &str,
    problems: &mut Vec<String>,
) {
    let key_path = |key: &str| {
        if path.is_empty() {
            key.to_string()
        } else {
            format!("{path}.{key}")
        }
    };
    let properties = schema.get("properties").and_then(Value::as_object);
    if let Some(Value::Array(required)) = schema.get("required") {
        for key in required.iter().filter_map(Value::as_str) {
            if !object.contains_key(key) {
                problems.push(format!("missing required argument `{}`", key_path(key)));
            }
        }
    }
    let additional = schema.get("additionalProperties");
    for (key, value) in object {
        match (properties.and_then(|p| p.get(key)), additional) {
            (Some(property), _) => check(property, value, &key_path(key), problems),
            (None, Some(extra @ Value::Object(_))) => check(extra, value, &key_path(key), problems),
            (None, Some(Value::Bool(true))) => {}
            (None, None) if properties.is_none() => {}
            (None, _) => {
                let known: Vec<&str> = properties
                    .map(|p| p.keys().map(String::as_str).collect())
                    .unwrap_or_default();
                let hint = if known.is_empty() {
                    " (it takes none here)".to_string()
                } else {
                    format!(" (known: {})", known.join(", "))
                };
                problems.push(format!("unknown argument `{}`{hint}", key_path(key)));
            }
        }
    }
}

/// The names in a `type`: one string or a list of them.
fn type_names(wanted: &Value) -> Vec<&str> {
    match wanted {
        Value::String(t) => vec![t.as_str()],
        Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    }
}

fn is_type(value: &Value, name: &str) -> bool {
    match name {
        "string" => value.is_string(),
        "number" => value.is_number(),
        // 1.0 is an integer in JSON Schema, as in JSON.
        "integer" => {
            value.is_i64() || value.is_u64() || value.as_f64().is_some_and(|f| f.fract() == 0.0)
        }
        "boolean" => value.is_boolean(),
        "array" => value.is_array(),
        "object" => value.is_object(),
        "null" => value.is_null(),
        _ => false,
    }
}

fn type_words(name: &str) -> String {
    match name {
        "integer" | "array" | "object" => format!("an {name}"),
        "null" => "null".to_string(),
        other => format!("a {other}"),
    }
}

/// What a value is, for "must be X, not Y".
fn value_words(value: &Value) -> String {
    match value {
        Value::Null => "null".to_string(),
        Value::Bool(b) => format!("a boolean ({b})"),
        Value::Number(n) => format!("a number ({n})"),
        Value::String(s) if s.chars().count() > 40 => "a string".to_string(),
        Value::String(s) => format!("a string ({})", Value::from(s.as_str())),
        Value::Array(_) => "an array".to_string(),
        Value::Object(_) => "an object".to_string(),
    }
}

/// `a`, `a or b`, `a, b or c`.
fn or_list(words: &[String]) -> String {
    match words {
        [] => String::new(),
        [one] => one.clone(),
        [init @ .., last] => format!("{} or {last}", init.join(", ")),
    }
}

/// What is wrong with a tool's `parameters`, if anything: it must be an
/// object schema, and every part the checker reads must have the shape it
/// reads (a misspelt type name would otherwise refuse every call).
pub fn parameters_problem(schema: &Value) -> Option<String> {
    if schema.get("type") != Some(&Value::from("object")) {
        return Some("must be an object schema: type = \"object\"".to_string());
    }
    schema_problem(schema, "")
}

fn schema_problem(schema: &Value, at: &str) -> Option<String> {
    let here = |message: String| {
        Some(if at.is_empty() {
            message
        } else {
            format!("{at}: {message}")
        })
    };
    let join = |key: &str| {
        if at.is_empty() {
            key.to_string()
        } else {
            format!("{at}.{key}")
        }
    };
    let Some(schema) = schema.as_object() else {
        return here("a schema must be a table".to_string());
    };
    if let Some(t) = schema.get("type") {
        let names: Option<Vec<&str>> = match t {
            Value::String(s) => Some(vec![s.as_str()]),
            Value::Array(ts) if !ts.is_empty() => ts.iter().map(Value::as_str).collect(),
            _ => None,
        };
        let Some(names) = names else {
            return here("`type` must be a type name or a list of them".to_string());
        };
        if let Some(bad) = names.iter().find(|n| !TYPES.contains(n)) {
            return here(format!(
                "unknown type `{bad}` (the types are {})",
                TYPES.join(", ")
            ));
        }
    }
    if let Some(e) = schema.get("enum") {
        if e.as_array().is_none_or(|e| e.is_empty()) {
            return here("`enum` must be a list of values".to_string());
        }
    }
    let properties = match schema.get("properties") {
        None => None,
        Some(Value::Object(p)) => Some(p),
        Some(_) => return here("`properties` must be a table of schemas".to_string()),
    };
    for (key, property) in properties.into_iter().flatten() {
        if let Some(p) = schema_problem(property, &join(&format!("properties.{key}"))) {
            return Some(p);
        }
    }
    let additional = schema.get("additionalProperties");
    match additional {
        None | Some(Value::Bool(_)) => {}
        Some(extra @ Value::Object(_)) => {
            if let Some(p) = schema_problem(extra, &join("additionalProperties")) {
                return Some(p);
            }
        }
        Some(_) => {
            return here("`additionalProperties` must be true, false or a schema".to_string())
        }
    }
    if let Some(required) = schema.get("required") {
        let Some(keys) = required
            .as_array()
            .and_then(|r| r.iter().map(Value::as_str).collect::<Option<Vec<_>>>())
        else {
            return here("`required` must be a list of argument names".to_string());
        };
        // A required key the schema would refuse: no call could pass.
        let refused = |key: &str| match (properties, additional) {
            (_, Some(Value::Object(_)) | Some(Value::Bool(true))) => false,
            (Some(p), _) => !p.contains_key(key),
            (None, Some(Value::Bool(false))) => true,
            (None, _) => false,
        };
        if let Some(key) = keys.iter().find(|k| refused(k)) {
            return here(format!("required `{key}` is not in `properties`"));
        }
    }
    match schema.get("items") {
        None => None,
        Some(items @ Value::Object(_)) => schema_problem(items, &join("items")),
        Some(_) => here("`items` must be one schema (a table)".to_string()),
    }
}

/// Whether `schema` (an object schema) takes keys it does not list.
pub fn takes_other_keys(schema: &Value) -> bool {
    match schema.get("additionalProperties") {
        Some(Value::Bool(b)) => *b,
        Some(Value::Object(_)) => true,
        _ => schema.get("properties").is_none(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn view() -> Value {
        json!({
            "type": "object",
            "properties": {
                "path": {"type": "string", "description": "File path"},
                "start": {"type": "integer"},
                "mode": {"type": "string", "enum": ["text", "hex"]},
                "lines": {"type": "array", "items": {"type": ["integer", "null"]}},
                "opts": {
                    "type": "object",
                    "properties": {"depth": {"type": "number"}},
                    "required": ["depth"]
                }
            },
            "required": ["path"]
        })
    }

    fn problems(args: Value) -> Vec<String> {
        check_arguments(&view(), &args)
    }

    #[test]
    fn a_good_call_has_no_problems() {
        assert!(problems(json!({"path": "a.rs"})).is_empty());
        let all = json!({"path": "a", "start": 3, "mode": "hex", "lines": [1, null, 2.0],
                         "opts": {"depth": 1.5}});
        assert!(problems(all).is_empty());
    }

    #[test]
    fn a_missing_required_argument_is_named() {
        assert_eq!(
            problems(json!({"start": 1})),
            ["missing required argument `path`"]
        );
        assert_eq!(
            problems(json!({"path": "a", "opts": {}})),
            ["missing required argument `opts.depth`"]
        );
    }

    #[test]
    fn a_wrong_type_names_what_was_wanted_and_what_came() {
        assert_eq!(
            problems(json!({"path": 3})),
            ["argument `path` must be a string, not a number (3)"]
        );
        assert_eq!(
            problems(json!({"path": "a", "start": 1.5})),
            ["argument `start` must be an integer, not a number (1.5)"]
        );
        assert_eq!(
            problems(json!({"path": "a", "start": "1"})),
            ["argument `start` must be an integer, not a string (\"1\")"]
        );
        assert_eq!(
            problems(json!({"path": null, "opts": [1]})),
            [
                "argument `path` must be a string, not null",
                "argument `opts` must be an object, not an array"
            ]
        );
        // Each JSON type, and a list of types.
        for (t, good, bad) in [
            ("number", json!(2.5), json!("2.5")),
            ("boolean", json!(true), json!("true")),
            ("array", json!([]), json!({})),
            ("object", json!({}), json!([])),
            ("null", json!(null), json!(0)),
        ] {
            let schema = json!({"type": "object", "properties": {"x": {"type": t}}});
            assert!(
                check_arguments(&schema, &json!({ "x": good })).is_empty(),
                "{t}"
            );
            assert_eq!(
                check_arguments(&schema, &json!({ "x": bad })).len(),
                1,
                "{t}"
            );
        }
        assert_eq!(
            problems(json!({"path": "a", "lines": [1, "two"]})),
            ["argument `lines[1]` must be an integer or null, not a string (\"two\")"]
        );
    }

    #[test]
    fn a_value_outside_the_enum_lists_the_choices() {
        assert_eq!(
            problems(json!({"path": "a", "mode": "bin"})),
            ["argument `mode` must be one of \"text\", \"hex\", not \"bin\""]
        );
    }

    #[test]
    fn unknown_keys_are_refused_unless_the_schema_takes_them() {
        assert_eq!(
            problems(json!({"path": "a", "colour": "red"})),
            ["unknown argument `colour` (known: path, start, mode, lines, opts)"]
        );
        assert_eq!(
            problems(json!({"path": "a", "opts": {"depth": 1, "x": 0}})),
            ["unknown argument `opts.x` (known: depth)"]
        );
        let open = |extra: Value| {
            json!({"type": "object", "properties": {"a": {"type": "string"}},
                   "additionalProperties": extra})
        };
        assert!(check_arguments(&open(json!(true)), &json!({"b": 1})).is_empty());
        assert!(check_arguments(&open(json!({"type": "integer"})), &json!({"b": 1})).is_empty());
        assert_eq!(
            check_arguments(&open(json!({"type": "integer"})), &json!({"b": "x"})),
            ["argument `b` must be an integer, not a string (\"x\")"]
        );
        assert_eq!(
            check_arguments(&open(json!(false)), &json!({"b": 1})),
            ["unknown argument `b` (known: a)"]
        );
        // An object schema that lists no properties takes any keys...
        let free = json!({"type": "object"});
        assert!(check_arguments(&free, &json!({"anything": [1]})).is_empty());
        // ...unless it says it takes none.
        let none = json!({"type": "object", "additionalProperties": false});
        assert_eq!(
            check_arguments(&none, &json!({"x": 1})),
            ["unknown argument `x` (it takes none here)"]
        );
        let empty = json!({"type": "object", "properties": {}});
        assert_eq!(
            check_arguments(&empty, &json!({"x": 1})),
            ["unknown argument `x` (it takes none here)"]
        );
    }

    #[test]
    fn every_problem_is_reported_in_the_schemas_order() {
        assert_eq!(
            problems(json!({"start": "x", "typo": 1})),
            [
                "missing required argument `path`",
                "argument `start` must be an integer, not a string (\"x\")",
                "unknown argument `typo` (known: path, start, mode, lines, opts)"
            ]
        );
    }

    #[test]
    fn parameters_must_be_an_object_schema_the_checker_can_read() {
        assert_eq!(parameters_problem(&view()), None);
        assert_eq!(parameters_problem(&json!({"type": "object"})), None);
        let bad = |schema: Value| parameters_problem(&schema).unwrap();
        assert_eq!(
            bad(json!({"type": "string"})),
            "must be an object schema: type = \"object\""
        );
        assert_eq!(
            bad(json!({"properties": {}})),
            "must be an object schema: type = \"object\""
        );
        assert_eq!(
            bad(json!({"type": "object", "properties": {"p": {"type": "str"}}})),
            "properties.p: unknown type `str` (the types are string, number, integer, boolean, array, object, null)"
        );
        assert_eq!(
            bad(json!({"type": "object", "properties": {"p": "string"}})),
            "properties.p: a schema must be a table"
        );
        assert_eq!(
            bad(json!({"type": "object", "required": "p"})),
            "`required` must be a list of argument names"
        );
        assert_eq!(
            bad(json!({"type": "object", "properties": {"a": {}}, "required": ["b"]})),
            "required `b` is not in `properties`"
        );
        assert_eq!(
            bad(json!({"type": "object", "properties": {
                "l": {"type": "array", "items": [{"type": "string"}]}}})),
            "properties.l: `items` must be one schema (a table)"
        );
        assert_eq!(
            bad(json!({"type": "object", "properties": {
                "l": {"type": "array", "items": {"type": ["string", "nul"]}}}})),
            "properties.l.items: unknown type `nul` (the types are string, number, integer, boolean, array, object, null)"
        );
        assert_eq!(
            bad(json!({"type": "object", "additionalProperties": "yes"})),
            "`additionalProperties` must be true, false or a schema"
        );
        assert_eq!(
            bad(json!({"type": "object", "properties": {"m": {"enum": []}}})),
            "properties.m: `enum` must be a list of values"
        );
    }
}
