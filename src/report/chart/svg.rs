//! Drawing the chart: panel layout, polylines thinned for long runs,
//! legends, all as self-contained SVG text (the axis ticks come from
//! `axis`).

use std::fmt::Write as _;

use super::axis::{nice_step, nice_ticks, tick_label, trim_float};
use super::metrics::Metrics;

const WIDTH: f64 = 900.0;
const HEIGHT: f64 = 800.0;
/// Room for the y tick labels.
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
/// Room for the chart's title.
const TOP: f64 = 40.0;
/// Room for the x tick labels and the axis label.
const BOTTOM: f64 = 50.0;
/// Room above each plot for its title and legend.
const TITLE_ROW: f64 = 24.0;
const PANEL_GAP: f64 = 14.0;
const PLOT_W: f64 = WIDTH - LEFT - RIGHT;

pub(super) struct SeriesSpec {
    pub(super) column: &'static str,
    pub(super) label: &'static str,
    pub(super) color: &'static str,
    pub(super) dashed: bool,
}

pub(super) struct PanelSpec {
    pub(super) title: &'static str,
    pub(super) series: &'static [SeriesSpec],
}

const fn line(column: &'static str, label: &'static str, color: &'static str) -> SeriesSpec {
    SeriesSpec {
        column,
        label,
        color,
        dashed: false,
    }
}

pub(super) const PANELS: &[PanelSpec] = &[
    PanelSpec {
        title: "convoy open FDs",
        series: &[line("open_fds", "open FDs", "#1f77b4")],
    },
    PanelSpec {
        title: "tmux sessions and workspace processes",
        series: &[
            line("tmux_sessions", "tmux sessions", "#1f77b4"),
            line("workspace_procs", "workspace processes", "#9467bd"),
        ],
    },
    PanelSpec {
        title: "in flight",
        series: &[
            line("in_flight", "conversations", "#1f77b4"),
            line("llm_in_flight", "LLM requests", "#ff7f0e"),
            // The limit is a ceiling, not a measurement: dashed.
            SeriesSpec {
                column: "llm_limit",
                label: "LLM limit",
                color: "#7f7f7f",
                dashed: true,
            },
        ],
    },
    PanelSpec {
        title: "done over time",
        series: &[
            line("done", "done", "#2ca02c"),
            line("failed", "failed", "#d62728"),
        ],
    },
];

/// Escapes text for XML content and attribute values.
fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // Control characters other than tab and newline are not allowed
            // in XML 1.0 at all.
            c if c.is_control() && c != '\t' && c != '\n' => {}
            c => out.push(c),
        }
    }
    out
}

fn svg_open(out: &mut String, height: f64) {
    let _ = writeln!(
        out,
        r#"<?xml version="1.0" encoding="UTF-8"?>
<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="12">
<rect x="0" y="0" width="{WIDTH}" height="{height}" fill="white"/>"#
    );
}

