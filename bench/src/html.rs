//! Self-contained HTML reports (`--html FILE`): no script, no external
//! asset, charts drawn as inline SVG, so a report opens offline and can be
//! attached to an issue as one file.
//!
//! A run's page: settings, summary, errors, throughput over time (answers
//! per second, per 100 ms step) and the latency percentile curve (from the
//! HdrHistogram, on HdrHistogram's "nines" axis). The comparison page
//! (`--compare-json a.json,b.json --html FILE`, what `make bench` writes)
//! puts several runs' summaries in one table and their curves in one chart.
//! Both render from the `--json` summary, so a page can be made again from
//! a saved run.

use std::fmt::Write;

use serde_json::Value;

/// Colours of the series, in order.
const COLOURS: [&str; 6] = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b"];
const WIDTH: f64 = 760.0;
const HEIGHT: f64 = 300.0;
const MARGIN: f64 = 56.0;

/// One run's page.
pub fn run_page(summary: &Value) -> String {
    let mut body = String::new();
    let title = format!(
        "kamaitachi-bench: scenario {} against {}",
        text(&summary["scenario"]),
        text(&summary["target"])
    );
    let _ = write!(body, "<h1>{}</h1>", esc(&title));
    body.push_str(&summary_table(&[("run".into(), summary.clone())]));
    body.push_str("<h2>Throughput over time</h2>");
    body.push_str(&chart(
        &[("answers/s".into(), throughput(summary))],
        "seconds since start",
        "answers per second",
        Axis::Linear,
    ));
    body.push_str("<h2>Latency by percentile</h2>");
    body.push_str(&chart(
        &[("latency".into(), curve(summary))],
        "percentile",
        "milliseconds",
        Axis::Nines,
    ));
    body.push_str("<h2>Errors</h2>");
    body.push_str(&errors_table(summary));
    body.push_str("<h2>Settings</h2><table>");
    for key in [
        "target",
        "scenario",
        "concurrency",
        "requests_limit",
        "duration_limit_s",
        "repeat",
        "seed",
        "subjects",
        "timeout_ms",
    ] {
        let _ = write!(
            body,
            "<tr><th>{}</th><td>{}</td></tr>",
            esc(key),
            esc(&text(&summary[key]))
        );
    }
    body.push_str("</table>");
    page(&title, &body)
}

/// Several runs side by side: `(label, summary)`.
pub fn compare_page(runs: &[(String, Value)]) -> String {
    let mut body = String::from("<h1>kamaitachi-bench: comparison</h1>");
    body.push_str(&summary_table(runs));
    body.push_str("<h2>Latency by percentile</h2>");
    let series: Vec<(String, Vec<(f64, f64)>)> = runs.iter().map(|(l, s)| (l.clone(), curve(s))).collect();
    body.push_str(&chart(&series, "percentile", "milliseconds", Axis::Nines));
    body.push_str("<h2>Throughput over time</h2>");
    let series: Vec<(String, Vec<(f64, f64)>)> =
        runs.iter().map(|(l, s)| (l.clone(), throughput(s))).collect();
    body.push_str(&chart(
        &series,
        "seconds since start",
        "answers per second",
        Axis::Linear,
    ));
    page("kamaitachi-bench comparison", &body)
}

