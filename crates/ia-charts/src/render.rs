//! Drawing: SVG text by hand (axes, lines, bars, grid, legend), and PNG through resvg.

use crate::{significant, Body, Chart, Group, Series};
use std::fmt::Write;

const WIDTH: f64 = 960.0;
const FONT: &str = "DejaVu Sans, Verdana, sans-serif";
/// Okabe-Ito, readable by colour-blind readers, then darker variants. Series `i` takes
/// colour `i mod 12`, here and in the dashboard.
pub const PALETTE: [&str; 12] = [
    "#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#B8A000", "#000000",
    "#004D80", "#A66F00", "#006B4F", "#8F3F00",
];

fn color(i: usize) -> &'static str {
    PALETTE[i % PALETTE.len()]
}

/// The fill of a compatibility cell by status (None: not tried), here and in the dashboard.
pub fn status_fill(status: Option<&str>) -> &'static str {
    match status {
        Some("pass") => "#cdebd6",
        Some("fail") => "#f6c9c4",
        Some("unavailable") => "#e4e4e4",
        Some(_) => "#fff3c4",
        None => "#ffffff",
    }
}

pub fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A series name `model · target · precision` that is too long loses the middle of its model
/// part, never the target or the precision.
fn legend_label(name: &str, max: usize) -> String {
    let n = name.chars().count();
    if n <= max {
        return name.to_string();
    }
    match name.split_once(" · ") {
        Some((model, rest)) => {
            let room = max.saturating_sub(rest.chars().count() + 3).max(8);
            format!("{} · {rest}", clip(model, room))
        }
        None => clip(name, max),
    }
}

/// A tick value without trailing zeros.
fn tick(v: f64) -> String {
    let s = significant(v);
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

/// Long labels are shortened in the middle, which keeps both ends readable.
fn clip(s: &str, max: usize) -> String {
    let n = s.chars().count();
    if n <= max {
        return s.to_string();
    }
    let head: String = s.chars().take(max / 2 - 1).collect();
    let tail: String = s.chars().skip(n - (max - max / 2)).collect();
    format!("{head}…{tail}")
}

fn text(out: &mut String, x: f64, y: f64, size: f64, anchor: &str, extra: &str, s: &str) {
    let _ = writeln!(
        out,
        r#"<text x="{x:.1}" y="{y:.1}" font-size="{size}" text-anchor="{anchor}" {extra}>{}</text>"#,
        escape(s)
    );
}

fn header(chart: &Chart, height: f64) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height:.0}" viewBox="0 0 {WIDTH} {height:.0}" font-family="{FONT}">"#
    );
    let _ = writeln!(out, r#"<rect width="100%" height="100%" fill="white"/>"#);
    text(
        &mut out,
        16.0,
        26.0,
        17.0,
        "start",
        r#"font-weight="bold""#,
        &chart.title,
    );
    if let Some(n) = &chart.note {
        text(&mut out, 16.0, 44.0, 11.0, "start", r##"fill="#555""##, n);
    }
    out
}

pub fn svg(chart: &Chart) -> String {
    let mut out = match &chart.body {
        Body::Lines {
            x_label,
            y_label,
            log_x,
            log_y,
            x_ticks,
            series,
        } => lines(chart, x_label, y_label, *log_x, *log_y, x_ticks, series),
        Body::Bars {
            value_label,
            groups,
            series,
        } => bars(chart, value_label, groups, series),
        Body::Grid {
            rows,
            columns,
            cells,
        } => grid(chart, rows, columns, cells),
    };
    out.push_str("</svg>\n");
    out
}

fn empty(chart: &Chart) -> String {
    let mut out = header(chart, 90.0);
    text(
        &mut out,
        16.0,
        72.0,
        13.0,
        "start",
        "",
        "no matching results",
    );
    out
}

/// Ticks at 1, 2, 5 x 10^k covering [lo, hi].
fn nice_ticks(lo: f64, hi: f64) -> Vec<f64> {
    if hi <= lo {
        return vec![lo];
    }
    let raw = (hi - lo) / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| s >= &raw)
        .unwrap_or(10.0 * mag);
    let mut t = (lo / step).floor() * step;
    let mut out = vec![];
    while t <= hi + step * 1e-9 {
        if t >= lo - step * 1e-9 {
            out.push(t);
        }
        t += step;
    }
    out
}

fn log_ticks(lo: f64, hi: f64) -> Vec<f64> {
    let mut out = vec![];
    let mut d = 10f64.powf(lo.log10().floor());
    while d <= hi * 1.0001 {
        for m in [1.0, 2.0, 5.0] {
            let t = d * m;
            if t >= lo * 0.9999 && t <= hi * 1.0001 {
                out.push(t);
            }
        }
        d *= 10.0;
    }
    if out.len() < 2 {
        out = vec![lo, hi];
    }
    out
}

