//! Tables for people: captures, one capture with its PoPs, agents by PoP, bucket ownerships,
//! an account's scope. Each takes the API's `result` as it is (the JSON output prints it
//! unchanged).

use serde_json::Value;

use crate::output::{Table, bytes, cell, count, duration, fields, seconds_since, time};

mod measures;
pub use measures::{clock, dry_run};

fn n(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

fn s(v: &Value) -> String {
    cell(v)
}

/// `capture list`: ID, TYPE, STATUS, SUBMITTED, PACKETS, COLO.
pub fn captures(list: &Value) -> String {
    let mut t = Table::new(&["ID", "TYPE", "STATUS", "SUBMITTED", "PACKETS>", "COLO"]);
    for c in list.as_array().into_iter().flatten() {
        t.row(vec![
            s(&c["id"]),
            s(&c["type"]),
            s(&c["status"]),
            time(&c["submitted"]),
            count(n(&c["packets_captured"])),
            if c["colo_names"].as_array().is_some_and(|a| a.len() > 1) {
                s(&c["colo_names"])
            } else {
                s(&c["colo_name"])
            },
        ]);
    }
    if list.as_array().is_none_or(Vec::is_empty) {
        return t.render() + "\n(no captures)";
    }
    t.render()
}

/// `filter_v1` as `field=value` words (`any` when empty).
fn filter(v: &Value) -> String {
    let words: Vec<String> = v
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(_, v)| !v.is_null())
        .map(|(k, v)| format!("{k}={}", cell(v)))
        .collect();
    if words.is_empty() { "any".into() } else { words.join(" ") }
}

/// `capture get|wait|create`: the capture's fields, then one line per PoP.
pub fn capture(c: &Value) -> String {
    let full = c["type"] == "full";
    let opt = |v: &Value| if v.is_null() { String::new() } else { cell(v) };
    let limits = [
        c["packet_limit"].as_u64().map(|p| format!("{} packets", count(p))),
        c["byte_limit"].as_u64().map(|b| format!("{} bytes", count(b))),
    ]
    .into_iter()
    .flatten()
    .collect::<Vec<_>>()
    .join(", ");
    // `colo_names` (extension) when the capture names several colos; `colo_name` is the first.
    let several_colos = c["colo_names"].as_array().is_some_and(|a| a.len() > 1);
    let corrected =
        if c["clock_correction"] == true { "yes (each PoP's timestamps shifted by its clock offset)" } else { "" };
    let mut out = fields(&[
        ("ID", s(&c["id"])),
        ("Type", s(&c["type"])),
        ("Status", s(&c["status"])),
        ("Submitted", time(&c["submitted"])),
        ("Time limit", c["time_limit"].as_u64().map(|t| format!("{t} s")).unwrap_or_default()),
        ("Limits", limits),
        ("Window end", if full { String::new() } else { time(&c["offset_time"]) }),
        ("Colo", if several_colos { String::new() } else { opt(&c["colo_name"]) }),
        ("Colos", if several_colos { cell(&c["colo_names"]) } else { String::new() }),
        ("Destination", opt(&c["destination_conf"])),
        ("Output format", opt(&c["output_format"])),
        ("Filter", filter(&c["filter_v1"])),
        ("BPF filter", opt(&c["filter_bpf"])),
        ("Applied filter", opt(&c["effective_filter"])),
        ("Packets", count(n(&c["packets_captured"]))),
        ("Object key", opt(&c["object_key"])),
        ("Stop requested", if c["stop_requested"] == true { "yes".into() } else { String::new() }),
        ("Clock correction", corrected.into()),
        ("Error", opt(&c["error_message"])),
    ]);
    let pops = c["pops"].as_array().cloned().unwrap_or_default();
    if !pops.is_empty() {
        out.push_str("\n\n");
        out.push_str(&pop_table(&pops, full, &c["submitted"]));
    }
    out
}

