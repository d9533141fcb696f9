//! Exit codes, and how an error is told: one line on stderr starting `edgecap: ` (and, with
//! `--output json`, the API's error envelope on stdout). docs/cli.md lists the codes.

use std::fmt;

use serde_json::Value;

/// The command did what it was asked.
pub const OK: i32 = 0;
/// The command line, an environment variable or the config file is wrong (clap's own code
/// for bad arguments).
pub const USAGE: i32 = 2;
/// The API refused the request (HTTP 4xx): the message says why, naming the field.
pub const REFUSED: i32 = 3;
/// The capture waited for (`--wait`, `capture wait`) ended `failed`.
pub const CAPTURE_FAILED: i32 = 4;
/// Anything else: the API could not be reached or failed (5xx), a file could not be read
/// or written, a wait timed out.
pub const FAILURE: i32 = 5;

/// What `edgecap --help` says about exit codes (also in docs/cli.md).
pub const EXIT_CODES: &str = "\
Exit codes:
  0  success
  2  usage error: a flag, an environment variable or the config file is wrong
  3  the API refused the request (HTTP 4xx); the message names the field
  4  the capture waited for (--wait, capture wait) ended failed
  5  any other failure: API unreachable or failing (5xx), file I/O, a wait timed out";

/// A mistake in what the user gave: a flag, an environment variable, the config file.
#[derive(Debug)]
pub struct Usage(pub String);

impl fmt::Display for Usage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Usage {}

/// A usage error, as an `anyhow::Error` (exit code 2).
pub fn usage(message: impl Into<String>) -> anyhow::Error {
    Usage(message.into()).into()
}

/// An error answer of the API: its status, first code, messages and envelope.
#[derive(Debug)]
pub struct Refusal {
    pub status: u16,
    pub code: Option<u64>,
    /// Every error's message, joined with `; ` (each names its field).
    pub message: String,
    /// The body as the API sent it, when it is JSON.
    pub envelope: Option<Value>,
}

impl Refusal {
    /// From an error answer's status and body.
    pub fn new(status: u16, body: &[u8]) -> Self {
        let envelope = serde_json::from_slice::<Value>(body).ok().filter(Value::is_object);
        let errors = envelope.as_ref().and_then(|v| v["errors"].as_array()).cloned().unwrap_or_default();
        let mut message =
            errors.iter().filter_map(|e| e["message"].as_str()).collect::<Vec<_>>().join("; ").replace('\n', " ");
        if message.is_empty() {
            // Not the API's answer (a proxy's page, say): its first line of text, bounded.
            let mut text = String::new();
            let mut in_tag = false;
            for c in String::from_utf8_lossy(body).chars() {
                match c {
                    '<' => in_tag = true,
                    '>' if in_tag => in_tag = false,
                    c if !in_tag => text.push(c),
                    _ => {}
                }
            }
            message = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("not an API answer").trim().to_string();
            if message.chars().count() > 200 {
                message = message.chars().take(200).collect::<String>() + "...";
            }
        }
        Self { status, code: errors.first().and_then(|e| e["code"].as_u64()), message, envelope }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.code {
            Some(code) => write!(f, "{} (HTTP {}, code {code})", self.message, self.status),
            None => write!(f, "{} (HTTP {})", self.message, self.status),
        }
    }
}

impl std::error::Error for Refusal {}

/// A capture that ended `failed`.
#[derive(Debug)]
pub struct CaptureFailed {
    pub id: String,
    pub message: String,
}

impl fmt::Display for CaptureFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "capture {} failed: {}", self.id, self.message)
    }
}

impl std::error::Error for CaptureFailed {}

/// The exit code for an error.
pub fn exit_code(error: &anyhow::Error) -> i32 {
    for cause in error.chain() {
        if cause.is::<Usage>() {
            return USAGE;
        }
        if let Some(r) = cause.downcast_ref::<Refusal>() {
            return if (400..500).contains(&r.status) { REFUSED } else { FAILURE };
        }
        if let Some(edgecap_client::ClientError::Api { status, .. }) = cause.downcast_ref() {
            return if (400..500).contains(status) { REFUSED } else { FAILURE };
        }
        if cause.is::<CaptureFailed>() {
            return CAPTURE_FAILED;
        }
    }
    FAILURE
}

/// Tells an error: one line on stderr; with `envelope`, the API's error envelope (if the
/// error is the API's) on stdout too.
pub fn report(error: &anyhow::Error, envelope: bool) {
    // A refusal is told by its message alone: it names the field, and context would only
    // push it to the right.
    let line = match error.chain().find_map(|c| c.downcast_ref::<Refusal>()) {
        Some(refusal) => refusal.to_string(),
        None => format!("{error:#}"),
    };
    eprintln!("edgecap: {}", one_line(&line));
    if envelope && let Some(v) = error.chain().find_map(|c| c.downcast_ref::<Refusal>()?.envelope.as_ref()) {
        println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
    }
}

/// `text` on one line: line breaks and runs of blanks become single spaces.
pub fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Tells a clap error in one line (`edgecap: ...`, naming the flag) and exits 2; help and
/// version (and help shown for a missing subcommand) are printed as clap prints them.
pub fn clap_exit(error: clap::Error) -> ! {
    use clap::error::ErrorKind;
    if matches!(
        error.kind(),
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        error.exit();
    }
    let rendered = error.render().to_string();
    let mut lines = Vec::new();
    let mut command = None;
    for line in rendered.lines() {
        let line = line.trim();
        if let Some(usage) = line.strip_prefix("Usage:") {
            // `edgecap capture create [OPTIONS]`: the command's words.
            let words: Vec<&str> = usage.split_whitespace().take_while(|w| !w.starts_with(['[', '<', '-'])).collect();
            command = Some(words.join(" "));
        } else if !line.is_empty() && !line.starts_with("For more information") {
            lines.push(line.strip_prefix("error:").unwrap_or(line).trim().to_string());
        }
    }
    let mut message = lines.join(" ").replace(" tip:", "; tip:");
    if let Some(command) = command.filter(|c| !c.is_empty()) {
        message.push_str(&format!(" (see '{command} --help')"));
    }
    eprintln!("edgecap: {}", one_line(&message));
    std::process::exit(USAGE);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_told_by_the_api_message() {
        let body = br#"{"success":false,"errors":[{"code":1004,"message":"time_limit: must be between 1 and 300, got 301"}],"messages":[],"result":null}"#;
        let r = Refusal::new(400, body);
        assert_eq!(r.to_string(), "time_limit: must be between 1 and 300, got 301 (HTTP 400, code 1004)");
        assert_eq!(exit_code(&r.into()), REFUSED);
        let r = Refusal::new(502, b"<html>\n<h1>Bad gateway</h1>\n</html>");
        assert_eq!(r.to_string(), "Bad gateway (HTTP 502)");
        assert_eq!(exit_code(&r.into()), FAILURE);
        assert_eq!(exit_code(&usage("--profile x: no such profile")), USAGE);
        assert_eq!(exit_code(&anyhow::anyhow!("disk full")), FAILURE);
        let failed = CaptureFailed { id: "ab".into(), message: "no packets".into() };
        assert_eq!(exit_code(&anyhow::Error::from(failed).context("wait")), CAPTURE_FAILED);
    }
}
