//! Charts of stored results: one definition per kind, used by `db plot`, the HTML reports and
//! (later) the dashboard, so the same data always looks the same.
//!
//! * [`Kind`] names the charts; [`build`] turns result points (one query in ia-db gives them for
//!   every kind) into a [`Chart`]: which series, which axes, which statistic.
//! * [`Chart::svg`] draws it as SVG text (no dependencies); [`png`] rasterises that SVG with
//!   resvg and the DejaVu Sans font embedded in the binary, so no system font is needed.

mod render;

use serde::Serialize;

/// Escapes text for XML and HTML (charts and the HTML reports share it).
pub use render::escape as xml_escape;
pub use render::png;
pub use render::{status_fill, PALETTE};

/// The chart kinds of `db plot --kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    LatencyVsBatch,
    ThroughputByPlatform,
    Trend,
    Memory,
    Compatibility,
    WebVsNative,
}

impl Kind {
    pub const ALL: [Kind; 6] = [
        Kind::LatencyVsBatch,
        Kind::ThroughputByPlatform,
        Kind::Trend,
        Kind::Memory,
        Kind::Compatibility,
        Kind::WebVsNative,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::LatencyVsBatch => "latency-vs-batch",
            Kind::ThroughputByPlatform => "throughput-by-platform",
            Kind::Trend => "trend",
            Kind::Memory => "memory",
            Kind::Compatibility => "compatibility",
            Kind::WebVsNative => "web-vs-native",
        }
    }

    /// Whether the chart draws every run (a trend) or the latest result per combination.
    pub fn every_run(self) -> bool {
        self == Kind::Trend
    }
}

impl std::str::FromStr for Kind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Kind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Kind::ALL.iter().map(|k| k.as_str()).collect();
                format!("unknown chart kind '{s}' (expected {})", names.join(", "))
            })
    }
}

/// One stored result, as every chart kind reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    /// Readable model name (not a cache path).
    pub model: String,
    /// `engine/platform`, e.g. `candle/cpu`, `onnxruntime-web/webgpu`.
    pub target: String,
    pub platform: String,
    pub precision: String,
    pub batch_size: i64,
    /// pass | fail | unavailable
    pub status: String,
    pub p50_ms: Option<f64>,
    pub throughput_items_per_s: Option<f64>,
    pub peak_memory_mb: Option<f64>,
    /// When the run started, seconds since the Unix epoch, and as text.
    pub at_s: f64,
    pub at: String,
}

pub const WEB_PLATFORMS: [&str; 3] = ["wasm", "webgpu", "webnn"];

