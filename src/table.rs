//! The live table of finished bins that `ami2 demo` and `ami2 watch --table` print: a row per
//! bin, a column per result; numbers as they are, arrays and histograms as sparklines; on a
//! terminal, the columns narrow (down to 10 characters) to fit its width.

use std::collections::BTreeMap;

use serde_json::Value;

/// Widest and narrowest result columns.
const WIDEST_CELL: usize = 18;
const NARROWEST_CELL: usize = 10;

/// Width of the columns before the results (bin, time, events, graph version), with a bin
/// column of [`BIN_COLUMN`].
const LEAD: usize = 38;

/// Narrowest bin column: the bins of a wall-clock stream (Unix times in 2026) at display rates
/// up to about 55 Hz have 11 digits. Faster rates number their bins with more, and widen it.
const BIN_COLUMN: usize = 11;

/// Bin starts from this many seconds on are Unix times (a stream stamped by the wall clock, as a
/// detector's is), shown as the time of day; earlier ones are seconds into the stream.
const UNIX_TIME_FROM_S: f64 = 1e8;

/// `t` (a bin's start, s) as its column shows it: seconds into the stream, or the UTC time of day
/// of a Unix time.
fn bin_time(t: f64) -> String {
    if t < UNIX_TIME_FROM_S {
        return format!("{t:.2}");
    }
    let of_day = t.rem_euclid(86_400.0);
    let (hours, minutes) = ((of_day / 3600.0) as u64, (of_day % 3600.0 / 60.0) as u64);
    format!("{hours:02}:{minutes:02}:{:05.2}", of_day % 60.0)
}

/// Rows of finished bins, with a header again whenever the results change (a new graph).
pub struct LiveTable {
    header_for: Option<Vec<String>>,
    /// The terminal's width, when printing to one: result columns narrow to fit it.
    columns: Option<usize>,
    /// Width of a result column for the current header.
    cell: usize,
    /// Width of the bin column for the current header.
    bin_column: usize,
}

impl LiveTable {
    /// A table whose rows fit `columns` columns where they can (result columns from 18 down to
    /// 10 wide); `None`: the widest columns.
    pub fn fitting(columns: Option<usize>) -> Self {
        LiveTable {
            header_for: None,
            columns,
            cell: WIDEST_CELL,
            bin_column: BIN_COLUMN,
        }
    }

    /// A table for standard output: as wide as its terminal, if it is one.
    pub fn for_stdout() -> Self {
        LiveTable::fitting(console::Term::stdout().size_checked().map(|(_, columns)| columns as usize))
    }

    /// The lines to print for a bin starting `t` seconds into the stream: its row, after a header
    /// when its results are not those of the previous row.
    pub fn lines(&mut self, bin: u64, t: f64, events: u64, graph_version: u64, values: &BTreeMap<String, Value>) -> Vec<String> {
        let mut lines = Vec::new();
        let names: Vec<String> = values.keys().cloned().collect();
        if self.header_for.as_ref() != Some(&names) {
            self.bin_column = bin.to_string().len().max(BIN_COLUMN);
            let lead = LEAD - BIN_COLUMN + self.bin_column;
            self.cell = self.columns.map_or(WIDEST_CELL, |columns| {
                (columns.saturating_sub(lead + 1) / names.len().max(1)).clamp(NARROWEST_CELL, WIDEST_CELL)
            });
            let (cell, bin_column) = (self.cell, self.bin_column);
            let header: String = names.iter().map(|n| format!("{:>cell$}", shortened(n, cell - 1))).collect();
            let time = if t < UNIX_TIME_FROM_S { "t [s]" } else { "UTC" };
            lines.push(format!(
                "\n{:>bin_column$} {time:>11} {:>7} {:>4}  {header}",
                "bin", "events", "ver"
            ));
            self.header_for = Some(names);
        }
        let (cell, bin_column) = (self.cell, self.bin_column);
        let cells: String = values.values().map(|v| format!("{:>cell$}", summarize(v, cell - 2))).collect();
        lines.push(format!(
            "{bin:>bin_column$} {:>11} {events:>7} {graph_version:>4}  {cells}",
            bin_time(t)
        ));
        lines
    }
}