/// POP, AGENT, STATUS, PACKETS, BYTES, DROPS, EXCLUDED, CLOCK OFFSET (when a PoP has one),
/// STARTED (after `submitted`, when a PoP says when it began), STOP REASON, ERROR.
pub fn pop_table(pops: &[Value], full: bool, submitted: &Value) -> String {
    let clocks = pops.iter().any(|p| p["clock_offset_us"].is_i64());
    let starts = pops.iter().any(|p| p["started_at"].is_string());
    let mut headers = vec!["POP", "AGENT", "STATUS", "PACKETS>", "BYTES>", "DROPS>", "EXCLUDED>"];
    if clocks {
        headers.push("CLOCK OFFSET>");
    }
    if starts {
        headers.push("STARTED>");
    }
    headers.extend(["STOP REASON", "ERROR"]);
    let mut t = Table::new(&headers);
    for p in pops {
        let drops = n(&p["kernel_dropped"]) + n(&p["agent_dropped"]);
        let mut row = vec![
            s(&p["pop"]),
            s(&p["agent_id"]),
            s(&p["status"]),
            count(n(&p["packets"])),
            if full { bytes(n(&p["bytes"])) } else { "-".into() },
            count(drops),
            count(n(&p["excluded"])),
        ];
        if clocks {
            row.push(clock(p));
        }
        if starts {
            row.push(measures::started(p, submitted));
        }
        row.extend([s(&p["stop_reason"]).replace('_', " "), s(&p["error"])]);
        t.row(row);
    }
    t.render()
}

/// How far back an agent's lookback reaches: from its oldest packet when the API says it,
/// else at most since the agent connected (its lookback started then).
fn depth(a: &Value) -> (Option<u64>, String) {
    let l = &a["lookback"];
    if l.is_null() {
        return (None, "on another replica".into());
    }
    let now_ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0);
    match l["oldest_ns"].as_u64().filter(|ns| *ns > 0) {
        Some(oldest) => {
            let secs = now_ns.saturating_sub(oldest) / 1_000_000_000;
            (Some(secs), duration(secs))
        }
        None if n(&l["packets_held"]) == 0 => (None, "empty".into()),
        None => (None, format!("at most {}", duration(seconds_since(&a["connected_at"])))),
    }
}

/// `agents`: grouped by PoP (each with its agents' shortest lookback depth), with each
/// agent's clock offset when the API gives one.
pub fn agents(list: &Value) -> String {
    let agents = list.as_array().cloned().unwrap_or_default();
    if agents.is_empty() {
        return "no agents connected".into();
    }
    let mut pops: Vec<String> = agents.iter().map(|a| s(&a["pop"])).collect();
    pops.dedup();
    pops.sort();
    pops.dedup();
    // The clock offset column when the API measures one (agents connected to this replica).
    let clocks = agents.iter().any(|a| a["clock_offset_us"].is_i64());
    let mut headers =
        vec!["AGENT", "INTERFACES", "LOOKBACK", "PACKETS HELD>", "BYTES HELD>", "SAMPLING>", "KERNEL DROPS>"];
    if clocks {
        headers.push("CLOCK OFFSET>");
    }
    headers.extend(["CONNECTED", "COORDINATOR"]);
    let mut t = Table::new(&headers).indent(2);
    for pop in pops {
        let group: Vec<&Value> = agents.iter().filter(|a| s(&a["pop"]) == pop).collect();
        let shortest = group.iter().filter_map(|a| depth(a).0).min();
        let plural = if group.len() == 1 { "" } else { "s" };
        let lookback = shortest.map(|d| format!(", lookback depth {}", duration(d))).unwrap_or_default();
        t.heading(format!("PoP {pop}: {} agent{plural}{lookback}", group.len()));
        for a in group {
            let l = &a["lookback"];
            let held = |k: &str| if l.is_null() { "-".to_string() } else { count(n(&l[k])) };
            let mut row = vec![
                s(&a["agent_id"]),
                s(&a["interfaces"]),
                depth(a).1,
                held("packets_held"),
                if l.is_null() { "-".into() } else { bytes(n(&l["bytes_held"])) },
                a["sample_rate"].as_u64().map(|r| format!("1 in {r}")).unwrap_or_else(|| "-".into()),
                held("kernel_dropped"),
            ];
            if clocks {
                row.push(clock(a));
            }
            row.extend([time(&a["connected_at"]), s(&a["coordinator"])]);
            t.row(row);
        }
    }
    t.render()
}

