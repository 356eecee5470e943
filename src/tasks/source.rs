//! Task sources. A row is a map of variables plus the line it came from, so
//! every later error can point at `file:line`.

use std::io::BufRead;
use std::path::Path;

use serde_json::{Map, Value};

use super::plan::TaskError;

/// One task row: its variables and its 1-based line in the source.
#[derive(Debug, Clone)]
pub struct Row {
    pub line: usize,
    pub vars: Map<String, Value>,
}

/// Reads every row of a `.jsonl` or `.csv` source.
pub fn read_rows(path: &Path) -> Result<Vec<Row>, TaskError> {
    let read_err = |source| TaskError::Read {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read_err)?;
    match path.extension().and_then(|e| e.to_str()) {
        Some("csv") => read_csv(path, file),
        _ => read_jsonl(path, std::io::BufReader::new(file)),
    }
}

fn read_jsonl(path: &Path, reader: impl BufRead) -> Result<Vec<Row>, TaskError> {
    let mut rows = Vec::new();
    for (i, line) in reader.lines().enumerate() {
        let line_no = i + 1;
        let text =
            line.map_err(|e| TaskError::row(path, line_no, format!("unreadable line: {e}")))?;
        if text.trim().is_empty() {
            continue;
        }
        let value: Value = serde_json::from_str(&text)
            .map_err(|e| TaskError::row(path, line_no, format!("invalid JSON: {e}")))?;
        match value {
            Value::Object(vars) => rows.push(Row {
                line: line_no,
                vars,
            }),
            other => {
                return Err(TaskError::row(
                    path,
                    line_no,
                    format!("a task row must be a JSON object, found {}", kind(&other)),
                ))
            }
        }
    }
    Ok(rows)
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn read_csv(path: &Path, file: std::fs::File) -> Result<Vec<Row>, TaskError> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(false)
        .from_reader(file);
    let csv_err = |e: csv::Error| {
        let line = e.position().map(|p| p.line() as usize).unwrap_or(1);
        let message = match e.kind() {
            csv::ErrorKind::UnequalLengths {
                expected_len, len, ..
            } => format!("row has {len} fields, the header has {expected_len}"),
            _ => e.to_string(),
        };
        TaskError::row(path, line, message)
    };
    let headers = reader.headers().map_err(csv_err)?.clone();
    let mut rows = Vec::new();
    for record in reader.records() {
        let record = record.map_err(csv_err)?;
        let line = record.position().map(|p| p.line() as usize).unwrap_or(0);
        let vars = headers
            .iter()
            .zip(record.iter())
            .map(|(k, v)| (k.to_string(), Value::String(v.to_string())))
            .collect();
        rows.push(Row { line, vars });
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jsonl_skips_blank_lines_and_keeps_line_numbers() {
        let rows = read_jsonl(Path::new("t.jsonl"), "{\"a\":1}\n\n{\"a\":2}\n".as_bytes()).unwrap();
        assert_eq!(rows.iter().map(|r| r.line).collect::<Vec<_>>(), [1, 3]);
    }

    #[test]
    fn jsonl_bad_row_names_file_and_line() {
        let err = read_jsonl(Path::new("t.jsonl"), "{}\n{}\n{}\n{oops\n".as_bytes()).unwrap_err();
        assert!(
            err.to_string().starts_with("t.jsonl:4: invalid JSON"),
            "{err}"
        );
        let err = read_jsonl(Path::new("t.jsonl"), "[1]\n".as_bytes()).unwrap_err();
        assert!(err
            .to_string()
            .contains("t.jsonl:1: a task row must be a JSON object"));
    }

    #[test]
    fn csv_ragged_row_names_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.csv");
        std::fs::write(&p, "path,n\na,1\nb\n").unwrap();
        let err = read_rows(&p).unwrap_err().to_string();
        assert!(
            err.ends_with("t.csv:3: row has 1 fields, the header has 2"),
            "{err}"
        );
        std::fs::write(&p, "path,n\na,1\n\"b,c\",2\n").unwrap();
        let rows = read_rows(&p).unwrap();
        assert_eq!(rows[1].vars["path"], "b,c");
        assert_eq!(rows[1].line, 3);
    }
}
