//! The statistics of every report: medians of runs, nearest-rank percentiles of latencies.

use serde_json::{Value, json};

/// The median item by `key`: the middle one of the sorted items, the upper one of the two
/// middles when their number is even. `None` when there are none.
pub fn median_by<T: Clone>(items: &[T], key: impl Fn(&T) -> f64) -> Option<T> {
    let mut sorted = items.to_vec();
    sorted.sort_by(|a, b| key(a).total_cmp(&key(b)));
    sorted.get(sorted.len() / 2).cloned()
}

/// Nearest-rank percentile of sorted values; NaN when there are none.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Count, p50, p90, p99 and max of `values` (sorted in place).
pub fn summary(values: &mut [f64]) -> Value {
    values.sort_by(f64::total_cmp);
    json!({
        "n": values.len(),
        "p50": percentile(values, 50.0),
        "p90": percentile(values, 90.0),
        "p99": percentile(values, 99.0),
        "max": values.last().copied().unwrap_or(f64::NAN),
    })
}

/// A [`summary`] of milliseconds as one line.
pub fn summary_line(s: &Value) -> String {
    let f = |k: &str| s[k].as_f64().unwrap_or(f64::NAN);
    format!(
        "p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        f("p50"),
        f("p90"),
        f("p99"),
        f("max")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_takes_the_upper_middle() {
        assert_eq!(median_by(&[3.0, 1.0, 2.0], |x| *x), Some(2.0));
        assert_eq!(median_by(&[4.0, 1.0, 3.0, 2.0], |x| *x), Some(3.0));
        assert_eq!(median_by::<f64>(&[], |x| *x), None);
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&v, 0.0), 1.0);
        assert!(percentile(&[], 50.0).is_nan());
        assert_eq!(summary(&mut [3.0, 1.0, 2.0])["max"], 3.0);
    }
}