/// `ownership list`: ID, STATUS, DESTINATION, FILENAME, SUBMITTED, VALIDATED.
pub fn ownerships(list: &Value) -> String {
    let mut t = Table::new(&["ID", "STATUS", "DESTINATION", "FILENAME", "SUBMITTED", "VALIDATED"]);
    for o in list.as_array().into_iter().flatten() {
        let validated = if o["validated"].is_null() { String::new() } else { time(&o["validated"]) };
        t.row(vec![
            s(&o["id"]),
            s(&o["status"]),
            s(&o["destination_conf"]),
            s(&o["filename"]),
            time(&o["submitted"]),
            validated,
        ]);
    }
    if list.as_array().is_none_or(Vec::is_empty) {
        return t.render() + "\n(no bucket ownerships)";
    }
    t.render()
}

/// `ownership create|validate`: one ownership.
pub fn ownership(o: &Value) -> String {
    let mut out = fields(&[
        ("ID", s(&o["id"])),
        ("Status", s(&o["status"])),
        ("Destination", s(&o["destination_conf"])),
        ("Challenge file", s(&o["filename"])),
        ("Submitted", time(&o["submitted"])),
        ("Validated", if o["validated"].is_null() { String::new() } else { time(&o["validated"]) }),
    ]);
    if o["status"] == "pending" {
        out.push_str(
            "\n\nRead the challenge file from the bucket, then:\n  edgecap ownership validate --destination-conf URL --ownership-challenge TEXT",
        );
    }
    out
}

