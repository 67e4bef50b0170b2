//! Where a report goes, and the formatting every surface's report shares.
//!
//! One rule for every subcommand: the human-readable report on stdout; with `--json`, the human
//! report on stderr and one JSON object on stdout (progress lines always go to stderr).

use serde_json::Value;

/// The destination of the human-readable lines and the JSON report.
#[derive(Debug, Clone, Copy)]
pub struct Out {
    /// Whether stdout carries the JSON object.
    pub json: bool,
}

impl Out {
    /// One human-readable line (or several, joined by newlines).
    pub fn line(self, text: impl AsRef<str>) {
        if self.json {
            eprintln!("{}", text.as_ref());
        } else {
            println!("{}", text.as_ref());
        }
    }

    /// The JSON report, when asked for.
    pub fn finish(self, report: &Value) {
        if self.json {
            println!("{report}");
        }
    }
}

/// A number with `digits` decimals, `-` when absent.
pub fn num(v: &Value, digits: usize) -> String {
    v.as_f64()
        .map_or_else(|| "-".to_owned(), |x| format!("{x:.digits$}"))
}

/// A byte count as whole KiB, `-` when absent.
pub fn kib(v: &Value) -> String {
    v.as_u64()
        .map_or_else(|| "-".to_owned(), |b| format!("{} KiB", b / 1024))
}

/// `met`, `MISSED`, or `-` when there was nothing to compare.
pub fn verdict(met: &Value) -> &'static str {
    match met.as_bool() {
        Some(true) => "met",
        Some(false) => "MISSED",
        None => "-",
    }
}

/// `machine: 2 CPUs (model), 23.5 GiB, kernel 6.18` of [`crate::procfs::machine`].
pub fn machine_line(machine: &Value) -> String {
    format!(
        "machine: {} CPUs ({}), {:.1} GiB, kernel {}",
        machine["cpus"],
        machine["cpu_model"].as_str().unwrap_or(""),
        machine["mem_bytes"].as_f64().unwrap_or(0.0) / (1u64 << 30) as f64,
        machine["kernel"].as_str().unwrap_or("")
    )
}

/// Every `problems` line of `sides`, prefixed with the side's name.
pub fn problem_lines(report: &Value, sides: &[&str]) -> Vec<String> {
    sides
        .iter()
        .flat_map(|side| {
            report[side]["problems"]
                .as_array()
                .into_iter()
                .flatten()
                .map(move |p| format!("  {side} problem: {}", p.as_str().unwrap_or("")))
        })
        .collect()
}