fn page(title: &str, body: &str) -> String {
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{}</title>\n<style>\
body{{font:13px/1.4 system-ui,sans-serif;margin:20px;color:#222}}h1{{font-size:18px}}h2{{font-size:15px;margin-top:22px}}\
table{{border-collapse:collapse}}th,td{{border:1px solid #ccc;padding:3px 8px;text-align:right}}th{{background:#eef;text-align:left}}\
svg text{{font:11px system-ui,sans-serif}}</style></head>\n<body>{body}</body></html>\n",
        esc(title)
    )
}

fn summary_table(runs: &[(String, Value)]) -> String {
    let mut t = String::from(
        "<table><tr><th>run</th><th>target</th><th>scenario</th><th>conc.</th><th>requests</th><th>errors</th>\
<th>req/s</th><th>p50 ms</th><th>p95 ms</th><th>p99 ms</th><th>max ms</th><th>hit rate</th></tr>",
    );
    for (label, s) in runs {
        let l = &s["latency_ms"];
        let _ = write!(
            t,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(label),
            esc(&text(&s["target"])),
            esc(&text(&s["scenario"])),
            esc(&text(&s["concurrency"])),
            esc(&text(&s["requests"])),
            esc(&text(&s["errors_total"])),
            num(&s["qps"], 0),
            num(&l["p50"], 3),
            num(&l["p95"], 3),
            num(&l["p99"], 3),
            num(&l["max"], 3),
            num(&s["hit_rate"]["run"]["hit_rate"], 4),
        );
    }
    t.push_str("</table>");
    t
}

fn errors_table(s: &Value) -> String {
    match s["errors"].as_object() {
        Some(e) if !e.is_empty() => {
            let mut t = String::from("<table><tr><th>kind</th><th>count</th></tr>");
            for (k, n) in e {
                let _ = write!(t, "<tr><td>{}</td><td>{}</td></tr>", esc(k), esc(&text(n)));
            }
            t.push_str("</table>");
            t
        }
        _ => "<p>none</p>".into(),
    }
}

/// `(seconds, answers per second)` from the timeline.
fn throughput(s: &Value) -> Vec<(f64, f64)> {
    let step = s["timeline"]["step_ms"].as_f64().unwrap_or(100.0).max(1.0) / 1000.0;
    let ok = s["timeline"]["ok"].as_array().cloned().unwrap_or_default();
    let err = s["timeline"]["errors"].as_array().cloned().unwrap_or_default();
    ok.iter()
        .enumerate()
        .map(|(i, n)| {
            let e = err.get(i).and_then(Value::as_f64).unwrap_or(0.0);
            ((i as f64 + 1.0) * step, (n.as_f64().unwrap_or(0.0) + e) / step)
        })
        .collect()
}

/// `(percentile, ms)` from the latency curve.
fn curve(s: &Value) -> Vec<(f64, f64)> {
    s["latency_curve_ms"]
        .as_array()
        .map(|pts| {
            pts.iter()
                .filter_map(|p| Some((p[0].as_f64()?, p[1].as_f64()?)))
                .collect()
        })
        .unwrap_or_default()
}

#[derive(Clone, Copy)]
enum Axis {
    Linear,
    /// Percentiles on HdrHistogram's axis: 90, 99, 99.9 … equally spaced.
    Nines,
}

/// Position of `x` on the axis, before scaling.
fn axis_pos(axis: Axis, x: f64) -> f64 {
    match axis {
        Axis::Linear => x,
        Axis::Nines => -(1.0 - (x / 100.0).min(0.99999)).log10(),
    }
}

/// A line chart as inline SVG.
fn chart(series: &[(String, Vec<(f64, f64)>)], x_label: &str, y_label: &str, axis: Axis) -> String {
    let points = series.iter().flat_map(|(_, p)| p.iter());
    let (mut x_max, mut y_max) = (0.0f64, 0.0f64);
    for &(x, y) in points {
        x_max = x_max.max(axis_pos(axis, x));
        y_max = y_max.max(y);
    }
    if x_max <= 0.0 || y_max <= 0.0 {
        return "<p>no data</p>".into();
    }
    let y_max = nice(y_max);
    let (w, h) = (WIDTH - 2.0 * MARGIN, HEIGHT - 2.0 * MARGIN);
    let sx = |x: f64| MARGIN + axis_pos(axis, x) / x_max * w;
    let sy = |y: f64| MARGIN + h - y / y_max * h;
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{HEIGHT}\" viewBox=\"0 0 {WIDTH} {HEIGHT}\">\
<rect x=\"{MARGIN}\" y=\"{MARGIN}\" width=\"{w}\" height=\"{h}\" fill=\"#fff\" stroke=\"#999\"/>"
    );
    for i in 0..=4 {
        let y = y_max * f64::from(i) / 4.0;
        let (right, at, label_x, label_y) = (MARGIN + w, sy(y), MARGIN - 4.0, sy(y) + 4.0);
        let _ = write!(
            svg,
            "<line x1=\"{MARGIN}\" x2=\"{right}\" y1=\"{at:.1}\" y2=\"{at:.1}\" stroke=\"#eee\"/>\
<text x=\"{label_x}\" y=\"{label_y:.1}\" text-anchor=\"end\">{}</text>",
            short(y)
        );
    }
    let ticks: Vec<(f64, String)> = match axis {
        Axis::Nines => [0.0, 90.0, 99.0, 99.9, 99.99, 99.999]
            .iter()
            .filter(|p| axis_pos(axis, **p) <= x_max + 1e-9)
            .map(|p| (*p, format!("{p}%")))
            .collect(),
        Axis::Linear => (0..=4)
            .map(|i| x_max * f64::from(i) / 4.0)
            .map(|x| (x, short(x)))
            .collect(),
    };
    for (x, label) in ticks {
        let _ = write!(
            svg,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
            sx(x),
            MARGIN + h + 14.0,
            esc(&label)
        );
    }
    let _ = write!(
        svg,
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text><text x=\"12\" y=\"{:.1}\" transform=\"rotate(-90 12 {:.1})\" text-anchor=\"middle\">{}</text>",
        MARGIN + w / 2.0,
        HEIGHT - 8.0,
        esc(x_label),
        MARGIN + h / 2.0,
        MARGIN + h / 2.0,
        esc(y_label)
    );
    for (i, (name, pts)) in series.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let path: Vec<String> = pts
            .iter()
            .map(|&(x, y)| format!("{:.1},{:.1}", sx(x), sy(y)))
            .collect();
        let _ = write!(
            svg,
            "<polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\" points=\"{}\"/>\
<rect x=\"{:.1}\" y=\"{:.1}\" width=\"10\" height=\"10\" fill=\"{colour}\"/><text x=\"{:.1}\" y=\"{:.1}\">{}</text>",
            path.join(" "),
            MARGIN + 8.0,
            MARGIN + 6.0 + 14.0 * i as f64,
            MARGIN + 22.0,
            MARGIN + 15.0 + 14.0 * i as f64,
            esc(name)
        );
    }
    svg.push_str("</svg>");
    svg
}

/// A round upper bound for an axis.
fn nice(v: f64) -> f64 {
    let p = 10f64.powf(v.log10().floor());
    [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * p)
        .find(|c| *c >= v)
        .unwrap_or(v)
}

fn short(v: f64) -> String {
    if v >= 10_000.0 {
        format!("{:.0}k", v / 1000.0)
    } else if v >= 10.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

fn text(v: &Value) -> String {
    match v {
        Value::Null => "–".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn num(v: &Value, decimals: usize) -> String {
    v.as_f64()
        .map_or_else(|| "–".into(), |f| format!("{f:.decimals$}"))
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn summary(target: &str) -> Value {
        json!({
            "target": target, "scenario": "1 (multi)", "concurrency": 4, "requests": 30, "errors_total": 2,
            "errors": {"HTTP 500": 2}, "qps": 1234.5,
            "latency_ms": {"p50": 1.0, "p95": 2.0, "p99": 3.0, "max": 4.0},
            "latency_curve_ms": [[0.0, 0.5], [50.0, 1.0], [99.0, 3.0], [100.0, 4.0]],
            "timeline": {"step_ms": 100, "ok": [10, 12, 6], "errors": [0, 2, 0]},
            "hit_rate": {"run": {"hit_rate": 0.5}},
        })
    }

    #[test]
    fn a_run_page_is_self_contained_and_escaped() {
        let html = run_page(&summary("http://x/<script>"));
        assert!(html.starts_with("<!doctype html>"));
        assert!(!html.contains("<script"), "no script, and text escaped");
        assert!(html.contains("&lt;script&gt;"));
        assert!(
            !html.contains("src=") && !html.contains("href="),
            "no external asset"
        );
        assert_eq!(html.matches("<svg").count(), 2, "throughput and latency charts");
        assert!(html.contains("HTTP 500") && html.contains("1234"));
        // 12 ok + 2 errors in the second step of 100 ms: 140 answers/s.
        assert!(html.contains(&format!("{:.1},", MARGIN + 2.0 / 3.0 * (WIDTH - 2.0 * MARGIN))));
    }

    #[test]
    fn a_comparison_has_every_run() {
        let html = compare_page(&[("direct".into(), summary("a")), ("gateway".into(), summary("b"))]);
        assert!(html.contains(">direct<") && html.contains(">gateway<"));
        assert_eq!(html.matches("<polyline").count(), 4);
    }

    #[test]
    fn nines_axis_spreads_the_tail() {
        assert!((axis_pos(Axis::Nines, 90.0) - 1.0).abs() < 1e-9);
        assert!((axis_pos(Axis::Nines, 99.0) - 2.0).abs() < 1e-9);
        assert!(axis_pos(Axis::Nines, 100.0) <= 5.0 + 1e-9);
    }
}
