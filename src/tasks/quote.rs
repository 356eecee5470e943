//! The `sh` filter of every convoy template: a value as shell words, so a
//! template can put a row's field or a tool call's argument into a command
//! line without the shell reading the value as syntax (`$(...)`, `;`,
//! spaces, quotes).

use minijinja::value::{Value, ValueKind};
use minijinja::{Error, ErrorKind};

/// `{{ x | sh }}`. A string, number or boolean is one single-quoted word
/// (`''` for the empty string, `'it'\''s'` for `it's`, `'3'` for 3); none
/// (JSON null) is `''`; a list is its items quoted each, joined by spaces
/// (several words; nothing at all for an empty list); a map is its JSON
/// text as one word. An undefined value is an error, as everywhere in
/// convoy's templates: a missing value must not quietly become `''`.
pub fn sh(value: &Value) -> Result<String, Error> {
    match value.kind() {
        ValueKind::Seq | ValueKind::Iterable => {
            let words: Result<Vec<String>, Error> = value.try_iter()?.map(|v| word(&v)).collect();
            Ok(words?.join(" "))
        }
        _ => word(value),
    }
}

/// One value as one word.
fn word(value: &Value) -> Result<String, Error> {
    let text = match value.kind() {
        ValueKind::Undefined => {
            return Err(Error::new(
                ErrorKind::UndefinedError,
                "the `sh` filter got an undefined value",
            ))
        }
        ValueKind::None => String::new(),
        // JSON's words, not Python's `True` that minijinja prints.
        ValueKind::Bool => value.is_true().to_string(),
        ValueKind::String => value.as_str().unwrap_or_default().to_string(),
        ValueKind::Map | ValueKind::Seq | ValueKind::Iterable => serde_json::to_string(value)
            .map_err(|e| Error::new(ErrorKind::InvalidOperation, e.to_string()))?,
        _ => value.to_string(),
    };
    Ok(quote(&text))
}

/// A string as one single-quoted shell word.
pub fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn render(template: &str, ctx: serde_json::Value) -> Result<String, Error> {
        crate::tasks::template_env().render_str(template, ctx)
    }

    #[test]
    fn strings_are_one_single_quoted_word() {
        assert_eq!(
            render("{{ x | sh }}", json!({"x": "a b"})).unwrap(),
            "'a b'"
        );
        assert_eq!(render("{{ x | sh }}", json!({"x": ""})).unwrap(), "''");
        assert_eq!(
            render("{{ x | sh }}", json!({"x": "it's"})).unwrap(),
            r"'it'\''s'"
        );
        let nasty = "$(rm -rf /); `id` \"q\" \\ \n*";
        assert_eq!(
            render("{{ x | sh }}", json!({ "x": nasty })).unwrap(),
            format!("'{nasty}'")
        );
    }

    #[test]
    fn numbers_booleans_and_null_are_words_too() {
        let ctx = json!({"i": 3, "f": 1.5, "neg": -2, "t": true, "n": null});
        assert_eq!(
            render(
                "{{ i | sh }} {{ f | sh }} {{ neg | sh }} {{ t | sh }} {{ n | sh }}",
                ctx
            )
            .unwrap(),
            "'3' '1.5' '-2' 'true' ''"
        );
    }

    #[test]
    fn a_list_is_one_word_per_item_and_a_map_its_json() {
        let ctx = json!({"l": ["a b", 2, "c'd"], "e": [], "m": {"k": "v"}});
        assert_eq!(
            render("x {{ l | sh }}", ctx.clone()).unwrap(),
            r"x 'a b' '2' 'c'\''d'"
        );
        assert_eq!(render("x {{ e | sh }}", ctx.clone()).unwrap(), "x ");
        assert_eq!(render("{{ m | sh }}", ctx).unwrap(), r#"'{"k":"v"}'"#);
    }

    #[test]
    fn undefined_is_an_error_but_default_still_works() {
        let err = render("{{ x | sh }}", json!({})).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::UndefinedError);
        assert_eq!(
            render("{{ x | default('.') | sh }}", json!({})).unwrap(),
            "'.'"
        );
    }

    /// What the quoting is for: bash reads each value back unchanged.
    #[test]
    fn bash_reads_every_value_back_unchanged() {
        let values = [
            "plain",
            "",
            "it's",
            "a  b",
            "$HOME `x` \"y\" \\z",
            "line\nbreak",
        ];
        for v in values {
            let cmd = render("printf %s {{ v | sh }}", json!({ "v": v })).unwrap();
            let out = std::process::Command::new("bash")
                .args(["-c", &cmd])
                .output()
                .unwrap();
            assert_eq!(String::from_utf8_lossy(&out.stdout), v, "{cmd}");
        }
    }
}
