//! Result tables: printed side by side with ratios, and collected as JSON.

use serde_json::{Map, Value, json};

/// One measured quantity across the table's columns.
#[derive(Debug, Clone)]
pub struct Row {
    /// What is measured.
    pub metric: String,
    /// Its unit (empty for plain counts).
    pub unit: String,
    /// One value per column (`None`: not measured / failed).
    pub values: Vec<Option<f64>>,
    /// Decimal places shown.
    pub decimals: usize,
}

/// The results of one scenario.
#[derive(Debug, Clone)]
pub struct Table {
    /// Scenario key in the JSON (`idle`, `fanout`, ...).
    pub key: String,
    /// Heading.
    pub title: String,
    /// Column names (the first is the reference: ratios are `first / other`).
    pub columns: Vec<String>,
    /// Measured rows.
    pub rows: Vec<Row>,
    /// Remarks printed under the table.
    pub notes: Vec<String>,
    /// Text [`render`](Table::render) prints instead of its own, for a table whose columns are
    /// not implementations (no ratios apply).
    pub preformatted: Option<String>,
    /// Whether [`render`](Table::render) adds the `first/other` ratio columns.
    pub ratios: bool,
}

impl Table {
    /// An empty table.
    pub fn new(key: &str, title: &str, columns: &[&str]) -> Table {
        Table {
            key: key.to_owned(),
            title: title.to_owned(),
            columns: columns.iter().map(|c| (*c).to_owned()).collect(),
            rows: Vec::new(),
            notes: Vec::new(),
            preformatted: None,
            ratios: true,
        }
    }

    /// Adds a row.
    pub fn row(&mut self, metric: &str, unit: &str, decimals: usize, values: Vec<Option<f64>>) {
        self.rows.push(Row {
            metric: metric.to_owned(),
            unit: unit.to_owned(),
            values,
            decimals,
        });
    }

    /// Adds a note.
    pub fn note(&mut self, note: impl Into<String>) {
        self.notes.push(note.into());
    }

    /// The table as readable text: one column per implementation, then `first/other` ratios.
    pub fn render(&self) -> String {
        if let Some(text) = &self.preformatted {
            return text.clone();
        }
        let first = self.columns.first().cloned().unwrap_or_default();
        let ratio_cols: Vec<String> = self
            .columns
            .iter()
            .skip(1)
            .filter(|_| self.ratios)
            .map(|c| format!("{}/{}", short(&first), short(c)))
            .collect();
        let mut header = vec![String::from("metric")];
        header.extend(self.columns.iter().cloned());
        header.extend(ratio_cols.iter().cloned());
        let mut lines: Vec<Vec<String>> = vec![header];
        for r in &self.rows {
            let metric = if r.unit.is_empty() {
                r.metric.clone()
            } else {
                format!("{} ({})", r.metric, r.unit)
            };
            let mut line = vec![metric];
            for v in &r.values {
                line.push(match v {
                    Some(v) => fmt_num(*v, r.decimals),
                    None => "-".into(),
                });
            }
            let base = r.values.first().copied().flatten();
            for v in r.values.iter().skip(1).filter(|_| self.ratios) {
                line.push(match (base, v) {
                    (Some(b), Some(v)) if *v != 0.0 => format!("{:.2}x", b / v),
                    _ => "-".into(),
                });
            }
            lines.push(line);
        }
        let ncols = lines.iter().map(Vec::len).max().unwrap_or(0);
        let widths: Vec<usize> = (0..ncols)
            .map(|i| {
                lines
                    .iter()
                    .filter_map(|l| l.get(i))
                    .map(|s| s.chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let mut out = format!("\n== {} ==\n", self.title);
        for l in &lines {
            let mut s = String::new();
            for (i, cell) in l.iter().enumerate() {
                let w = widths.get(i).copied().unwrap_or(0);
                if i == 0 {
                    s.push_str(&format!("{cell:<w$}"));
                } else {
                    s.push_str(&format!("  {cell:>w$}"));
                }
            }
            out.push_str(s.trim_end());
            out.push('\n');
        }
        for n in &self.notes {
            out.push_str(&format!("  note: {n}\n"));
        }
        out
    }

    /// The table as JSON: `{"title", "columns", "rows": [{"metric", "unit", "values": {col: v}}],
    /// "notes"}`.
    pub fn to_json(&self) -> Value {
        let rows: Vec<Value> = self
            .rows
            .iter()
            .map(|r| {
                let mut values = Map::new();
                for (c, v) in self.columns.iter().zip(&r.values) {
                    values.insert(c.clone(), v.map_or(Value::Null, Value::from));
                }
                json!({"metric": r.metric, "unit": r.unit, "values": values})
            })
            .collect();
        json!({
            "key": self.key,
            "title": self.title,
            "columns": self.columns,
            "rows": rows,
            "notes": self.notes,
        })
    }
}

fn short(col: &str) -> &str {
    match col {
        "switchboard" => "sb",
        other => other,
    }
}

/// Formats with thousands separators and `decimals` places.
pub fn fmt_num(v: f64, decimals: usize) -> String {
    if !v.is_finite() {
        return format!("{v}");
    }
    let s = format!("{:.*}", decimals, v.abs());
    let (int, frac) = match s.split_once('.') {
        Some((i, f)) => (i.to_owned(), Some(f.to_owned())),
        None => (s.clone(), None),
    };
    let mut grouped = String::new();
    for (i, ch) in int.chars().enumerate() {
        if i > 0 && (int.len() - i) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(ch);
    }
    let sign = if v < 0.0 && s.chars().any(|c| c.is_ascii_digit() && c != '0') {
        "-"
    } else {
        ""
    };
    match frac {
        Some(f) => format!("{sign}{grouped}.{f}"),
        None => format!("{sign}{grouped}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_numbers_and_ratios() {
        assert_eq!(fmt_num(1234567.891, 1), "1,234,567.9");
        assert_eq!(fmt_num(12.0, 0), "12");
        let mut t = Table::new("x", "X", &["switchboard", "floor"]);
        t.row("rate", "msg/s", 0, vec![Some(200.0), Some(100.0)]);
        let text = t.render();
        assert!(text.contains("sb/floor"), "{text}");
        assert!(text.contains("2.00x"), "{text}");
    }
}
