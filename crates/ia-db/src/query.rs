//! Running SQL and rendering any result as a table, CSV, JSON, Markdown or HTML.

use crate::{DbError, Result};
use duckdb::types::{TimeUnit, Value};
use duckdb::Connection;
use serde_json::json;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    Table,
    Csv,
    Json,
    Markdown,
    Html,
}

impl std::str::FromStr for OutputFormat {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        Ok(match s.trim().to_ascii_lowercase().as_str() {
            "table" => OutputFormat::Table,
            "csv" => OutputFormat::Csv,
            "json" => OutputFormat::Json,
            "md" | "markdown" => OutputFormat::Markdown,
            "html" => OutputFormat::Html,
            other => return Err(format!("unknown format '{other}'")),
        })
    }
}

/// A fully materialised result: column names and rows of values.
#[derive(Debug, Clone, Default)]
pub struct QueryResult {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Value>>,
    /// The statement had more rows than were kept (see [`Limits::max_rows`]).
    pub truncated: bool,
}

/// What one statement may cost: rows kept and wall time before it is interrupted.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_rows: usize,
    pub timeout: std::time::Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_rows: 1_000_000,
            timeout: std::time::Duration::from_secs(300),
        }
    }
}

pub fn run(conn: &Connection, sql: &str) -> Result<QueryResult> {
    run_limited(conn, sql, Limits::default())
}

/// Runs one statement, keeping at most `limits.max_rows` rows and interrupting it after
/// `limits.timeout`.
pub fn run_limited(conn: &Connection, sql: &str, limits: Limits) -> Result<QueryResult> {
    let handle = conn.interrupt_handle();
    let (done, wait) = std::sync::mpsc::channel::<()>();
    let timeout = limits.timeout;
    let watchdog = std::thread::spawn(move || {
        if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = wait.recv_timeout(timeout) {
            handle.interrupt();
            true
        } else {
            false
        }
    });
    // A query's rows are cut in SQL, so DuckDB never materialises the rest; other statements
    // (PRAGMA, DESCRIBE, SHOW ...) run as written.
    let limited = limited_select(sql, limits.max_rows);
    let result = collect(conn, limited.as_deref().unwrap_or(sql), limits.max_rows);
    let _ = done.send(());
    let timed_out = watchdog.join().unwrap_or(false);
    match result {
        Err(_) if timed_out => Err(DbError::Sql(format!(
            "the statement ran longer than {} s and was interrupted",
            timeout.as_secs()
        ))),
        other => other,
    }
}

/// `sql` wrapped to return at most `max_rows + 1` rows (one more tells that rows were cut), when
/// it is a single query (SELECT, WITH, FROM, VALUES, TABLE).
fn limited_select(sql: &str, max_rows: usize) -> Option<String> {
    let body = sql.trim().trim_end_matches(';').trim_end();
    let mut rest = body;
    // Leading comments.
    loop {
        rest = rest.trim_start();
        if let Some(r) = rest.strip_prefix("--") {
            rest = r.split_once('\n').map_or("", |(_, after)| after);
        } else if let Some(r) = rest.strip_prefix("/*") {
            rest = r.split_once("*/").map_or("", |(_, after)| after);
        } else {
            break;
        }
    }
    let first = rest
        .split(|c: char| !c.is_ascii_alphabetic())
        .next()?
        .to_ascii_uppercase();
    let is_query = matches!(
        first.as_str(),
        "SELECT" | "WITH" | "FROM" | "VALUES" | "TABLE"
    );
    (is_query && !body.contains(';')).then(|| {
        format!(
            "SELECT * FROM ({body}\n) AS ia_query LIMIT {}",
            max_rows.saturating_add(1)
        )
    })
}

fn collect(conn: &Connection, sql: &str, max_rows: usize) -> Result<QueryResult> {
    collect_with(conn, sql, &[], max_rows)
}

/// One statement with bound parameters (the reports' filters), every row kept.
pub fn run_with_params(conn: &Connection, sql: &str, params: &[Value]) -> Result<QueryResult> {
    collect_with(conn, sql, params, usize::MAX)
}

