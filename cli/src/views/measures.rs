//! The CLI's tables for measurements: clock offsets (per PoP and per agent) and the answer of
//! a dry run (`capture create --dry-run`).

use serde_json::Value;

use super::s;
use crate::output::{Table, bytes, cell, count, fields, instant, time};

/// Microseconds as milliseconds for people: `12 ms`, `1.5 ms`, `0.3 ms`, `0.045 ms`.
fn millis(us: u64) -> String {
    if us >= 10_000 {
        return format!("{} ms", count((us + 500) / 1000));
    }
    let text = if us >= 1000 { format!("{:.1}", us as f64 / 1000.0) } else { format!("{:.3}", us as f64 / 1000.0) };
    format!("{} ms", text.trim_end_matches('0').trim_end_matches('.'))
}

/// A clock offset (`clock_offset_us`, coordinator minus PoP) with its uncertainty:
/// `+12 ms ± 0.3 ms`; `-` when there is none.
pub fn clock(v: &Value) -> String {
    let Some(offset) = v["clock_offset_us"].as_i64() else {
        return "-".into();
    };
    let sign = if offset < 0 { "-" } else { "+" };
    let uncertainty = v["clock_uncertainty_us"].as_u64().map(|u| format!(" ± {}", millis(u))).unwrap_or_default();
    format!("{sign}{}{uncertainty}", millis(offset.unsigned_abs()))
}

/// When a PoP's capture began running, after the capture was submitted (`started_at` minus
/// `submitted`): `+64 ms`; `-` when the PoP has not said. (On the PoP's clock: its offset is
/// in the clock column.)
pub fn started(pop: &Value, submitted: &Value) -> String {
    let (Some(started), Some(submitted)) = (instant(&pop["started_at"]), instant(submitted)) else {
        return "-".into();
    };
    let us = (started - submitted).whole_microseconds();
    let sign = if us < 0 { "-" } else { "+" };
    format!("{sign}{}", millis(u64::try_from(us.unsigned_abs()).unwrap_or(u64::MAX)))
}

/// A rate with one decimal and thousands separators: `1,234.5`, `0`.
fn decimal(x: f64) -> String {
    let tenths = (x.max(0.0) * 10.0).round() as u64;
    match tenths % 10 {
        0 => count(tenths / 10),
        d => format!("{}.{d}", count(tenths / 10)),
    }
}

