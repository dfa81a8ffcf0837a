//! The dashboard at `/dashboard`: pages over the results service's JSON routes, drawn in the
//! browser. The pages, script and style are compiled in; the charting library is Chart.js from
//! npm (`scripts/fetch_web_assets.sh`), read once at start and served from here, never from a
//! CDN. Charts are the `db plot` definitions (`/api/charts/{kind}`), so the CLI and the
//! dashboard draw the same series with the same colours.

use crate::error::ApiError;
use crate::AppState;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::header;
use axum::response::{Html, IntoResponse, Response};
use std::sync::Arc;

/// The pages, in the order of the navigation bar: path segment and title.
pub const PAGES: [(&str, &str); 7] = [
    ("overview", "Overview"),
    ("results", "Results explorer"),
    ("model", "Model across platforms"),
    ("compatibility", "Compatibility matrix"),
    ("trends", "Trends"),
    ("web", "Web vs native"),
    ("hardware", "Hardware"),
];

const DASHBOARD_JS: &str = include_str!("dashboard/dashboard.js");
const DASHBOARD_CSS: &str = include_str!("dashboard/dashboard.css");

/// What the dashboard serves besides its compiled-in files.
#[derive(Debug, Clone, Default)]
pub struct Assets {
    /// Chart.js's UMD build; without it the pages show tables and say why charts are missing.
    pub chart_library: Option<Bytes>,
}

impl Assets {
    /// Reads the chart library from `path` (None: charts are off).
    pub fn load(chart_library: Option<&std::path::Path>) -> std::io::Result<Self> {
        Ok(Self {
            chart_library: chart_library
                .map(std::fs::read)
                .transpose()?
                .map(Bytes::from),
        })
    }
}

fn assets(state: &AppState) -> Result<&Assets, ApiError> {
    state
        .results
        .as_ref()
        .map(|r| &r.dashboard)
        .ok_or_else(|| ApiError::NotFound("this server keeps no results (serve --db-path)".into()))
}

pub(crate) async fn home(State(state): State<Arc<AppState>>) -> Response {
    page(&state, "overview")
}

pub(crate) async fn named(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Response {
    page(&state, &name)
}

fn page(state: &AppState, name: &str) -> Response {
    let assets = match assets(state) {
        Ok(a) => a,
        Err(e) => return e.into_response(),
    };
    let Some((_, title)) = PAGES.iter().find(|(p, _)| *p == name) else {
        let names: Vec<&str> = PAGES.iter().map(|(p, _)| *p).collect();
        return ApiError::NotFound(format!(
            "no dashboard page '{name}' (pages: {})",
            names.join(", ")
        ))
        .into_response();
    };
    let nav: String = PAGES
        .iter()
        .map(|(p, t)| {
            let current = if *p == name {
                r#" aria-current="page""#
            } else {
                ""
            };
            format!(r#"<a href="/dashboard/{p}"{current}>{t}</a>"#)
        })
        .collect();
    let config = serde_json::json!({
        "page": name,
        "chartLibrary": assets.chart_library.is_some(),
        "palette": ia_charts::PALETTE,
        "statusFill": {
            "pass": ia_charts::status_fill(Some("pass")),
            "fail": ia_charts::status_fill(Some("fail")),
            "unavailable": ia_charts::status_fill(Some("unavailable")),
            "other": ia_charts::status_fill(Some("other")),
            "untried": ia_charts::status_fill(None),
        },
    });
    let library = if assets.chart_library.is_some() {
        r#"<script src="/dashboard/assets/chart.umd.js"></script>"#
    } else {
        ""
    };
    Html(
        include_str!("dashboard/page.html")
            .replace("{{title}}", title)
            .replace("{{nav}}", &nav)
            .replace("{{library}}", library)
            // Inside <script>, "</" could close the element.
            .replace("{{config}}", &config.to_string().replace("</", "<\\/")),
    )
    .into_response()
}

pub(crate) async fn asset(
    State(state): State<Arc<AppState>>,
    Path(file): Path<String>,
) -> Response {
    let assets = match assets(&state) {
        Ok(a) => a,
        Err(e) => return e.into_response(),
    };
    let js = "text/javascript; charset=utf-8";
    let (kind, body) = match file.as_str() {
        "dashboard.js" => (js, Bytes::from_static(DASHBOARD_JS.as_bytes())),
        "dashboard.css" => (
            "text/css; charset=utf-8",
            Bytes::from_static(DASHBOARD_CSS.as_bytes()),
        ),
        "chart.umd.js" => match &assets.chart_library {
            Some(bytes) => (js, bytes.clone()),
            None => {
                return ApiError::NotFound(
                    "the chart library is not installed (scripts/fetch_web_assets.sh)".into(),
                )
                .into_response()
            }
        },
        other => {
            return ApiError::NotFound(format!("no dashboard asset '{other}'")).into_response()
        }
    };
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        body,
    )
        .into_response()
}
