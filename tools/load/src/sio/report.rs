//! The human-readable report of `load sio`.

use serde_json::Value;

use super::{EMITS_PER_EVENT, FANOUT_TARGET_RATIO, IDLE_TARGET_BYTES};
use crate::output::{machine_line, num, problem_lines, verdict};
use crate::{fanout, idle};

/// The sides, in report order.
const SIDES: [&str; 2] = ["rust", "node"];
/// Continuation lines' indent.
const INDENT: &str = "        ";

/// The report as lines.
pub fn human(r: &Value) -> String {
    if r["mode"] == "presence" {
        return super::presence::human(r);
    }
    let mut lines = vec![format!(
        "{}; node {}",
        machine_line(&r["machine"]),
        r["node_version"].as_str().unwrap_or("?")
    )];
    if r["mode"] == "idle" {
        lines.push(format!(
            "idle: {} {} requested",
            r["connections_requested"],
            if r["namespace_joined"] == false {
                "Engine.IO sessions (no namespace joined)"
            } else {
                "/admin connections"
            }
        ));
        for name in SIDES {
            if !r[name].is_null() {
                lines.extend(idle::lines(&format!("{name:<4}"), INDENT, &r[name]));
            }
        }
        lines.push(format!(
            "  side by side: rust {} B/conn, node {} B/conn, node/rust {}x (rust target <= \
             {IDLE_TARGET_BYTES:.0} B: {})",
            num(&r["rust"]["bytes_per_connection_connected"], 0),
            num(&r["node"]["bytes_per_connection_connected"], 0),
            num(&r["node_over_rust"], 2),
            verdict(&r["meets_target"])
        ));
    } else {
        lines.push(format!(
            "fanout: {} subscribers x {} events x {EMITS_PER_EVENT} emits, envelope {} B, \
             gateway max_buffer {}, ping timeout {} s, {} runs per server, median reported",
            r["subscribers"],
            r["events"],
            r["envelope_bytes"],
            r["gateway_max_buffer"],
            r["ping_timeout_secs"],
            r["runs"]
        ));
        let cpus = r["machine"]["cpus"].as_f64().unwrap_or(0.0);
        for name in SIDES {
            let s = &r[name];
            if s.is_null() {
                continue;
            }
            if let Some(e) = s["error"].as_str() {
                lines.push(format!("  {name:<4}: error: {e}"));
                continue;
            }
            lines.extend(fanout::side_lines(&format!("{name:<4}"), INDENT, s, cpus));
            lines.push(format!(
                "{INDENT}received: {}, other events {}{}",
                s["events_received"],
                s["other_events_received"],
                if name == "rust" {
                    format!(
                        "; gateway emits dropped {}, events relayed {}",
                        s["emits_dropped"], s["events_relayed"]
                    )
                } else {
                    String::new()
                }
            ));
        }
        lines.push(format!(
            "  side by side: rust {} msg/s, node {} msg/s, rust/node {}x (target >= \
             {FANOUT_TARGET_RATIO:.0}x: {})",
            num(&r["rust"]["median_delivered_per_second"], 0),
            num(&r["node"]["median_delivered_per_second"], 0),
            num(&r["rust_over_node"], 2),
            verdict(&r["meets_target"])
        ));
    }
    lines.extend(problem_lines(r, &SIDES));
    lines.join("\n")
}
