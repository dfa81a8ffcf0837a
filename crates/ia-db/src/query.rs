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
}

pub fn run(conn: &Connection, sql: &str) -> Result<QueryResult> {
    let mut stmt = conn.prepare(sql)?;
    let mut rows = stmt.query([])?;
    let columns = rows
        .as_ref()
        .map(|s| s.column_names())
        .ok_or_else(|| DbError::Sql("statement returned no result set".into()))?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        let mut values = Vec::with_capacity(columns.len());
        for i in 0..columns.len() {
            values.push(row.get::<_, Value>(i)?);
        }
        out.push(values);
    }
    Ok(QueryResult { columns, rows: out })
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

pub fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
