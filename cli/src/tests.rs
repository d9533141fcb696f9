//! The command tree as a whole: every command says how it is used.

/// Every visible command (the hidden, deprecated `bench-*` ones aside) has an "Examples:"
/// section in its help, with at least one line that runs `edgecap`.
#[test]
fn every_command_has_an_example() {
    fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>, seen: &mut usize) {
        *seen += 1;
        let after = cmd.get_after_help().map(|h| h.to_string()).unwrap_or_default();
        let examples = after.split("Examples:").nth(1).unwrap_or_default();
        if !examples.lines().any(|l| l.contains("edgecap")) {
            missing.push(path.to_string());
        }
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set() && s.get_name() != "help") {
            walk(sub, &format!("{path} {}", sub.get_name()), missing, seen);
        }
    }
    let mut cmd = crate::command();
    cmd.build();
    let (mut missing, mut seen) = (Vec::new(), 0);
    walk(&cmd, "edgecap", &mut missing, &mut seen);
    assert!(missing.is_empty(), "commands without an example in their help: {missing:?}");
    assert!(seen > 30, "the walk reached only {seen} commands");
}

/// clap's own checks of the definitions (conflicting flags, bad defaults), `--output` added.
#[test]
fn the_command_line_is_consistent() {
    crate::command().debug_assert();
}

/// `--output` reaches every printing command but `capture download`, whose `--output` is its file.
#[test]
fn output_is_a_format_everywhere_but_download() {
    let parse = |args: &[&str]| crate::format_flag(&crate::command().try_get_matches_from(args).unwrap());
    use crate::output::Format;
    assert_eq!(parse(&["edgecap", "capture", "list", "--output", "table"]), Some(Format::Table));
    assert_eq!(parse(&["edgecap", "--output", "json", "agents"]), Some(Format::Json));
    assert_eq!(parse(&["edgecap", "capture", "--output", "json", "get", "x"]), Some(Format::Json));
    assert_eq!(parse(&["edgecap", "admin", "tokens", "list", "--output", "json"]), Some(Format::Json));
    assert_eq!(parse(&["edgecap", "capture", "download", "x", "--output", "f.pcap"]), None);
    assert_eq!(parse(&["edgecap", "--output", "json", "capture", "download", "x", "-o", "f"]), Some(Format::Json));
    assert!(crate::command().try_get_matches_from(["edgecap", "capture", "list", "--output", "xml"]).is_err());
}
