//! The tools one job offers, in the order the model sees them: convoy's
//! own `bash` and `finish` and the manifest's `[[tools]]`. Built once per
//! job; turns each call into an `Action`. A call to a manifest tool has
//! its arguments checked against the tool's `parameters` (`arguments`),
//! then its command rendered with them; a call that fails either is
//! answered with an error observation naming the problem and never runs.

use std::collections::HashMap;
use std::time::Duration;

use minijinja::{Environment, ErrorKind};
use serde_json::{json, Map, Value};

use super::arguments::check_arguments;
use super::tools::{bash_action, bash_schema, finish_action, finish_schema, Action};
use crate::manifest::{offered_tools, Manifest};

/// What a conversation offers the model, shared by all conversations of a
/// job.
#[derive(Debug)]
pub struct Toolbox {
    /// The OpenAI `tools` of every request and trajectory record.
    schemas: Value,
    /// The offered names, in order, for "there is no tool `x`".
    names: Vec<String>,
    /// The offered manifest tools by name.
    defined: HashMap<String, Defined>,
    /// Their command templates, each under its tool's name.
    templates: Environment<'static>,
}

#[derive(Debug)]
struct Defined {
    parameters: Value,
    timeout: Option<Duration>,
}

impl Toolbox {
    /// `bash` and `finish`, the tools of a manifest without `[[tools]]`.
    pub fn builtin() -> Toolbox {
        Toolbox::of(["bash", "finish"], &[]).expect("the builtin tools need no template")
    }

    /// The tools `m` offers (`agent.tools`, else `bash`, every `[[tools]]`
    /// entry, `finish`). Errors only on what manifest validation refuses
    /// already (an unknown name, a command that does not parse).
    pub fn new(m: &Manifest) -> Result<Toolbox, String> {
        Toolbox::of(offered_tools(m), &m.tools)
    }

    fn of<S: AsRef<str>>(
        names: impl IntoIterator<Item = S>,
        specs: &[crate::manifest::ToolSpec],
    ) -> Result<Toolbox, String> {
        let mut toolbox = Toolbox {
            schemas: json!([]),
            names: Vec::new(),
            defined: HashMap::new(),
            templates: crate::tasks::template_env(),
        };
        let mut schemas = Vec::new();
        for name in names {
            let name = name.as_ref();
            let schema = match name {
                "bash" => bash_schema(),
                "finish" => finish_schema(),
                _ => {
                    let spec = specs
                        .iter()
                        .find(|t| t.name == name)
                        .ok_or_else(|| format!("agent.tools: `{name}` is not a tool"))?;
                    toolbox
                        .templates
                        .add_template_owned(name.to_string(), spec.command.clone())
                        .map_err(|e| format!("tools: `{name}`: invalid command template: {e}"))?;
                    toolbox.defined.insert(
                        name.to_string(),
                        Defined {
                            parameters: spec.parameters.clone(),
                            timeout: spec.timeout,
                        },
                    );
                    let mut function = Map::new();
                    function.insert("name".into(), json!(name));
                    if let Some(d) = &spec.description {
                        function.insert("description".into(), json!(d));
                    }
                    function.insert("parameters".into(), spec.parameters.clone());
                    json!({ "type": "function", "function": function })
                }
            };
            schemas.push(schema);
            toolbox.names.push(name.to_string());
        }
        toolbox.schemas = Value::Array(schemas);
        Ok(toolbox)
    }

    /// The OpenAI `tools` array, exactly as sent and recorded.
    pub fn schemas(&self) -> &Value {
        &self.schemas
    }

    /// What a call to `name` with these arguments (a JSON object) asks for.
    pub(super) fn action(&self, name: &str, args: &Value) -> Action {
        let invalid = |error: String| Action::Invalid { error };
        if !self.names.iter().any(|n| n == name) {
            return invalid(format!(
                "error: there is no tool `{name}`; {}",
                self.names_words()
            ));
        }
        match name {
            "bash" => bash_action(args),
            "finish" => finish_action(args),
            _ => self.defined_action(name, args),
        }
    }

    fn defined_action(&self, name: &str, args: &Value) -> Action {
        let tool = &self.defined[name];
        let problems = check_arguments(&tool.parameters, args);
        if !problems.is_empty() {
            return Action::Invalid {
                error: format!("error: {name}: {}", problems.join("; ")),
            };
        }
        let template = self
            .templates
            .get_template(name)
            .expect("every offered manifest tool has its template");
        match template.render(args) {
            Ok(command) => Action::Tool {
                name: name.to_string(),
                command,
                timeout: tool.timeout,
            },
            Err(e) if e.kind() == ErrorKind::UndefinedError => {
                // Strict undefined: an optional argument the command uses
                // without `default` or `is defined` is named, so the model
                // can give it.
                let given = args.as_object();
                let mut missing: Vec<String> = template
                    .undeclared_variables(false)
                    .into_iter()
                    .filter(|v| !given.is_some_and(|g| g.contains_key(v)))
                    .collect();
                missing.sort();
                let error = if missing.is_empty() {
                    format!("error: {name}: the command cannot be built from these arguments ({e})")
                } else {
                    let list: Vec<String> = missing.iter().map(|v| format!("`{v}`")).collect();
                    format!(
                        "error: {name}: this call needs argument {} (the tool's command uses it)",
                        list.join(", ")
                    )
                };
                Action::Invalid { error }
            }
            Err(e) => Action::Invalid {
                error: format!(
                    "error: {name}: the command cannot be built from these arguments ({e})"
                ),
            },
        }
    }

