//! `[[tools]]`: tools defined in the manifest, each a JSON-schema
//! `parameters` object and a command template the call's arguments fill
//! in; and `agent.tools`, which tools the model is offered and in what
//! order. Here: their schema and the rules checked at load (names,
//! schemas, templates, a way for the model to end). `agent::Toolbox`
//! turns them into what a conversation offers and runs.

use std::collections::HashMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::schema::{Manifest, OnText};
use crate::agent::{parameters_problem, takes_other_keys};

/// The names of convoy's own tools, which `[[tools]]` cannot redefine.
pub const BUILTIN_TOOLS: [&str; 2] = ["bash", "finish"];

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ToolSpec {
    /// The function name the model calls: 1 to 64 letters, digits, `_`
    /// and `-`; not `bash` or `finish`.
    pub name: String,
    /// What the tool does, for the model (sent as given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The arguments' JSON schema (`type = "object"`), sent as given and
    /// checked against every call before its command runs. Default: no
    /// arguments.
    #[serde(default = "ToolSpec::default_parameters")]
    pub parameters: Value,
    /// The command run in the conversation's session (minijinja, strict
    /// undefined), rendered with the call's arguments; `sh` shell-quotes a
    /// value.
    pub command: String,
    /// Time limit of the command. Default: `agent.command_timeout`.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub timeout: Option<Duration>,
}

impl ToolSpec {
    fn default_parameters() -> Value {
        json!({ "type": "object", "properties": {} })
    }
}

/// The tools the model is offered, in order: `agent.tools`, else `bash`,
/// every `[[tools]]` entry, `finish`.
pub fn offered_tools(m: &Manifest) -> Vec<String> {
    match &m.agent.tools {
        Some(names) => names.clone(),
        None => std::iter::once("bash")
            .chain(m.tools.iter().map(|t| t.name.as_str()))
            .chain(std::iter::once("finish"))
            .map(str::to_string)
            .collect(),
    }
}

/// A function name as the Chat Completions API takes it.
fn is_function_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// Reports through `check(ok, key, message)` each rule `[[tools]]` and
/// `agent.tools` break. Keys of entries are written `tools[i].name`.
pub(super) fn check_tools(m: &Manifest, check: &mut impl FnMut(bool, &str, &str)) {
    let mut first_of: HashMap<&str, usize> = HashMap::new();
    for (i, tool) in m.tools.iter().enumerate() {
        let key = |k: &str| format!("tools[{i}].{k}");
        let name = tool.name.as_str();
        check(
            is_function_name(name),
            &key("name"),
            &format!(
                "must be 1 to 64 letters, digits, '_' or '-' (a function name), found {}",
                Value::from(name)
            ),
        );
        check(
            !BUILTIN_TOOLS.contains(&name),
            &key("name"),
            &format!("`{name}` is convoy's own tool; give yours another name"),
        );
        if let Some(first) = first_of.get(name) {
            check(
                false,
                &key("name"),
                &format!("`{name}` is defined twice (also tools[{first}])"),
            );
        } else {
            first_of.insert(name, i);
        }
        if let Some(problem) = parameters_problem(&tool.parameters) {
            check(false, &key("parameters"), &problem);
        }
        check(
            !tool.command.trim().is_empty(),
            &key("command"),
            "must not be empty",
        );
        let env = crate::tasks::template_env();
        match env.template_from_str(&tool.command) {
            Err(e) => check(false, &key("command"), &format!("invalid template: {e}")),
            Ok(template) if !takes_other_keys(&tool.parameters) => {
                // A variable no call can give is a typo; caught here
                // rather than as an error observation on every call.
                let declared = tool.parameters.get("properties").and_then(Value::as_object);
                let globals: Vec<&str> = env.globals().map(|(k, _)| k).collect();
                let mut unknown: Vec<String> = template
                    .undeclared_variables(false)
                    .into_iter()
                    .filter(|v| !declared.is_some_and(|d| d.contains_key(v)))
                    .filter(|v| !globals.contains(&v.as_str()))
                    .collect();
                unknown.sort();
                if let Some(v) = unknown.first() {
                    check(
                        false,
                        &key("command"),
                        &format!("uses `{v}`, which is not an argument in `parameters.properties`"),
                    );
                }
            }
            Ok(_) => {}
        }
        check(
            tool.timeout.is_none_or(|t| !t.is_zero()),
            &key("timeout"),
            "must be more than 0s",
        );
    }

    let Some(names) = &m.agent.tools else {
        return;
    };
    check(
        !names.is_empty(),
        "agent.tools",
        "must name at least one tool",
    );
    let known: Vec<&str> = BUILTIN_TOOLS
        .iter()
        .copied()
        .chain(m.tools.iter().map(|t| t.name.as_str()))
        .collect();
    for (i, name) in names.iter().enumerate() {
        check(
            known.contains(&name.as_str()),
            "agent.tools",
            &format!(
                "`{name}` is not a tool (the tools are {})",
                known.join(", ")
            ),
        );
        check(
            !names[..i].contains(name),
            "agent.tools",
            &format!("`{name}` is listed twice"),
        );
    }
    check(
        names.is_empty() || names.iter().any(|n| n == "finish") || m.agent.on_text == OnText::Finish,
        "agent.tools",
        "leaves the model no way to end: add \"finish\", or set agent.on_text = \"finish\" (a reply with only text is then the answer)",
    );
}

#[cfg(test)]
mod tests {
    use crate::manifest::{load, ManifestError, Problem};