fn collect_with(
    conn: &Connection,
    sql: &str,
    params: &[Value],
    max_rows: usize,
) -> Result<QueryResult> {
    let mut stmt = conn.prepare(sql)?;
    let mut rows = stmt.query(duckdb::params_from_iter(params.iter()))?;
    let columns = rows
        .as_ref()
        .map(|s| s.column_names())
        .ok_or_else(|| DbError::Sql("statement returned no result set".into()))?;
    let mut out = Vec::new();
    let mut truncated = false;
    while let Some(row) = rows.next()? {
        if out.len() == max_rows {
            truncated = true;
            break;
        }
        let mut values = Vec::with_capacity(columns.len());
        for i in 0..columns.len() {
            values.push(row.get::<_, Value>(i)?);
        }
        out.push(values);
    }
    Ok(QueryResult {
        columns,
        rows: out,
        truncated,
    })
}

/// Human-readable text for a value (what tables, CSV and Markdown show).
pub fn value_text(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::Boolean(b) => b.to_string(),
        Value::TinyInt(x) => x.to_string(),
        Value::SmallInt(x) => x.to_string(),
        Value::Int(x) => x.to_string(),
        Value::BigInt(x) => x.to_string(),
        Value::HugeInt(x) => x.to_string(),
        Value::UHugeInt(x) => x.to_string(),
        Value::UTinyInt(x) => x.to_string(),
        Value::USmallInt(x) => x.to_string(),
        Value::UInt(x) => x.to_string(),
        Value::UBigInt(x) => x.to_string(),
        Value::Float(x) => format_float(*x as f64),
        Value::Double(x) => format_float(*x),
        Value::Decimal(d) => d.to_string(),
        Value::Timestamp(unit, t) => timestamp_text(*unit, *t),
        Value::Text(s) | Value::Enum(s) => s.clone(),
        Value::Date32(days) => chrono::DateTime::from_timestamp(*days as i64 * 86_400, 0)
            .map(|d| d.date_naive().to_string())
            .unwrap_or_else(|| days.to_string()),
        Value::List(items) => format!(
            "[{}]",
            items.iter().map(value_text).collect::<Vec<_>>().join(", ")
        ),
        other => format!("{other:?}"),
    }
}

fn format_float(x: f64) -> String {
    if x.is_finite() && x.fract() != 0.0 {
        let a = x.abs();
        if a >= 100.0 {
            format!("{x:.1}")
        } else if a >= 1.0 {
            format!("{x:.3}")
        } else {
            format!("{x:.4}")
        }
    } else {
        x.to_string()
    }
}