    /// "the tools are `a`, `b` and `c`".
    fn names_words(&self) -> String {
        let quoted: Vec<String> = self.names.iter().map(|n| format!("`{n}`")).collect();
        match quoted.as_slice() {
            [] => "there are no tools".to_string(),
            [one] => format!("the only tool is {one}"),
            [init @ .., last] => format!("the tools are {} and {last}", init.join(", ")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(extra: &str) -> Manifest {
        let text = format!(
            "name = \"t\"\n[tasks]\nsource = \"t.jsonl\"\n[prompt]\nuser = \"go\"\n[llm]\nprovider = \"script\"\n{extra}"
        );
        toml::from_str(&text).unwrap()
    }

    const VIEW: &str = r#"
[[tools]]
name = "view"
description = "Print a file with line numbers."
parameters = { type = "object", properties = { start = { type = "integer" }, path = { type = "string" } }, required = ["path"] }
command = "nl -ba {{ path | sh }}{% if start is defined %} | tail -n +{{ start }}{% endif %}"
timeout = "30s"

[[tools]]
name = "grep"
parameters = { type = "object", properties = { pattern = { type = "string" }, dir = { type = "string" } } }
command = "grep -rn {{ pattern | sh }} {{ dir | sh }}"
"#;

    fn names(t: &Toolbox) -> Vec<&str> {
        t.schemas()
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["function"]["name"].as_str().unwrap())
            .collect()
    }

    #[test]
    fn the_default_order_is_bash_the_manifests_tools_then_finish() {
        let t = Toolbox::new(&manifest(VIEW)).unwrap();
        assert_eq!(names(&t), ["bash", "view", "grep", "finish"]);
        assert_eq!(names(&Toolbox::builtin()), ["bash", "finish"]);
        let t = Toolbox::new(&manifest(&format!(
            "[agent]\ntools = [\"view\", \"finish\"]\n{VIEW}"
        )))
        .unwrap();
        assert_eq!(names(&t), ["view", "finish"]);
        // The schema as given: description, parameters in their order.
        let view = &t.schemas()[0];
        assert_eq!(
            view["function"]["description"],
            "Print a file with line numbers."
        );
        assert_eq!(view["function"]["parameters"]["required"], json!(["path"]));
        let keys: Vec<&String> = view["function"]["parameters"]["properties"]
            .as_object()
            .unwrap()
            .keys()
            .collect();
        // As written, not sorted.
        assert_eq!(keys, ["start", "path"]);
        // A tool left out is not there to call.
        match t.action("bash", &json!({"command": "ls"})) {
            Action::Invalid { error } => assert_eq!(
                error,
                "error: there is no tool `bash`; the tools are `view` and `finish`"
            ),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_good_call_renders_its_command_with_its_timeout() {
        let t = Toolbox::new(&manifest(VIEW)).unwrap();
        assert_eq!(
            t.action("view", &json!({"path": "it's a.rs"})),
            Action::Tool {
                name: "view".into(),
                command: r"nl -ba 'it'\''s a.rs'".into(),
                timeout: Some(Duration::from_secs(30)),
            }
        );
        assert_eq!(
            t.action("view", &json!({"path": "a", "start": 5})),
            Action::Tool {
                name: "view".into(),
                command: "nl -ba 'a' | tail -n +5".into(),
                timeout: Some(Duration::from_secs(30)),
            }
        );
    }

    #[test]
    fn bad_arguments_are_an_error_naming_the_tool_and_the_problem() {
        let t = Toolbox::new(&manifest(VIEW)).unwrap();
        let error = |args: Value| match t.action("view", &args) {
            Action::Invalid { error } => error,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            error(json!({})),
            "error: view: missing required argument `path`"
        );
        assert_eq!(
            error(json!({"path": 1, "x": 2})),
            "error: view: argument `path` must be a string, not a number (1); unknown argument `x` (known: start, path)"
        );
    }

    #[test]
    fn an_optional_argument_the_command_needs_is_asked_for() {
        let t = Toolbox::new(&manifest(VIEW)).unwrap();
        match t.action("grep", &json!({"pattern": "fn main"})) {
            Action::Invalid { error } => assert_eq!(
                error,
                "error: grep: this call needs argument `dir` (the tool's command uses it)"
            ),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            t.action("grep", &json!({"pattern": "x", "dir": "src"})),
            Action::Tool { .. }
        ));
    }
}