/// `account scope`, `admin accounts set|show`: one account's scope.
pub fn scope(v: &Value) -> String {
    let prefixes = if v["unrestricted"] == true { "all traffic (unrestricted)".into() } else { s(&v["prefixes"]) };
    fields(&[
        ("Account", s(&v["account_id"])),
        ("Prefixes", if prefixes.is_empty() { "none".into() } else { prefixes }),
        ("PoPs", s(&v["pops"])),
        ("Updated", if v["updated"].is_null() { String::new() } else { time(&v["updated"]) }),
        ("Source", s(&v["source"])),
        ("Note", s(&v["note"])),
    ])
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    #[test]
    fn a_full_capture_shows_its_pops() {
        let c = json!({"id": "ab", "type": "full", "status": "running", "submitted": "2025-01-02T03:04:05.000001Z",
            "time_limit": 60, "byte_limit": 1000000, "colo_name": "ord", "colo_names": ["ord", "ams"],
            "clock_correction": true, "filter_v1": {"protocol": 17}, "packets_captured": 0, "pops": [
                {"pop": "ord01", "agent_id": "ord01-a", "status": "done", "packets": 1200, "bytes": 2048,
                 "kernel_dropped": 1, "agent_dropped": 2, "excluded": 3, "stop_reason": "packet_limit",
                 "clock_offset_us": 12_040, "clock_uncertainty_us": 300, "started_at": "2025-01-02T03:04:05.064501Z"},
                {"pop": "ams02", "agent_id": "ams02-a", "status": "failed", "packets": 0, "bytes": 0,
                 "kernel_dropped": 0, "agent_dropped": 0, "excluded": 0, "error": "agent gone"}]});
        let text = super::capture(&c);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines.iter().any(|l| l.starts_with("Filter") && l.ends_with(" protocol=17")), "{text}");
        assert!(lines.iter().any(|l| l.starts_with("Limits") && l.ends_with(" 1,000,000 bytes")), "{text}");
        assert!(lines.iter().any(|l| l.starts_with("Colos ") && l.ends_with(" ord, ams")), "{text}");
        assert!(!lines.iter().any(|l| l.starts_with("Colo ")), "{text}");
        assert!(lines.iter().any(|l| l.starts_with("Clock correction ") && l.contains("yes")), "{text}");
        let header = lines.iter().position(|l| l.starts_with("POP")).unwrap();
        assert_eq!(
            lines[header].split("  ").filter(|c| !c.is_empty()).map(str::trim).collect::<Vec<_>>(),
            [
                "POP",
                "AGENT",
                "STATUS",
                "PACKETS",
                "BYTES",
                "DROPS",
                "EXCLUDED",
                "CLOCK OFFSET",
                "STARTED",
                "STOP REASON",
                "ERROR"
            ]
        );
        assert!(lines[header + 1].contains("1,200") && lines[header + 1].contains("2.0 KiB"), "{text}");
        assert!(lines[header + 1].contains("+12 ms ± 0.3 ms   +65 ms  packet limit"), "{text}");
        // A PoP that never ran (or an older agent) does not say when it started.
        let failed = lines[header + 2].strip_suffix("agent gone").unwrap().trim_end();
        assert!(failed.ends_with("  -        -"), "{text}");
        // No PoP measured a clock (an older record): no column for it.
        let old = json!({"type": "simple", "pops": [{"pop": "a", "agent_id": "a-1", "status": "done", "packets": 1}]});
        assert!(!super::capture(&old).contains("CLOCK"), "{}", super::capture(&old));
        assert!(!super::capture(&old).contains("STARTED"), "{}", super::capture(&old));
    }

    #[test]
    fn agents_are_grouped_by_pop_with_their_lookback() {
        let oldest = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
            - 125_000_000_000;
        let agents = json!([
            {"agent_id": "b-1", "pop": "b", "interfaces": ["eth0"], "connected_at": "2025-01-02T03:04:05Z", "coordinator": "c1"},
            {"agent_id": "a-1", "pop": "a", "interfaces": ["eth0", "eth1"], "connected_at": "2025-01-02T03:04:05Z",
             "coordinator": "c1", "sample_rate": 4,
             "lookback": {"packets_held": 10, "bytes_held": 1600, "kernel_dropped": 0, "oldest_ns": oldest}},
        ]);
        let text = super::agents(&agents);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].trim_start().starts_with("AGENT"), "{text}");
        assert_eq!(lines[1], "PoP a: 1 agent, lookback depth 2m 05s");
        assert!(lines[2].contains("a-1") && lines[2].contains("eth0, eth1") && lines[2].contains("1 in 4"), "{text}");
        assert_eq!(lines[3], "PoP b: 1 agent");
        assert!(lines[4].contains("on another replica"), "{text}");
        assert!(!text.contains("CLOCK OFFSET"), "no agent measured its clock: {text}");
        // An agent's clock, when the API gives it.
        let mut agents = agents;
        agents[1]["clock_offset_us"] = json!(-40);
        agents[1]["clock_uncertainty_us"] = json!(120);
        let text = super::agents(&agents);
        let lines: Vec<&str> = text.lines().collect();
        let header: Vec<&str> = lines[0].split("  ").map(str::trim).filter(|c| !c.is_empty()).collect();
        assert_eq!(header[6..9], ["KERNEL DROPS", "CLOCK OFFSET", "CONNECTED"], "{text}");
        // Right-aligned under its header.
        let end = lines[0].find("CLOCK OFFSET").unwrap() + "CLOCK OFFSET".len();
        assert!(lines[2].chars().take(end).collect::<String>().ends_with("-0.04 ms ± 0.12 ms"), "{text}");
        assert!(lines[4].chars().take(end).collect::<String>().ends_with(" -"), "{text}");
    }
}