/// `capture create --dry-run`: per PoP (agent) its matching packets and bytes per second,
/// then the offline PoPs, the totals, and what would end a full capture when (or how many
/// packets a sample would hold).
pub fn dry_run(d: &Value) -> String {
    let mut t = Table::new(&["POP", "AGENT", "MATCHING PPS>", "MATCHING B/S>", "ERROR"]);
    let pops = d["pops"].as_array().cloned().unwrap_or_default();
    for p in &pops {
        t.row(vec![
            s(&p["pop"]),
            s(&p["agent_id"]),
            decimal(p["matching_pps"].as_f64().unwrap_or(0.0)),
            format!("{}/s", bytes(p["matching_bps"].as_f64().unwrap_or(0.0) as u64)),
            s(&p["error"]),
        ]);
    }
    let mut out = t.render();
    if pops.is_empty() {
        out.push_str("\n(no connected agent would take part)");
    }
    let offline: Vec<String> = d["offline"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|o| {
            let since = if o["last_connected"].is_null() {
                String::new()
            } else {
                format!(", last connected {}", time(&o["last_connected"]))
            };
            format!("{} (agent {}{since})", s(&o["pop"]), s(&o["agent_id"]))
        })
        .collect();
    let estimate = if d["type"] == "full" {
        let seconds = d["estimated_seconds"].as_f64().map(decimal).unwrap_or_else(|| "?".into());
        format!("ends by {} after ~{seconds} s", s(&d["ends_by"]))
    } else {
        d["estimated_packets"].as_f64().map(|p| format!("~{} packets in the window", decimal(p))).unwrap_or_default()
    };
    out.push_str("\n\n");
    out.push_str(&fields(&[
        ("Offline PoPs", if offline.is_empty() { "none".into() } else { offline.join(", ") }),
        (
            "Total",
            format!(
                "{} packets/s, {}/s",
                decimal(d["matching_pps"].as_f64().unwrap_or(0.0)),
                bytes(d["matching_bps"].as_f64().unwrap_or(0.0) as u64)
            ),
        ),
        ("Estimate", estimate),
        ("Colos", cell(&d["colo_names"])),
        ("Applied filter", if d["effective_filter"].is_null() { String::new() } else { cell(&d["effective_filter"]) }),
    ]));
    out.push_str("\n\nDry run: nothing was started.");
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    #[test]
    fn clock_offsets_read_in_milliseconds() {
        let clock = |offset: i64, uncertainty: u64| {
            super::clock(&json!({"clock_offset_us": offset, "clock_uncertainty_us": uncertainty}))
        };
        assert_eq!(clock(12_040, 300), "+12 ms ± 0.3 ms");
        assert_eq!(clock(-1_460, 45), "-1.5 ms ± 0.045 ms");
        assert_eq!(clock(0, 12), "+0 ms ± 0.012 ms");
        assert_eq!(clock(-500_000, 9_960), "-500 ms ± 10 ms");
        assert_eq!(super::clock(&json!({"clock_offset_us": 2_000_000})), "+2,000 ms");
        assert_eq!(super::clock(&json!({})), "-");
    }

    #[test]
    fn a_dry_run_shows_rates_offline_pops_and_the_end() {
        let d = json!({"dry_run": true, "type": "full", "effective_filter": "udp", "colo_names": ["ams", "ord"],
            "pops": [
                {"pop": "ams01", "agent_id": "ams01-a", "matching_pps": 1234.5, "matching_bps": 1536.0, "error": null},
                {"pop": "ord01", "agent_id": "ord01-a", "matching_pps": 0.0, "matching_bps": 0.0,
                 "error": "agent did not answer"}],
            "offline": [{"pop": "ord02", "agent_id": "ord02-a", "last_connected": "2025-01-02T03:04:05Z"}],
            "matching_pps": 1234.5, "matching_bps": 1536.0, "estimated_seconds_to_packet_limit": 8.1,
            "estimated_seconds_to_byte_limit": null, "ends_by": "packet_limit", "estimated_seconds": 8.1});
        let text = super::dry_run(&d);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0].split("  ").filter(|c| !c.is_empty()).map(str::trim).collect::<Vec<_>>(),
            ["POP", "AGENT", "MATCHING PPS", "MATCHING B/S", "ERROR"]
        );
        assert!(
            lines[1].starts_with("ams01") && lines[1].contains("1,234.5") && lines[1].contains("1.5 KiB/s"),
            "{text}"
        );
        assert!(lines[2].starts_with("ord01") && lines[2].ends_with("agent did not answer"), "{text}");
        let has = |key: &str, value: &str| lines.iter().any(|l| l.starts_with(key) && l.ends_with(value));
        assert!(has("Offline PoPs", "ord02 (agent ord02-a, last connected 2025-01-02 03:04:05Z)"), "{text}");
        assert!(has("Total", "1,234.5 packets/s, 1.5 KiB/s"), "{text}");
        assert!(has("Estimate", "ends by packet_limit after ~8.1 s"), "{text}");
        assert!(has("Colos", "ams, ord") && has("Applied filter", "udp"), "{text}");
        assert!(text.ends_with("Dry run: nothing was started."), "{text}");
        // A sample, with no agent connected.
        let d = json!({"dry_run": true, "type": "simple", "pops": [], "offline": [], "matching_pps": 0.0,
            "matching_bps": 0.0, "estimated_packets": 0.0, "effective_filter": ""});
        let text = super::dry_run(&d);
        assert!(text.starts_with("POP") && text.contains("(no connected agent would take part)"), "{text}");
        assert!(text.lines().any(|l| l.starts_with("Estimate") && l.ends_with("~0 packets in the window")), "{text}");
        assert!(text.lines().any(|l| l.starts_with("Offline PoPs") && l.ends_with("none")), "{text}");
    }
}