/// `name`, cut to `width` characters with an ellipsis when longer.
fn shortened(name: &str, width: usize) -> String {
    if name.chars().count() <= width {
        return name.to_string();
    }
    name.chars().take(width.saturating_sub(1)).chain(['…']).collect()
}

/// One short cell for a result value, about `width` characters: a number, or the shape of an
/// array or histogram.
fn summarize(value: &Value, width: usize) -> String {
    let number = |v: &Value| v.as_f64().map(|x| format!("{x:.4}")).unwrap_or_else(|| "-".into());
    if let Some(mean) = value.get("mean") {
        return match mean {
            Value::Array(items) => sparkline(items, width),
            other => number(other),
        };
    }
    if let Some(counts) = value.get("counts").and_then(Value::as_array) {
        let total: f64 = counts.iter().filter_map(Value::as_f64).sum();
        let total_text = format!(" n={total}");
        return format!("{}{total_text}", sparkline(counts, width.saturating_sub(total_text.len()).max(1)));
    }
    if let Some(count) = value.get("count") {
        return format!("n={}", number(count));
    }
    number(value)
}

/// An array as at most `bars` bars: each the mean of its share of the values, scaled from the
/// smallest to the largest bar; blank where a share holds no number (an empty bin's `null`).
fn sparkline(values: &[Value], bars: usize) -> String {
    const LEVELS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let bars = bars.clamp(1, values.len().max(1));
    let means: Vec<Option<f64>> = (0..bars)
        .map(|bar| {
            let share = &values[bar * values.len() / bars..(bar + 1) * values.len() / bars];
            let numbers: Vec<f64> = share.iter().filter_map(Value::as_f64).filter(|x| x.is_finite()).collect();
            (!numbers.is_empty()).then(|| numbers.iter().sum::<f64>() / numbers.len() as f64)
        })
        .collect();
    let (low, high) = means
        .iter()
        .flatten()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), &x| (l.min(x), h.max(x)));
    means
        .iter()
        .map(|mean| match mean {
            None => ' ',
            Some(_) if high <= low => LEVELS[(LEVELS.len() - 1) / 2],
            Some(x) => LEVELS[(((x - low) / (high - low)) * (LEVELS.len() - 1) as f64).round() as usize],
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arrays_and_histograms_show_as_sparklines() {
        let values = |xs: &[f64]| xs.iter().map(|&x| serde_json::json!(x)).collect::<Vec<_>>();
        // A ramp over 8 values: one bar each, from lowest to highest.
        assert_eq!(sparkline(&values(&[0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]), 16), "▁▂▃▄▅▆▇█");
        // 32 values in 4 bars: each the mean of its 8 (a step up in the middle).
        let step: Vec<f64> = (0..32).map(|i| if i < 16 { 1.0 } else { 9.0 }).collect();
        assert_eq!(sparkline(&values(&step), 4), "▁▁██");
        // Flat: mid-height; an empty bin (null) stays blank; nothing at all is one blank bar.
        assert_eq!(sparkline(&values(&[3.0, 3.0]), 16), "▄▄");
        assert_eq!(sparkline(&[serde_json::json!(1.0), Value::Null, serde_json::json!(2.0)], 16), "▁ █");
        assert_eq!(sparkline(&[], 16), " ");
        // The cells: a waveform's mean, a histogram with its total, a scalar result.
        let waveform = serde_json::json!({"count": 3, "mean": [0.0, 0.5, 1.0]});
        assert_eq!(summarize(&waveform, 16), "▁▅█");
        let histogram = serde_json::json!({"counts": [1, 4, 1], "low": 0.0, "high": 1.0});
        assert_eq!(summarize(&histogram, 16), "▁█▁ n=6");
        assert_eq!(summarize(&serde_json::json!({"count": 2, "mean": 1.5}), 16), "1.5000");
    }

    #[test]
    fn a_header_comes_first_and_again_when_the_results_change() {
        let mut table = LiveTable::fitting(None);
        let values = |names: &[&str]| {
            names
                .iter()
                .map(|n| (n.to_string(), serde_json::json!({"count": 1, "mean": 2.0})))
                .collect()
        };
        let first = table.lines(7, 0.35, 50, 1, &values(&["a", "b"]));
        assert_eq!(first.len(), 2);
        assert!(
            first[0].contains("events") && first[0].ends_with(&format!("{:>18}{:>18}", "a", "b")),
            "{first:?}"
        );
        assert_eq!(
            first[1],
            format!("{:>11} {:>11} {:>7} {:>4}  {:>18}{:>18}", 7, "0.35", 50, 1, "2.0000", "2.0000")
        );
        assert_eq!(table.lines(8, 0.4, 50, 1, &values(&["a", "b"])).len(), 1);
        let changed = table.lines(9, 0.45, 50, 2, &values(&["a"]));
        assert_eq!(changed.len(), 2, "{changed:?}");
        // A stream stamped with Unix times (2026-11-27 04:59:12.35 UTC, in bins of 50 ms): the
        // time of day, in columns as wide as for any other stream.
        let mut wall = LiveTable::fitting(None);
        let t = 1_795_755_552.35;
        let lines = wall.lines(35_915_111_047, t, 50, 1, &values(&["a"]));
        assert!(lines[0].contains("UTC") && !lines[0].contains("t [s]"), "{lines:?}");
        assert_eq!(
            lines[1],
            format!(
                "{:>11} {:>11} {:>7} {:>4}  {:>18}",
                35_915_111_047u64, "04:59:12.35", 50, 1, "2.0000"
            )
        );
        assert_eq!(lines[0].chars().count(), lines[1].chars().count() + 1, "{lines:?}");
        // At 1 kHz the bins have 13 digits: the bin column widens to hold them, header and rows
        // alike, and the result columns narrow to keep the row within the terminal.
        let mut fast = LiveTable::fitting(Some(LEAD + 2 + 2 * WIDEST_CELL));
        let bin = 1_795_755_552_350u64;
        let lines = fast.lines(bin, t, 5, 1, &values(&["a", "b"]));
        assert_eq!(
            lines[1],
            format!("{bin} {:>11} {:>7} {:>4}  {:>17}{:>17}", "04:59:12.35", 5, 1, "2.0000", "2.0000")
        );
        assert_eq!(lines[0].chars().count(), lines[1].chars().count() + 1, "{lines:?}");
        assert_eq!(
            fast.lines(bin + 1, t + 0.001, 5, 1, &values(&["a", "b"]))[0].chars().count(),
            lines[1].chars().count()
        );
    }

    #[test]
    fn rows_fit_the_terminal_down_to_the_narrowest_columns() {
        let values = |n: usize| -> BTreeMap<String, Value> {
            (0..n)
                .map(|i| {
                    (
                        format!("a_long_result_name_{i}"),
                        serde_json::json!({"count": 3, "mean": (0..64).collect::<Vec<_>>()}),
                    )
                })
                .collect()
        };
        // 100 columns, 6 results: cells of (100 - 39) / 6 = 10, names cut with an ellipsis.
        let lines = LiveTable::fitting(Some(100)).lines(1, 0.05, 3, 1, &values(6));
        assert!(lines.iter().all(|l| l.trim_start_matches('\n').chars().count() <= 100), "{lines:?}");
        assert!(lines[0].contains("a_long_r…"), "{lines:?}");
        // A ramp in 8 bars (the cell less a margin of 2) in each cell.
        assert!(lines[1].ends_with(&"  ▁▂▃▄▅▆▇█".repeat(6)), "{lines:?}");
        // Too narrow for 6: the narrowest columns (10), wider than the terminal.
        let narrow = LiveTable::fitting(Some(60)).lines(1, 0.05, 3, 1, &values(6));
        assert_eq!(narrow[1].chars().count(), LEAD + 6 * 10, "{narrow:?}");
        // Not a terminal, or room to spare: the widest (18).
        for mut table in [LiveTable::fitting(None), LiveTable::fitting(Some(300))] {
            assert_eq!(table.lines(1, 0.05, 3, 1, &values(2))[1].chars().count(), LEAD + 2 * 18);
        }
    }
}