pub(super) fn render_svg(name: &str, m: &Metrics) -> String {
    let mut out = String::new();
    let title = format!("convoy metrics: {name}");
    let panels: Vec<(&PanelSpec, Vec<&SeriesSpec>)> = PANELS
        .iter()
        .map(|p| {
            let present = p
                .series
                .iter()
                .filter(|s| {
                    m.columns
                        .get(s.column)
                        .is_some_and(|v| v.iter().any(Option::is_some))
                })
                .collect();
            (p, present)
        })
        .filter(|(_, present): &(_, Vec<_>)| !present.is_empty())
        .collect();

    let problem = if m.elapsed.len() < 2 {
        Some(format!(
            "not enough samples to chart: {} in metrics.csv (at least 2 are needed)",
            m.elapsed.len()
        ))
    } else if panels.is_empty() {
        Some("metrics.csv has none of the charted columns".to_string())
    } else {
        None
    };
    if let Some(problem) = problem {
        let height = 120.0;
        svg_open(&mut out, height);
        let _ = writeln!(
            out,
            r##"<text x="{LEFT}" y="30" font-size="15" font-weight="bold">{}</text>
<text x="{}" y="75" font-size="14" text-anchor="middle" fill="#555">{}</text>
</svg>"##,
            xml_escape(&title),
            WIDTH / 2.0,
            xml_escape(&problem)
        );
        return out;
    }

    svg_open(&mut out, HEIGHT);
    let x_max = m.elapsed.iter().copied().fold(0.0, f64::max);
    // All samples at 0 s would make a zero-width axis.
    let x_span = if x_max > 0.0 { x_max } else { 1.0 };
    let x_step = nice_step(x_span);
    let x_ticks: Vec<f64> = (0..)
        .map(|i| f64::from(i) * x_step)
        .take_while(|&t| t <= x_span * (1.0 + 1e-9))
        .collect();
    let px = |x: f64| LEFT + (x.clamp(0.0, x_span) / x_span) * PLOT_W;

    let mut note = format!(
        "{} samples over {}s",
        m.elapsed.len(),
        trim_float(x_max, 0.1)
    );
    if m.torn_row {
        note.push_str("; torn last row ignored");
    }
    let _ = writeln!(
        out,
        r##"<text x="{LEFT}" y="26" font-size="15" font-weight="bold">{}</text>
<text x="{}" y="26" text-anchor="end" fill="#555">{}</text>"##,
        xml_escape(&title),
        WIDTH - RIGHT,
        xml_escape(&note)
    );

    let slot = (HEIGHT - TOP - BOTTOM) / panels.len() as f64;
    for (i, (panel, series)) in panels.iter().enumerate() {
        let slot_top = TOP + slot * i as f64;
        let plot_top = slot_top + TITLE_ROW;
        let plot_h = slot - TITLE_ROW - PANEL_GAP;
        let plot_bottom = plot_top + plot_h;
        let y_max = series
            .iter()
            .flat_map(|s| m.columns[s.column].iter().flatten())
            .copied()
            .fold(0.0, f64::max);
        // A series stuck at 0 still gets an axis up to 1, so it draws as a
        // flat line along the bottom instead of dividing by zero.
        let y_ticks = nice_ticks(y_max.max(1.0));
        let y_top = y_ticks.last().copied().unwrap_or(1.0);
        let y_step = y_ticks.get(1).copied().unwrap_or(y_top);
        let py = |y: f64| plot_bottom - (y.clamp(0.0, y_top) / y_top) * plot_h;

        let _ = writeln!(out, r#"<g class="panel">"#);
        let _ = writeln!(
            out,
            r#"<text x="{LEFT}" y="{:.1}" font-size="13" font-weight="bold">{}</text>"#,
            slot_top + 16.0,
            xml_escape(panel.title)
        );
        write_legend(&mut out, panel.title, series, slot_top + 16.0);

        for &t in &y_ticks {
            let y = py(t);
            let _ = writeln!(
                out,
                r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#e6e6e6"/>
<text x="{:.1}" y="{:.1}" text-anchor="end" fill="#444">{}</text>"##,
                LEFT + PLOT_W,
                LEFT - 6.0,
                y + 4.0,
                xml_escape(&tick_label(t, y_step))
            );
        }
        for &t in &x_ticks {
            let x = px(t);
            let _ = writeln!(
                out,
                r##"<line x1="{x:.1}" y1="{plot_top:.1}" x2="{x:.1}" y2="{plot_bottom:.1}" stroke="#e6e6e6"/>"##
            );
        }
        let _ = writeln!(
            out,
            r##"<polyline points="{LEFT},{plot_top:.1} {LEFT},{plot_bottom:.1} {:.1},{plot_bottom:.1}" fill="none" stroke="#888"/>"##,
            LEFT + PLOT_W
        );

        for s in series {
            let points: Vec<(f64, f64)> = m
                .elapsed
                .iter()
                .zip(&m.columns[s.column])
                .filter_map(|(&x, &y)| Some((px(x), py(y?))))
                .collect();
            let points = decimate(&points);
            let mut attr = String::with_capacity(points.len() * 12);
            for (x, y) in points {
                let _ = write!(attr, "{x:.1},{y:.1} ");
            }
            let dash = if s.dashed {
                r#" stroke-dasharray="6 4""#
            } else {
                ""
            };
            let _ = writeln!(
                out,
                r#"<polyline class="series" data-column="{}" points="{}" fill="none" stroke="{}" stroke-width="1.5" stroke-linejoin="round"{dash}/>"#,
                xml_escape(s.column),
                attr.trim_end(),
                s.color
            );
        }
        if i + 1 == panels.len() {
            for &t in &x_ticks {
                let _ = writeln!(
                    out,
                    r##"<text x="{:.1}" y="{:.1}" text-anchor="middle" fill="#444">{}</text>"##,
                    px(t),
                    plot_bottom + 16.0,
                    xml_escape(&tick_label(t, x_step))
                );
            }
        }
        let _ = writeln!(out, "</g>");
    }
    let _ = writeln!(
        out,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">elapsed time (s)</text>
</svg>"#,
        LEFT + PLOT_W / 2.0,
        HEIGHT - 12.0
    );
    out
}

/// The legend, on the title's row to its right. Text widths are estimated
/// from the character count: good enough for the short fixed labels here.
fn write_legend(out: &mut String, title: &str, series: &[&SeriesSpec], baseline: f64) {
    let mut x = LEFT + title.chars().count() as f64 * 7.8 + 24.0;
    for s in series {
        let dash = if s.dashed {
            r#" stroke-dasharray="6 4""#
        } else {
            ""
        };
        let _ = writeln!(
            out,
            r#"<line x1="{x:.1}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="{}" stroke-width="2"{dash}/>
<text x="{:.1}" y="{baseline:.1}">{}</text>"#,
            x + 20.0,
            s.color,
            x + 24.0,
            xml_escape(s.label),
            y = baseline - 4.0
        );
        x += 24.0 + s.label.chars().count() as f64 * 6.8 + 18.0;
    }
}

/// Thins a long series (a day-long soak has ~100k samples) to at most two
/// points per pixel column: the lowest and the highest, in their order, so
/// a one-sample spike is still drawn.
fn decimate(points: &[(f64, f64)]) -> Vec<(f64, f64)> {
    if points.len() <= 2 * PLOT_W as usize {
        return points.to_vec();
    }
    let mut out = Vec::with_capacity(2 * PLOT_W as usize + 2);
    let mut i = 0;
    while i < points.len() {
        let column = points[i].0.floor();
        let (mut lo, mut hi) = (i, i);
        let mut j = i;
        while j < points.len() && points[j].0.floor() == column {
            // Screen y grows downwards, so the highest value has the lowest y.
            if points[j].1 > points[lo].1 {
                lo = j;
            }
            if points[j].1 < points[hi].1 {
                hi = j;
            }
            j += 1;
        }
        out.push(points[lo.min(hi)]);
        if lo != hi {
            out.push(points[lo.max(hi)]);
        }
        i = j;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::analyze::ReportError;
    use crate::report::write_chart;

    const HEADER: &str = "elapsed_s,open_fds,threads,rss_bytes,tmux_sessions,workspace_procs,workspace_fds,in_flight,done,failed,llm_in_flight,leaks";

    fn chart(csv: &str) -> String {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("metrics.csv"), csv).unwrap();
        let path = dir.path().join("metrics.svg");
        write_chart(dir.path(), &path).unwrap();
        std::fs::read_to_string(path).unwrap()
    }

    fn synthetic(rows: usize, extra: &str) -> String {
        let mut csv = format!(
            "{HEADER}{}\n",
            if extra.is_empty() { "" } else { ",llm_limit" }
        );
        for i in 0..rows {
            let _ = write!(
                csv,
                "{}.0,{},40,1000000,{},{},3,{},{},{},{},0",
                i * 2,
                20 + i,
                i % 3,
                i % 4,
                i % 5,
                i * 10,
                i,
                i % 2
            );
            if !extra.is_empty() {
                csv.push(',');
                csv.push_str(extra);
            }
            csv.push('\n');
        }
        csv
    }

    /// Every (x, y) in the `points` attributes of the polylines.
    fn polyline_points(svg: &str) -> Vec<(f64, f64)> {
        svg.split("<polyline")
            .skip(1)
            .flat_map(|el| {
                let start = el.find("points=\"").unwrap() + 8;
                let end = start + el[start..].find('"').unwrap();
                el[start..end]
                    .split_whitespace()
                    .map(|p| {
                        let (x, y) = p.split_once(',').unwrap();
                        (x.parse().unwrap(), y.parse().unwrap())
                    })
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// The y of each point drawn for `column`.
    fn series_ys(svg: &str, column: &str) -> Vec<f64> {
        let el = &svg[svg.find(&format!("data-column=\"{column}\"")).unwrap()..];
        let el = &el[..el.find("/>").unwrap()];
        polyline_points(&format!("<polyline {el}"))
            .iter()
            .map(|p| p.1)
            .collect()
    }

    #[test]
    fn synthetic_metrics_chart() {
        let svg = chart(&synthetic(30, "8"));
        assert!(svg.contains("<svg"));
        assert_eq!(svg.matches("<svg").count(), 1);
        assert_eq!(svg.matches("</svg>").count(), 1);
        assert!(svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<g ").count(), svg.matches("</g>").count());
        assert!(!svg.contains("<script"));
        for title in [
            "convoy open FDs",
            "tmux sessions and workspace processes",
            "in flight",
            "done over time",
            "elapsed time (s)",
        ] {
            assert!(svg.contains(title), "missing {title}");
        }
        for column in [
            "open_fds",
            "tmux_sessions",
            "workspace_procs",
            "in_flight",
            "llm_in_flight",
            "llm_limit",
            "done",
            "failed",
        ] {
            let el = format!("data-column=\"{column}\"");
            assert_eq!(svg.matches(&el).count(), 1, "{column}");
        }
        assert!(svg.contains("stroke-dasharray"));
        let points = polyline_points(&svg);
        assert!(points.len() > 8 * 30);
        for (x, y) in points {
            assert!((0.0..=WIDTH).contains(&x) && (0.0..=HEIGHT).contains(&y));
        }
    }

    #[test]
    fn missing_columns_are_skipped() {
        let csv = "elapsed_s,done,open_fds\n0,0,5\n1,3,5\n2,7,5\n";
        let svg = chart(csv);
        assert!(svg.contains("convoy open FDs"));
        assert!(svg.contains("done over time"));
        assert!(!svg.contains("tmux sessions"));
        assert!(!svg.contains(">in flight<"));
        assert_eq!(svg.matches("class=\"series\"").count(), 2);
        // Constant open_fds (the first series drawn): a flat line.
        let ys = series_ys(&svg, "open_fds");
        assert_eq!(ys.len(), 3);
        assert!(ys.iter().all(|&y| y == ys[0]), "{ys:?}");
    }

    /// A sample the workspace did not answer is an empty cell: the chart
    /// leaves it out instead of drawing a drop to 0.
    #[test]
    fn gaps_in_metrics_csv_are_skipped_not_drawn_as_zero() {
        let svg = chart("elapsed_s,tmux_sessions,open_fds\n0,4,9\n5,,9\n10,4,9\n");
        let ys = series_ys(&svg, "tmux_sessions");
        assert_eq!(ys.len(), 2, "{ys:?}");
        assert_eq!(ys[0], ys[1], "{ys:?}");
        // The row is still a sample: its other columns are drawn.
        assert!(svg.contains("3 samples over 10.0s"), "{svg}");
    }

    #[test]
    fn constant_zero_series_draws_flat() {
        let csv = "elapsed_s,failed\n0,0\n5,0\n";
        let svg = chart(csv);
        let points = polyline_points(&svg);
        let series: Vec<_> = points.iter().rev().take(2).collect();
        assert_eq!(series[0].1, series[1].1);
        assert!(svg.contains(">1<"));
    }

    #[test]
    fn too_few_samples_still_writes_an_svg() {
        for csv in [format!("{HEADER}\n"), synthetic(1, "")] {
            let svg = chart(&csv);
            assert!(svg.contains("not enough samples"), "{svg}");
            assert!(svg.trim_end().ends_with("</svg>"));
        }
    }

    #[test]
    fn torn_last_row_is_dropped_and_bad_rows_are_errors() {
        let mut csv = synthetic(3, "");
        csv.push_str("6.0,2");
        let svg = chart(&csv);
        assert!(svg.contains("3 samples"), "{svg}");
        assert!(svg.contains("torn last row ignored"));

        let dir = tempfile::tempdir().unwrap();
        let bad = "elapsed_s,done\n0,1\n1,x\n2,3\n";
        std::fs::write(dir.path().join("metrics.csv"), bad).unwrap();
        // An earlier chart survives a failed one.
        let svg = dir.path().join("metrics.svg");
        std::fs::write(&svg, "<svg>earlier</svg>").unwrap();
        let err = write_chart(dir.path(), &svg).unwrap_err();
        assert!(err.to_string().contains("metrics.csv:3:"), "{err}");

        std::fs::write(dir.path().join("metrics.csv"), "done\n1\n").unwrap();
        let err = write_chart(dir.path(), &svg).unwrap_err();
        assert!(matches!(err, ReportError::MissingColumn { .. }), "{err}");
        assert_eq!(std::fs::read_to_string(&svg).unwrap(), "<svg>earlier</svg>");
    }

    #[test]
    fn text_is_escaped() {
        assert_eq!(xml_escape("a<b & \"c\"\u{1}"), "a&lt;b &amp; &quot;c&quot;");
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("x&<y>");
        std::fs::create_dir(&run).unwrap();
        std::fs::write(run.join("metrics.csv"), "elapsed_s,done\n0,1\n1,2\n").unwrap();
        write_chart(&run, &run.join("metrics.svg")).unwrap();
        let svg = std::fs::read_to_string(run.join("metrics.svg")).unwrap();
        assert!(svg.contains("x&amp;&lt;y&gt;"));
    }

    #[test]
    fn long_series_are_thinned_but_keep_spikes() {
        let mut points: Vec<(f64, f64)> = (0..100_000)
            .map(|i| (LEFT + i as f64 * PLOT_W / 100_000.0, 500.0))
            .collect();
        points[50_001].1 = 10.0;
        let thin = decimate(&points);
        assert!(thin.len() <= 2 * PLOT_W as usize + 2);
        assert!(thin.iter().any(|p| p.1 == 10.0));
        assert!(thin.windows(2).all(|w| w[0].0 <= w[1].0));
    }
}
