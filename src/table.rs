//! The live table of finished bins that `ami2 demo` and `ami2 watch --table` print: a row per
//! bin, a column per result; numbers as they are, arrays and histograms as sparklines.

use std::collections::BTreeMap;

use serde_json::Value;

/// Width of a result's column.
const CELL: usize = 18;

/// Rows of finished bins, with a header again whenever the results change (a new graph).
#[derive(Default)]
pub struct LiveTable {
    header_for: Option<Vec<String>>,
}

impl LiveTable {
    /// The lines to print for a bin starting `t` seconds into the stream: its row, after a header
    /// when its results are not those of the previous row.
    pub fn lines(&mut self, bin: u64, t: f64, events: u64, graph_version: u64, values: &BTreeMap<String, Value>) -> Vec<String> {
        let mut lines = Vec::new();
        let names: Vec<String> = values.keys().cloned().collect();
        if self.header_for.as_ref() != Some(&names) {
            let header: String = names.iter().map(|n| format!("{n:>CELL$}")).collect();
            lines.push(format!("\n{:>8} {:>9} {:>7} {:>4}  {header}", "bin", "t [s]", "events", "ver"));
            self.header_for = Some(names);
        }
        let cells: String = values.values().map(|v| format!("{:>CELL$}", summarize(v))).collect();
        lines.push(format!("{bin:>8} {t:>9.2} {events:>7} {graph_version:>4}  {cells}"));
        lines
    }
}

/// One short cell for a result value: a number, or the shape of an array or histogram.
pub fn summarize(value: &Value) -> String {
    let number = |v: &Value| v.as_f64().map(|x| format!("{x:.4}")).unwrap_or_else(|| "-".into());
    if let Some(mean) = value.get("mean") {
        return match mean {
            Value::Array(items) => sparkline(items, SPARKLINE_BARS),
            other => number(other),
        };
    }
    if let Some(counts) = value.get("counts").and_then(Value::as_array) {
        let total: f64 = counts.iter().filter_map(Value::as_f64).sum();
        return format!("{} n={total}", sparkline(counts, SPARKLINE_BARS - 6));
    }
    if let Some(count) = value.get("count") {
        return format!("n={}", number(count));
    }
    number(value)
}

/// Bars of an array's cell in the live table (its cells are 18 wide).
const SPARKLINE_BARS: usize = 16;

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
        assert_eq!(summarize(&waveform), "▁▅█");
        let histogram = serde_json::json!({"counts": [1, 4, 1], "low": 0.0, "high": 1.0});
        assert_eq!(summarize(&histogram), "▁█▁ n=6");
        assert_eq!(summarize(&serde_json::json!({"count": 2, "mean": 1.5})), "1.5000");
    }

    #[test]
    fn a_header_comes_first_and_again_when_the_results_change() {
        let mut table = LiveTable::default();
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
            format!("{:>8} {:>9} {:>7} {:>4}  {:>18}{:>18}", 7, "0.35", 50, 1, "2.0000", "2.0000")
        );
        assert_eq!(table.lines(8, 0.4, 50, 1, &values(&["a", "b"])).len(), 1);
        let changed = table.lines(9, 0.45, 50, 2, &values(&["a"]));
        assert_eq!(changed.len(), 2, "{changed:?}");
    }
}
