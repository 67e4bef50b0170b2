//! The human-readable report of `load ws`.

use serde_json::Value;

use super::{FANOUT_TARGET_RATIO, IDLE_TARGET_BYTES};
use crate::output::{machine_line, problem_lines, verdict};
use crate::{fanout, idle};

/// Continuation lines' indent.
const INDENT: &str = "            ";

/// The report as lines.
pub fn human(r: &Value) -> String {
    let mut lines = vec![machine_line(&r["machine"])];
    let sides: &[&str] = if r["mode"] == "idle" {
        lines.push(format!(
            "idle: {} connections requested",
            r["connections_requested"]
        ));
        lines.extend(idle::lines("gateway ", INDENT, &r["gateway"]));
        lines.push(format!(
            "  target <= {IDLE_TARGET_BYTES:.0} B per connection (subscribed when measured): {}",
            verdict(&r["meets_target"])
        ));
        &["gateway"]
    } else {
        lines.push(format!(
            "fanout: {} subscribers x {} events, frame {} B (envelope {} B), ring {}, {} runs \
             per side, median reported",
            r["subscribers"],
            r["events"],
            r["frame_bytes"],
            r["envelope_bytes"],
            r["queue"],
            r["runs"]
        ));
        let cpus = r["machine"]["cpus"].as_f64().unwrap_or(0.0);
        for side in ["gateway", "baseline"] {
            let s = &r[side];
            if s.is_null() {
                continue;
            }
            let label = match s["loop"].as_str() {
                Some(kind) if kind != "Bare" => format!("{side} ({kind} loop)"),
                _ => format!("{side:<8}"),
            };
            lines.extend(fanout::side_lines(&label, INDENT, s, cpus));
            lines.push(format!(
                "{INDENT}slow-consumer closes: {}{}",
                s["slow_consumer_closes"],
                if side == "gateway" {
                    format!(
                        ", write timeouts: {}, events relayed: {}, messages out: {}",
                        s["write_timeouts"], s["events_relayed"], s["messages_out"]
                    )
                } else {
                    String::new()
                }
            ));
        }
        if let Some(ratio) = r["ratio"].as_f64() {
            lines.push(format!(
                "  ratio gateway/baseline: {:.1} % (target >= {:.0} %: {})",
                ratio * 100.0,
                FANOUT_TARGET_RATIO * 100.0,
                verdict(&r["meets_target"])
            ));
        }
        &["gateway", "baseline"]
    };
    lines.extend(problem_lines(r, sides));
    lines.join("\n")
}