#[allow(clippy::too_many_arguments)]
fn lines(
    chart: &Chart,
    x_label: &str,
    y_label: &str,
    log_x: bool,
    log_y: bool,
    x_ticks: &[(f64, String)],
    series: &[Series],
) -> String {
    if chart.is_empty() {
        return empty(chart);
    }
    let legend_rows = series.len() as f64;
    let (left, right, top) = (70.0, 330.0, 60.0);
    let plot_h = 340.0f64.max(legend_rows * 16.0);
    let height = top + plot_h + 60.0;
    let plot_w = WIDTH - left - right;
    let all = series.iter().flat_map(|s| s.points.iter());
    let (mut x0, mut x1, mut y0, mut y1) =
        (f64::INFINITY, f64::NEG_INFINITY, f64::INFINITY, 0.0f64);
    for (x, y) in all {
        x0 = x0.min(*x);
        x1 = x1.max(*x);
        y0 = y0.min(*y);
        y1 = y1.max(*y);
    }
    if !log_y {
        y0 = 0.0;
    }
    let (y_lo, y_hi) = if log_y {
        (y0 * 0.8, y1 * 1.25)
    } else {
        (0.0, y1 * 1.1)
    };
    let fx = |x: f64| -> f64 {
        let (a, b, v) = if log_x {
            (x0.log2(), x1.log2(), x.log2())
        } else {
            (x0, x1, x)
        };
        if b > a {
            left + (v - a) / (b - a) * plot_w
        } else {
            left + plot_w / 2.0
        }
    };
    let fy = |y: f64| -> f64 {
        let (a, b, v) = if log_y {
            (y_lo.log10(), y_hi.log10(), y.log10())
        } else {
            (y_lo, y_hi, y)
        };
        top + plot_h - (v - a) / (b - a).max(1e-12) * plot_h
    };
    let mut out = header(chart, height);
    // Grid lines and y ticks.
    let yt = if log_y {
        log_ticks(y_lo, y_hi)
    } else {
        nice_ticks(y_lo, y_hi)
    };
    for t in yt {
        let y = fy(t);
        let _ = writeln!(
            out,
            r##"<line x1="{left}" x2="{:.1}" y1="{y:.1}" y2="{y:.1}" stroke="#e5e5e5"/>"##,
            left + plot_w
        );
        text(&mut out, left - 6.0, y + 4.0, 11.0, "end", "", &tick(t));
    }
    // A label that would overlap the previous one is left out (its grid line stays).
    let mut last_label_end = f64::NEG_INFINITY;
    for (x, label) in x_ticks {
        let xp = fx(*x);
        let _ = writeln!(
            out,
            r##"<line x1="{xp:.1}" x2="{xp:.1}" y1="{top}" y2="{:.1}" stroke="#f0f0f0"/>"##,
            top + plot_h
        );
        let half_width = label.chars().count() as f64 * 3.4;
        if xp - half_width > last_label_end + 8.0 {
            text(&mut out, xp, top + plot_h + 16.0, 11.0, "middle", "", label);
            last_label_end = xp + half_width;
        }
    }
    let _ = writeln!(
        out,
        r##"<rect x="{left}" y="{top}" width="{plot_w:.1}" height="{plot_h:.1}" fill="none" stroke="#888"/>"##
    );
    text(
        &mut out,
        left + plot_w / 2.0,
        top + plot_h + 36.0,
        12.0,
        "middle",
        "",
        &format!("{x_label}{}", if log_x { " (log scale)" } else { "" }),
    );
    let ly = top + plot_h / 2.0;
    text(
        &mut out,
        18.0,
        ly,
        12.0,
        "middle",
        &format!(r#"transform="rotate(-90 18 {ly:.1})""#),
        &format!("{y_label}{}", if log_y { " (log scale)" } else { "" }),
    );
    for (i, s) in series.iter().enumerate() {
        let pts: Vec<String> = s
            .points
            .iter()
            .map(|(x, y)| format!("{:.1},{:.1}", fx(*x), fy(*y)))
            .collect();
        let _ = writeln!(
            out,
            r#"<polyline points="{}" fill="none" stroke="{}" stroke-width="2"/>"#,
            pts.join(" "),
            color(i)
        );
        for (x, y) in &s.points {
            let _ = writeln!(
                out,
                r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{}"><title>{}: {}</title></circle>"#,
                fx(*x),
                fy(*y),
                color(i),
                escape(&s.name),
                significant(*y)
            );
        }
        let lx = left + plot_w + 16.0;
        let ly = top + 10.0 + i as f64 * 16.0;
        let _ = writeln!(
            out,
            r#"<rect x="{lx:.1}" y="{:.1}" width="12" height="4" fill="{}"/>"#,
            ly - 4.0,
            color(i)
        );
        text(
            &mut out,
            lx + 18.0,
            ly + 1.0,
            11.0,
            "start",
            "",
            &legend_label(&s.name, 46),
        );
    }
    out
}

/// Grouped bars: the group's label on its own line, then one bar per series with its value
/// printed. Each group is scaled to its own largest bar: groups differ by orders of magnitude
/// (a tiny model and a large one), and the question a group answers is within it.
fn bars(chart: &Chart, value_label: &str, groups: &[Group], series: &[String]) -> String {
    if chart.is_empty() {
        return empty(chart);
    }
    let (left, top, bar_h, gap, label_h) =
        (28.0, 60.0 + 16.0 * series.len() as f64, 14.0, 10.0, 20.0);
    let plot_w = WIDTH - left - 180.0;
    let rows: f64 = groups.iter().map(|g| g.bars.len() as f64).sum();
    let height = top + rows * (bar_h + 3.0) + groups.len() as f64 * (gap + label_h) + 40.0;
    let mut out = header(chart, height);
    // Legend across the top.
    for (i, s) in series.iter().enumerate() {
        let y = 62.0 + i as f64 * 16.0;
        let _ = writeln!(
            out,
            r#"<rect x="16" y="{:.1}" width="12" height="10" fill="{}"/>"#,
            y - 9.0,
            color(i)
        );
        text(&mut out, 34.0, y, 11.0, "start", "", s);
    }
    let mut y = top + 8.0;
    for g in groups {
        text(
            &mut out,
            16.0,
            y + 13.0,
            12.0,
            "start",
            r#"font-weight="bold""#,
            &g.label,
        );
        y += label_h;
        let max = g.bars.iter().map(|b| b.1).fold(0.0f64, f64::max);
        for (si, v, label) in &g.bars {
            let w = if max > 0.0 { v / max * plot_w } else { 0.0 };
            let _ = writeln!(
                out,
                r#"<rect x="{left}" y="{y:.1}" width="{w:.1}" height="{bar_h}" fill="{}"><title>{}: {}</title></rect>"#,
                color(*si),
                escape(&series[*si]),
                escape(label)
            );
            text(
                &mut out,
                left + w + 4.0,
                y + bar_h - 3.0,
                11.0,
                "start",
                "",
                label,
            );
            y += bar_h + 3.0;
        }
        y += gap;
    }
    text(
        &mut out,
        left,
        y + 14.0,
        11.0,
        "start",
        r##"fill="#555""##,
        &format!("{value_label}; bars scaled within each group"),
    );
    out
}

fn grid(
    chart: &Chart,
    rows: &[String],
    columns: &[String],
    cells: &[Vec<Option<String>>],
) -> String {
    if rows.is_empty() {
        return empty(chart);
    }
    let (left, top, cell_h) = (250.0, 110.0, 24.0);
    let cell_w = ((WIDTH - left - 16.0) / columns.len().max(1) as f64).min(140.0);
    let height = top + rows.len() as f64 * cell_h + 30.0;
    let mut out = header(chart, height);
    for (c, name) in columns.iter().enumerate() {
        let x = left + c as f64 * cell_w + cell_w / 2.0;
        text(
            &mut out,
            x,
            top - 8.0,
            11.0,
            "start",
            &format!(r#"transform="rotate(-30 {x:.1} {:.1})""#, top - 8.0),
            &clip(name, 28),
        );
    }
    for (r, name) in rows.iter().enumerate() {
        let y = top + r as f64 * cell_h;
        text(
            &mut out,
            left - 8.0,
            y + 16.0,
            12.0,
            "end",
            "",
            &clip(name, 36),
        );
        for (c, cell) in cells[r].iter().enumerate() {
            let x = left + c as f64 * cell_w;
            let word = cell.as_deref().unwrap_or("");
            let fill = status_fill(cell.as_deref());
            let _ = writeln!(
                out,
                r##"<rect x="{x:.1}" y="{y:.1}" width="{cell_w:.1}" height="{cell_h}" fill="{fill}" stroke="#bbb"/>"##
            );
            text(
                &mut out,
                x + cell_w / 2.0,
                y + 16.0,
                11.0,
                "middle",
                "",
                word,
            );
        }
    }
    out
}

/// Error of the PNG rasteriser.
#[derive(Debug, thiserror::Error)]
#[error("cannot render the chart as PNG: {0}")]
pub struct PngError(String);

/// Rasterises an SVG (ours) at twice its size, with the embedded DejaVu Sans as the only font.
pub fn png(svg: &str) -> Result<Vec<u8>, PngError> {
    use resvg::{tiny_skia, usvg};
    let mut opt = usvg::Options {
        font_family: "DejaVu Sans".into(),
        ..Default::default()
    };
    opt.fontdb_mut()
        .load_font_data(dejavu::sans::regular().to_vec());
    opt.fontdb_mut()
        .load_font_data(dejavu::sans::bold().to_vec());
    let tree = usvg::Tree::from_str(svg, &opt).map_err(|e| PngError(e.to_string()))?;
    let scale = 2.0;
    let size = tree.size();
    let (w, h) = (
        (size.width() * scale).ceil() as u32,
        (size.height() * scale).ceil() as u32,
    );
    let mut pixmap =
        tiny_skia::Pixmap::new(w, h).ok_or_else(|| PngError(format!("bad size {w}x{h}")))?;
    resvg::render(
        &tree,
        tiny_skia::Transform::from_scale(scale, scale),
        &mut pixmap.as_mut(),
    );
    pixmap.encode_png().map_err(|e| PngError(e.to_string()))
}
