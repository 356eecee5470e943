//! Reading `metrics.csv` into the series the chart draws, and writing the
//! chart file.

use std::collections::HashMap;
use std::path::Path;

use super::svg;
use crate::report::analyze::{dir_name, ReportError};

/// The samples of `metrics.csv` that the chart uses.
pub(super) struct Metrics {
    pub(super) elapsed: Vec<f64>,
    /// Per charted column present in the header; `None` for an empty cell.
    pub(super) columns: HashMap<&'static str, Vec<Option<f64>>>,
    pub(super) torn_row: bool,
}

/// Reads `dir/metrics.csv` and writes the chart to `out` (atomically: an
/// error leaves an existing file as it was).
pub fn write_chart(dir: &Path, out: &Path) -> Result<(), ReportError> {
    let csv_path = dir.join("metrics.csv");
    let metrics = read_metrics(&csv_path)?;
    let svg = svg::render_svg(&dir_name(dir), &metrics);
    crate::journal::write_atomically(out, svg.as_bytes()).map_err(|source| ReportError::Write {
        path: out.to_path_buf(),
        source,
    })
}

fn read_metrics(path: &Path) -> Result<Metrics, ReportError> {
    let bytes = std::fs::read(path).map_err(|source| ReportError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let line_err = |line: u64, message: String| ReportError::Line {
        path: path.to_path_buf(),
        line,
        message,
    };
    // Flexible, so a short torn last row reaches the check below instead of
    // failing the read; short rows elsewhere are rejected there.
    let mut reader = csv::ReaderBuilder::new()
        .flexible(true)
        .from_reader(bytes.as_slice());
    let header = reader
        .headers()
        .map_err(|e| line_err(1, format!("invalid header: {e}")))?
        .clone();
    let index = |name: &str| header.iter().position(|h| h.trim() == name);
    let x_col = index("elapsed_s").ok_or_else(|| ReportError::MissingColumn {
        path: path.to_path_buf(),
        column: "elapsed_s".into(),
    })?;
    let wanted: Vec<(&'static str, usize)> = svg::PANELS
        .iter()
        .flat_map(|p| p.series)
        .filter_map(|s| Some((s.column, index(s.column)?)))
        .collect();

    let mut rows = Vec::new();
    for rec in reader.records() {
        let rec = rec.map_err(|e| {
            let line = e.position().map_or(0, |p| p.line());
            line_err(line, format!("invalid row: {e}"))
        })?;
        let line = rec.position().map_or(0, |p| p.line());
        rows.push((line, rec));
    }
    // The sampler ends every row with a newline, so a file that does not
    // end with one was cut mid-row by a crash. The row may still parse (a
    // number cut short is still a number), so it is dropped either way;
    // losing one sample costs the chart nothing.
    let torn_row = !bytes.ends_with(b"\n") && rows.pop().is_some();

    let mut metrics = Metrics {
        elapsed: Vec::with_capacity(rows.len()),
        columns: wanted
            .iter()
            .map(|&(name, _)| (name, Vec::with_capacity(rows.len())))
            .collect(),
        torn_row,
    };
    for (line, rec) in &rows {
        if rec.len() != header.len() {
            return Err(line_err(
                *line,
                format!("expected {} fields, found {}", header.len(), rec.len()),
            ));
        }
        let cell = |col: usize, name: &str| -> Result<Option<f64>, ReportError> {
            let text = rec.get(col).unwrap_or("").trim();
            if text.is_empty() {
                return Ok(None);
            }
            match text.parse::<f64>() {
                Ok(v) if v.is_finite() => Ok(Some(v)),
                _ => Err(line_err(
                    *line,
                    format!("`{name}` is not a number: `{text}`"),
                )),
            }
        };
        let x = cell(x_col, "elapsed_s")?
            .ok_or_else(|| line_err(*line, "`elapsed_s` is empty".into()))?;
        metrics.elapsed.push(x);
        for &(name, col) in &wanted {
            let v = cell(col, name)?;
            if let Some(values) = metrics.columns.get_mut(name) {
                values.push(v);
            }
        }
    }
    Ok(metrics)
}