fn timestamp_text(unit: TimeUnit, t: i64) -> String {
    let micros = match unit {
        TimeUnit::Second => t * 1_000_000,
        TimeUnit::Millisecond => t * 1_000,
        TimeUnit::Microsecond => t,
        TimeUnit::Nanosecond => t / 1_000,
    };
    chrono::DateTime::from_timestamp_micros(micros)
        .map(|d| d.naive_utc().format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_else(|| t.to_string())
}

fn value_json(v: &Value) -> serde_json::Value {
    match v {
        Value::Null => serde_json::Value::Null,
        Value::Boolean(b) => json!(b),
        Value::TinyInt(x) => json!(x),
        Value::SmallInt(x) => json!(x),
        Value::Int(x) => json!(x),
        Value::BigInt(x) => json!(x),
        Value::UTinyInt(x) => json!(x),
        Value::USmallInt(x) => json!(x),
        Value::UInt(x) => json!(x),
        Value::UBigInt(x) => json!(x),
        Value::Float(x) => json!(x),
        Value::Double(x) => json!(x),
        Value::Text(s) => serde_json::from_str::<serde_json::Value>(s)
            .ok()
            .filter(|j| j.is_object() || j.is_array())
            .unwrap_or_else(|| json!(s)),
        Value::List(items) => serde_json::Value::Array(items.iter().map(value_json).collect()),
        other => json!(value_text(other)),
    }
}

impl QueryResult {
    pub fn render(&self, format: OutputFormat) -> String {
        match format {
            OutputFormat::Table => self.table(),
            OutputFormat::Csv => self.csv(),
            OutputFormat::Json => self.json(),
            OutputFormat::Markdown => self.markdown(),
            OutputFormat::Html => self.html_table(),
        }
    }

    fn texts(&self) -> Vec<Vec<String>> {
        self.rows
            .iter()
            .map(|r| r.iter().map(value_text).collect())
            .collect()
    }

    fn widths(&self, cells: &[Vec<String>]) -> Vec<usize> {
        self.columns
            .iter()
            .enumerate()
            .map(|(i, c)| {
                cells
                    .iter()
                    .map(|r| r[i].chars().count())
                    .chain(std::iter::once(c.chars().count()))
                    .max()
                    .unwrap_or(0)
            })
            .collect()
    }

    pub fn table(&self) -> String {
        let cells = self.texts();
        let widths = self.widths(&cells);
        let sep: String = widths
            .iter()
            .map(|w| "-".repeat(w + 2))
            .collect::<Vec<_>>()
            .join("+");
        let line = |vals: &[String]| {
            vals.iter()
                .zip(&widths)
                .map(|(v, w)| format!(" {v:<w$} "))
                .collect::<Vec<_>>()
                .join("|")
        };
        let mut out = format!("{}\n{}\n", line(&self.columns), sep);
        for r in &cells {
            out.push_str(&line(r));
            out.push('\n');
        }
        out.push_str(&format!("({} rows)\n", cells.len()));
        out
    }

    pub fn csv(&self) -> String {
        let esc = |s: &str| {
            if s.contains([',', '"', '\n']) {
                format!("\"{}\"", s.replace('"', "\"\""))
            } else {
                s.to_string()
            }
        };
        let mut out = self
            .columns
            .iter()
            .map(|c| esc(c))
            .collect::<Vec<_>>()
            .join(",");
        out.push('\n');
        for r in &self.rows {
            out.push_str(
                &r.iter()
                    .map(|v| esc(&csv_text(v)))
                    .collect::<Vec<_>>()
                    .join(","),
            );
            out.push('\n');
        }
        out
    }

    pub fn json_rows(&self) -> serde_json::Value {
        serde_json::Value::Array(
            self.rows
                .iter()
                .map(|r| {
                    serde_json::Value::Object(
                        self.columns
                            .iter()
                            .cloned()
                            .zip(r.iter().map(value_json))
                            .collect(),
                    )
                })
                .collect(),
        )
    }

    pub fn json(&self) -> String {
        serde_json::to_string_pretty(&self.json_rows()).expect("values serialise") + "\n"
    }

    pub fn markdown(&self) -> String {
        let esc = |s: &str| s.replace('|', "\\|").replace('\n', " ");
        let mut out = format!(
            "| {} |\n|{}|\n",
            self.columns
                .iter()
                .map(|c| esc(c))
                .collect::<Vec<_>>()
                .join(" | "),
            self.columns
                .iter()
                .map(|_| "---")
                .collect::<Vec<_>>()
                .join("|")
        );
        for r in self.texts() {
            out.push_str(&format!(
                "| {} |\n",
                r.iter().map(|c| esc(c)).collect::<Vec<_>>().join(" | ")
            ));
        }
        out
    }

    pub fn html_table(&self) -> String {
        let mut out = String::from("<table>\n<thead><tr>");
        for c in &self.columns {
            out.push_str(&format!("<th>{}</th>", html_escape(c)));
        }
        out.push_str("</tr></thead>\n<tbody>\n");
        for r in self.texts() {
            out.push_str("<tr>");
            for c in r {
                out.push_str(&format!("<td>{}</td>", html_escape(&c)));
            }
            out.push_str("</tr>\n");
        }
        out.push_str("</tbody>\n</table>\n");
        out
    }
}

/// CSV keeps full float precision; tables round for reading.
fn csv_text(v: &Value) -> String {
    match v {
        Value::Double(x) => x.to_string(),
        Value::Float(x) => x.to_string(),
        other => value_text(other),
    }
}

/// The charts' escaping, so report tables and the SVG inside them agree.
pub use ia_charts::xml_escape as html_escape;

#[cfg(test)]
mod limit_tests {
    use super::limited_select;

    #[test]
    fn queries_are_wrapped_and_other_statements_are_not() {
        assert_eq!(
            limited_select("  select 1;", 10).unwrap(),
            "SELECT * FROM (select 1\n) AS ia_query LIMIT 11"
        );
        assert!(limited_select("-- hi\nWITH t AS (SELECT 1) SELECT * FROM t", 5).is_some());
        assert!(limited_select("PRAGMA table_info('runs')", 5).is_none());
        assert!(limited_select("DESCRIBE runs", 5).is_none());
        assert!(limited_select("SELECT 1; SELECT 2", 5).is_none());
    }
}