    const BASE: &str = "name = \"t\"\n[tasks]\nsource = \"t.jsonl\"\n[prompt]\nuser = \"go\"\n[llm]\nprovider = \"script\"\n";

    const VIEW: &str = "[[tools]]\nname = \"view\"\nparameters = { type = \"object\", properties = { path = { type = \"string\" } }, required = [\"path\"] }\ncommand = \"nl -ba {{ path | sh }}\"\n";

    /// The problems of BASE + `extra`, as `(line, key, message)`.
    fn problems(extra: &str) -> Vec<(Option<usize>, String, String)> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("job.toml");
        std::fs::write(&path, format!("{BASE}{extra}")).unwrap();
        match load(&path) {
            Ok(_) => Vec::new(),
            Err(ManifestError::Invalid { problems, .. }) => problems
                .into_iter()
                .map(|Problem { line, key, message }| (line, key.unwrap_or_default(), message))
                .collect(),
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn a_valid_tool_and_agent_tools_load() {
        assert_eq!(problems(VIEW), []);
        let order = format!("[agent]\ntools = [\"view\", \"finish\"]\n{VIEW}");
        assert_eq!(problems(&order), []);
        // Without finish, a text reply must be the answer.
        let text_ends = format!("[agent]\ntools = [\"view\"]\non_text = \"finish\"\n{VIEW}");
        assert_eq!(problems(&text_ends), []);
        // Optional arguments the command guards are fine.
        let optional = "[[tools]]\nname = \"ls\"\nparameters = { type = \"object\", properties = { dir = { type = \"string\" } } }\ncommand = \"ls {{ dir | default('.') | sh }}\"\n";
        assert_eq!(problems(optional), []);
    }

    #[test]
    fn a_bad_name_or_a_duplicate_is_named_with_its_entry_and_line() {
        let bad = VIEW.replace("\"view\"", "\"view file\"");
        assert_eq!(
            problems(&bad),
            [(
                Some(9),
                "tools[0].name".into(),
                "must be 1 to 64 letters, digits, '_' or '-' (a function name), found \"view file\"".into()
            )]
        );
        let twice = format!("{VIEW}{VIEW}");
        assert_eq!(
            problems(&twice),
            [(
                Some(13),
                "tools[1].name".into(),
                "`view` is defined twice (also tools[0])".into()
            )]
        );
        let builtin = VIEW.replace("\"view\"", "\"bash\"");
        assert_eq!(
            problems(&builtin)[0].2,
            "`bash` is convoy's own tool; give yours another name"
        );
        let long = VIEW.replace("\"view\"", &format!("\"{}\"", "v".repeat(65)));
        assert_eq!(problems(&long)[0].1, "tools[0].name");
    }

    #[test]
    fn agent_tools_must_name_known_tools_once_and_leave_a_way_to_end() {
        let unknown = format!("[agent]\ntools = [\"veiw\", \"finish\"]\n{VIEW}");
        assert_eq!(
            problems(&unknown),
            [(
                Some(9),
                "agent.tools".into(),
                "`veiw` is not a tool (the tools are bash, finish, view)".into()
            )]
        );
        let twice = "[agent]\ntools = [\"bash\", \"bash\", \"finish\"]\n";
        assert_eq!(problems(twice)[0].2, "`bash` is listed twice");
        let no_end = format!("[agent]\ntools = [\"view\", \"bash\"]\n{VIEW}");
        let p = problems(&no_end);
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!((p[0].0, p[0].1.as_str()), (Some(9), "agent.tools"));
        assert!(
            p[0].2.starts_with(
                "leaves the model no way to end: add \"finish\", or set agent.on_text = \"finish\""
            ),
            "{}",
            p[0].2
        );
        assert_eq!(
            problems("[agent]\ntools = []\non_text = \"finish\"\n")[0].2,
            "must name at least one tool"
        );
    }

    #[test]
    fn parameters_command_and_timeout_are_checked() {
        let not_object = VIEW.replace("type = \"object\", ", "type = \"array\", ");
        assert_eq!(
            problems(&not_object),
            [(
                Some(10),
                "tools[0].parameters".into(),
                "must be an object schema: type = \"object\"".into()
            )]
        );
        let bad_type = VIEW.replace("type = \"string\"", "type = \"str\"");
        assert!(
            problems(&bad_type)[0]
                .2
                .starts_with("properties.path: unknown type `str`"),
            "{:?}",
            problems(&bad_type)
        );
        let syntax = VIEW.replace("{{ path | sh }}", "{{ path | sh");
        let p = problems(&syntax);
        assert_eq!((p[0].0, p[0].1.as_str()), (Some(11), "tools[0].command"));
        assert!(p[0].2.starts_with("invalid template: "), "{}", p[0].2);
        let typo = VIEW.replace("{{ path | sh }}", "{{ pth | sh }}");
        assert_eq!(
            problems(&typo),
            [(
                Some(11),
                "tools[0].command".into(),
                "uses `pth`, which is not an argument in `parameters.properties`".into()
            )]
        );
        let empty = VIEW.replace("nl -ba {{ path | sh }}", " ");
        assert_eq!(problems(&empty)[0].2, "must not be empty");
        let zero = format!("{VIEW}timeout = \"0s\"\n");
        assert_eq!(
            problems(&zero),
            [(
                Some(12),
                "tools[0].timeout".into(),
                "must be more than 0s".into()
            )]
        );
        let unknown_key = format!("{VIEW}colour = \"red\"\n");
        assert_eq!(problems(&unknown_key)[0].1, "tools[0].colour");
    }
}