/// A chart ready to draw: as SVG here, or as JSON for the dashboard, which draws the same
/// definition in the browser.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Chart {
    pub kind: Kind,
    pub title: String,
    /// What was left out or how the figure was chosen.
    pub note: Option<String>,
    pub body: Body,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Body {
    /// Lines with markers; `x_ticks` labels the x values (batch sizes, dates).
    Lines {
        x_label: String,
        y_label: String,
        log_x: bool,
        log_y: bool,
        x_ticks: Vec<(f64, String)>,
        series: Vec<Series>,
    },
    /// Horizontal bars in groups (one group per model), one bar per series.
    Bars {
        value_label: String,
        groups: Vec<Group>,
        series: Vec<String>,
    },
    /// A status matrix: rows x columns, a status word per cell (None: not tried).
    Grid {
        rows: Vec<String>,
        columns: Vec<String>,
        cells: Vec<Vec<Option<String>>>,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Group {
    pub label: String,
    /// (series index, value, label printed beside the bar)
    pub bars: Vec<(usize, f64, String)>,
}

impl Chart {
    /// Whether there is anything to draw.
    pub fn is_empty(&self) -> bool {
        match &self.body {
            Body::Lines { series, .. } => series.iter().all(|s| s.points.is_empty()),
            Body::Bars { groups, .. } => groups.iter().all(|g| g.bars.is_empty()),
            Body::Grid { rows, .. } => rows.is_empty(),
        }
    }

    pub fn svg(&self) -> String {
        render::svg(self)
    }
}

/// Series drawn at most in one chart; the rest are named in the note.
pub const MAX_SERIES: usize = 12;

/// The one definition of each chart kind.
pub fn build(kind: Kind, points: &[Point]) -> Chart {
    match kind {
        Kind::LatencyVsBatch => by_batch(
            kind,
            points,
            "p50 latency by batch size",
            "p50 latency (ms)",
            |p| p.p50_ms,
        ),
        Kind::Memory => by_batch(
            kind,
            points,
            "Peak memory by batch size",
            "peak resident memory (MiB)",
            |p| p.peak_memory_mb,
        ),
        Kind::ThroughputByPlatform => throughput(points),
        Kind::Trend => trend(points),
        Kind::Compatibility => compatibility(points),
        Kind::WebVsNative => web_vs_native(points),
    }
}

fn passing<'a>(
    points: &'a [Point],
    value: impl Fn(&Point) -> Option<f64> + 'a,
) -> impl Iterator<Item = (&'a Point, f64)> + 'a {
    points
        .iter()
        .filter(|p| p.status == "pass")
        .filter_map(move |p| {
            value(p)
                .filter(|v| v.is_finite() && *v > 0.0)
                .map(|v| (p, v))
        })
}

/// Keeps the `MAX_SERIES` series with most points; says how many were left out.
fn limit(mut series: Vec<Series>, note: &mut Vec<String>) -> Vec<Series> {
    if series.len() > MAX_SERIES {
        let dropped = series.len() - MAX_SERIES;
        series.sort_by_key(|s| std::cmp::Reverse(s.points.len()));
        series.truncate(MAX_SERIES);
        series.sort_by(|a, b| a.name.cmp(&b.name));
        note.push(format!(
            "{dropped} more series not drawn (filter with --model, --platform or --precision)"
        ));
    }
    series
}

fn log_scale_helps(values: impl Iterator<Item = f64>) -> bool {
    let (lo, hi) = values.fold((f64::INFINITY, 0.0f64), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    lo > 0.0 && hi / lo > 30.0
}

fn note(parts: Vec<String>) -> Option<String> {
    (!parts.is_empty()).then(|| parts.join("; "))
}

fn by_batch(
    kind: Kind,
    points: &[Point],
    title: &str,
    y_label: &str,
    value: impl Fn(&Point) -> Option<f64>,
) -> Chart {
    let mut series: Vec<Series> = vec![];
    let mut batches: Vec<i64> = vec![];
    for (p, v) in passing(points, value) {
        let name = format!("{} · {} · {}", p.model, p.target, p.precision);
        match series.iter_mut().find(|s| s.name == name) {
            Some(s) => s.points.push((p.batch_size as f64, v)),
            None => series.push(Series {
                name,
                points: vec![(p.batch_size as f64, v)],
            }),
        }
        if !batches.contains(&p.batch_size) {
            batches.push(p.batch_size);
        }
    }
    for s in &mut series {
        s.points.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    batches.sort();
    let mut notes = vec!["latest result per combination".to_string()];
    let series = limit(series, &mut notes);
    let log_y = log_scale_helps(series.iter().flat_map(|s| s.points.iter().map(|p| p.1)));
    Chart {
        kind,
        title: title.into(),
        note: note(notes),
        body: Body::Lines {
            x_label: "batch size".into(),
            y_label: y_label.into(),
            log_x: batches.len() > 2,
            log_y,
            x_ticks: batches.iter().map(|b| (*b as f64, b.to_string())).collect(),
            series,
        },
    }
}

fn series_index(series: &mut Vec<String>, name: String) -> usize {
    match series.iter().position(|s| *s == name) {
        Some(i) => i,
        None => {
            series.push(name);
            series.len() - 1
        }
    }
}

fn throughput(points: &[Point]) -> Chart {
    // Best throughput of each model on each target, over batch sizes: what the target can do.
    let mut best: Vec<(String, String, f64, i64)> = vec![];
    for (p, v) in passing(points, |p| p.throughput_items_per_s) {
        let name = format!("{} · {}", p.target, p.precision);
        match best.iter_mut().find(|b| b.0 == p.model && b.1 == name) {
            Some(b) if b.2 >= v => {}
            Some(b) => {
                b.2 = v;
                b.3 = p.batch_size;
            }
            None => best.push((p.model.clone(), name, v, p.batch_size)),
        }
    }
    let mut series = vec![];
    let mut groups: Vec<Group> = vec![];
    for (model, name, v, batch) in best {
        let i = series_index(&mut series, name);
        let label = format!("{} /s (batch {batch})", significant(v));
        match groups.iter_mut().find(|g| g.label == model) {
            Some(g) => g.bars.push((i, v, label)),
            None => groups.push(Group {
                label: model,
                bars: vec![(i, v, label)],
            }),
        }
    }
    Chart {
        kind: Kind::ThroughputByPlatform,
        title: "Throughput by platform (best batch size)".into(),
        note: Some(
            "items per second, latest result per combination, highest over batch sizes".into(),
        ),
        body: Body::Bars {
            value_label: "items / s".into(),
            groups,
            series,
        },
    }
}

fn trend(points: &[Point]) -> Chart {
    let mut series: Vec<Series> = vec![];
    let mut times: Vec<(f64, String)> = vec![];
    for (p, v) in passing(points, |p| p.p50_ms) {
        let name = format!(
            "{} · {} · {} · b{}",
            p.model, p.target, p.precision, p.batch_size
        );
        match series.iter_mut().find(|s| s.name == name) {
            Some(s) => s.points.push((p.at_s, v)),
            None => series.push(Series {
                name,
                points: vec![(p.at_s, v)],
            }),
        }
        times.push((p.at_s, p.at.chars().take(16).collect()));
    }
    for s in &mut series {
        s.points.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    times.sort_by(|a, b| a.0.total_cmp(&b.0));
    times.dedup_by(|a, b| a.1 == b.1);
    // At most six dated ticks, spread over the runs.
    let step = times.len().div_ceil(6).max(1);
    let ticks = times.into_iter().step_by(step).collect();
    let mut notes = vec!["p50 latency of every run, in time order".to_string()];
    let series = limit(series, &mut notes);
    let log_y = log_scale_helps(series.iter().flat_map(|s| s.points.iter().map(|p| p.1)));
    Chart {
        kind: Kind::Trend,
        title: "p50 latency over runs".into(),
        note: note(notes),
        body: Body::Lines {
            x_label: "run started (UTC)".into(),
            y_label: "p50 latency (ms)".into(),
            log_x: false,
            log_y,
            x_ticks: ticks,
            series,
        },
    }
}

fn compatibility(points: &[Point]) -> Chart {
    let rank = |s: &str| match s {
        "pass" => 3,
        "fail" => 2,
        "unavailable" => 1,
        _ => 0,
    };
    let mut rows: Vec<String> = vec![];
    let mut columns: Vec<String> = vec![];
    let mut cells: Vec<((usize, usize), String)> = vec![];
    for p in points {
        let r = series_index(&mut rows, p.model.clone());
        let c = series_index(&mut columns, p.target.clone());
        match cells.iter_mut().find(|(k, _)| *k == (r, c)) {
            Some((_, s)) if rank(s) >= rank(&p.status) => {}
            Some((_, s)) => *s = p.status.clone(),
            None => cells.push(((r, c), p.status.clone())),
        }
    }
    let mut grid = vec![vec![None; columns.len()]; rows.len()];
    for ((r, c), s) in cells {
        grid[r][c] = Some(s);
    }
    Chart {
        kind: Kind::Compatibility,
        title: "Compatibility: model x target".into(),
        note: Some("best status over precisions and batch sizes; blank = not tried".into()),
        body: Body::Grid {
            rows,
            columns,
            cells: grid,
        },
    }
}

fn web_vs_native(points: &[Point]) -> Chart {
    // Groups: model at one batch size and precision, with at least one web and one native
    // result, so every bar in a group answers the same question.
    let mut keys: Vec<(String, i64, String)> = vec![];
    for p in points
        .iter()
        .filter(|p| p.status == "pass" && p.p50_ms.is_some())
    {
        let k = (p.model.clone(), p.batch_size, p.precision.clone());
        if !keys.contains(&k) {
            keys.push(k);
        }
    }
    let mut series = vec![];
    let mut groups = vec![];
    for (model, batch, precision) in keys {
        let members: Vec<(&Point, f64)> = passing(points, |p| p.p50_ms)
            .filter(|(p, _)| p.model == model && p.batch_size == batch && p.precision == precision)
            .collect();
        let web = members
            .iter()
            .any(|(p, _)| WEB_PLATFORMS.contains(&p.platform.as_str()));
        let native = members
            .iter()
            .any(|(p, _)| !WEB_PLATFORMS.contains(&p.platform.as_str()));
        if !(web && native) {
            continue;
        }
        let bars = members
            .into_iter()
            .map(|(p, v)| {
                (
                    series_index(&mut series, p.target.clone()),
                    v,
                    format!("{} ms", significant(v)),
                )
            })
            .collect();
        groups.push(Group {
            label: format!("{model} · batch {batch} · {precision}"),
            bars,
        });
    }
    Chart {
        kind: Kind::WebVsNative,
        title: "Browser platforms beside native ones (p50 latency, lower is better)".into(),
        note: Some("latest result per combination; groups with a web and a native result".into()),
        body: Body::Bars {
            value_label: "p50 latency (ms)".into(),
            groups,
            series,
        },
    }
}

/// Three significant figures, without exponent for everyday magnitudes.
pub fn significant(v: f64) -> String {
    if v == 0.0 || !v.is_finite() {
        return format!("{v}");
    }
    let digits = (2 - v.abs().log10().floor() as i32).max(0) as usize;
    format!("{v:.digits$}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(model: &str, target: &str, batch: i64, p50: f64, status: &str) -> Point {
        Point {
            model: model.into(),
            target: target.into(),
            platform: target.split('/').next_back().unwrap().into(),
            precision: "f32".into(),
            batch_size: batch,
            status: status.into(),
            p50_ms: Some(p50),
            throughput_items_per_s: Some(batch as f64 * 1000.0 / p50),
            peak_memory_mb: Some(100.0 + batch as f64),
            at_s: 1.7e9 + batch as f64,
            at: format!("2026-01-0{batch} 00:00:00"),
        }
    }

    #[test]
    fn every_kind_draws_valid_svg_and_png() {
        let points = vec![
            point("bert", "candle/cpu", 1, 2.0, "pass"),
            point("bert", "candle/cpu", 4, 5.0, "pass"),
            point("bert", "onnxruntime-web/wasm", 1, 3.0, "pass"),
            point("bert", "onnxruntime-web/webgpu", 1, 0.0, "unavailable"),
            point("vit & <co>", "candle/cpu", 1, 9.0, "fail"),
        ];
        for kind in Kind::ALL {
            let chart = build(kind, &points);
            assert!(!chart.is_empty(), "{kind:?}");
            let svg = chart.svg();
            assert!(
                svg.starts_with("<svg") && svg.ends_with("</svg>\n"),
                "{kind:?}"
            );
            assert!(!svg.contains("<co>"), "labels are escaped");
            let png = png(&svg).unwrap();
            assert_eq!(&png[1..4], b"PNG");
        }
    }

    #[test]
    fn compatibility_keeps_the_best_status_and_blank_untried_cells() {
        let points = vec![
            point("a", "candle/cpu", 1, 1.0, "fail"),
            point("a", "candle/cpu", 2, 1.0, "pass"),
            point("b", "ort/cpu", 1, 1.0, "unavailable"),
        ];
        let Body::Grid { cells, .. } = build(Kind::Compatibility, &points).body else {
            panic!()
        };
        assert_eq!(cells[0], vec![Some("pass".into()), None]);
        assert_eq!(cells[1], vec![None, Some("unavailable".into())]);
    }

    #[test]
    fn charts_serialise_as_the_dashboard_reads_them() {
        let points = vec![point("a", "candle/cpu", 1, 1.0, "pass")];
        let json = serde_json::to_value(build(Kind::LatencyVsBatch, &points)).unwrap();
        assert_eq!(json["kind"], "latency-vs-batch");
        assert_eq!(json["body"]["type"], "lines");
        assert_eq!(json["body"]["series"][0]["points"][0][0], 1.0);
        let json = serde_json::to_value(build(Kind::ThroughputByPlatform, &points)).unwrap();
        assert_eq!(json["body"]["type"], "bars");
    }

    #[test]
    fn web_groups_need_a_web_and_a_native_result() {
        let only_native = vec![point("a", "candle/cpu", 1, 1.0, "pass")];
        assert!(build(Kind::WebVsNative, &only_native).is_empty());
    }

    #[test]
    fn figures_keep_three_significant_digits() {
        assert_eq!(significant(1234.6), "1235");
        assert_eq!(significant(12.345), "12.3");
        assert_eq!(significant(0.012345), "0.0123");
    }
}
