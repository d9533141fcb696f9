//! The Prometheus text format (version 0.0.4) from OpenMetrics text, which is what the
//! `prometheus-client` crate writes. Prometheus scrapes either, but `promtool check metrics`
//! and many other consumers read only the older format, so that is what edgecap serves.
//! The difference that matters: an OpenMetrics counter family `x` has samples `x_total`,
//! and the older format wants its `# HELP`/`# TYPE` lines to say `x_total` too; `# UNIT`
//! and `# EOF` do not exist there.

/// The content type of what [`from_openmetrics`] returns.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Rewrites OpenMetrics text into the Prometheus text format.
pub fn from_openmetrics(text: &str) -> String {
    let counters: std::collections::HashSet<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .filter(|name| !name.ends_with("_total"))
        .collect();
    let mut out = String::with_capacity(text.len() + 64);
    for line in text.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters.contains(name).then(|| format!("{prefix}{name}_total {tail}"))
        });
        out.push_str(renamed.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn counters_are_named_with_their_total_suffix_and_openmetrics_markers_go() {
        let open = "# HELP a Things.\n# TYPE a counter\na_total{x=\"1\"} 3\n# HELP b Level.\n# TYPE b gauge\n# UNIT b bytes\nb 2\n# EOF\n";
        assert_eq!(
            super::from_openmetrics(open),
            "# HELP a_total Things.\n# TYPE a_total counter\na_total{x=\"1\"} 3\n# HELP b Level.\n# TYPE b gauge\nb 2\n"
        );
    }
}
