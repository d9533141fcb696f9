//! The `edgecap` CLI for people and for scripts, run as a process against a coordinator on
//! loopback: exit codes (usage 2, API refusal 3 with the field in one line and no JSON on
//! stderr, a failed capture waited for 4, an unreachable API 5), JSON when stdout is not a
//! terminal and with `--output json` (the API's envelope on a refusal), tables with
//! `--output table`, profiles from a config file with environment variables and flags over
//! them, completions, and a man page with examples for every command.

#![allow(clippy::unwrap_used, reason = "a test: a failed unwrap is a failed test")]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use edgecap_coordinator::{Coordinator, CoordinatorConfig, RateLimits};
use serde_json::Value;

const TOKEN: &str = "cli-test-token-0123456789abcdef";

/// A coordinator with no agent (so a sample capture fails at once) and account `acct`.
async fn coordinator(dir: &Path) -> Coordinator {
    let pki = dir.join("pki");
    edgecap_tls::pki::init_ca(&pki, "cli").unwrap();
    Coordinator::start(CoordinatorConfig {
        api_listen: "127.0.0.1:0".parse().unwrap(),
        grpc_listen: "127.0.0.1:0".parse().unwrap(),
        tls: edgecap_tls::pki::issue_coordinator(&pki, "cli", &["127.0.0.1".into()]).unwrap(),
        unscoped_accounts: edgecap_coordinator::UnscopedAccounts::Unrestricted,
        tokens: vec![("acct".into(), TOKEN.into())],
        rate_limits: RateLimits::off(),
        agent_wait: Duration::ZERO,
        tmp_dir: dir.join("tmp"),
        storage: edgecap_storage::StorageConfig::LocalDir { root: dir.join("objects") },
        ..Default::default()
    })
    .await
    .unwrap()
}

/// `edgecap ARGS` with only the given `EDGECAP_*` variables (none of the caller's) and a
/// home of its own, so no config file but the test's is read.
fn edgecap(home: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(edgecap_e2e::bin("edgecap"));
    cmd.args(args).env("HOME", home).env_remove("XDG_CONFIG_HOME");
    for (key, _) in std::env::vars() {
        if key.starts_with("EDGECAP_") {
            cmd.env_remove(key);
        }
    }
    cmd.envs(env.iter().copied());
    tokio::task::block_in_place(|| cmd.output().unwrap())
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The exit code, and stderr is one `edgecap: ` line holding `says` and no JSON.
fn fails(out: &Output, code: i32, says: &str) {
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "stdout: {}\nstderr: {stderr}", text(&out.stdout));
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line: {stderr}");
    assert!(lines[0].starts_with("edgecap: ") && lines[0].contains(says), "{says:?} in {stderr}");
    assert!(!stderr.contains('{') && !stderr.contains("panicked") && !stderr.contains("backtrace"), "{stderr}");
}

fn json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}\n{}", text(&out.stdout), text(&out.stderr)))
}

#[tokio::test(flavor = "multi_thread")]
async fn exit_codes_say_what_went_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let coordinator = coordinator(dir.path()).await;
    let api = format!("http://{}/client/v4", coordinator.api_addr);
    let env = [("EDGECAP_API", api.as_str()), ("EDGECAP_ACCOUNT", "acct"), ("EDGECAP_TOKEN", TOKEN)];
    let home = dir.path();

    // Usage errors (2): clap's, naming the flag, in one line; and a missing setting.
    fails(&edgecap(home, &["capture", "create", "--time-limit", "abc"], &env), 2, "--time-limit");
    fails(&edgecap(home, &["capture", "list", "--output", "xml"], &env), 2, "--output");
    fails(&edgecap(home, &["capture", "list"], &env[..1]), 2, "--account");
    fails(
        &edgecap(home, &["capture", "list"], &[("EDGECAP_OUTPUT", "yaml"), env[0], env[1], env[2]]),
        2,
        "EDGECAP_OUTPUT",
    );
    fails(&edgecap(home, &["capture", "list", "--api", "ftp://x"], &env), 2, "http://");

    // The API refuses (3): its message, naming the field, and no JSON anywhere...
    let refused = edgecap(home, &["capture", "create", "--time-limit", "301"], &env);
    fails(&refused, 3, "edgecap: time_limit: must be between 1 and 300, got 301");
    assert!(refused.stdout.is_empty());
    fails(&edgecap(home, &["capture", "get", "0123"], &env), 3, "pcap_id");
    fails(
        &edgecap(home, &["capture", "list"], &[env[0], env[1], ("EDGECAP_TOKEN", "wrong-token-0123456789")]),
        3,
        "401",
    );
    // ... but with --output json, the API's envelope on stdout too.
    let refused = edgecap(home, &["capture", "create", "--time-limit", "301", "--output", "json"], &env);
    fails(&refused, 3, "time_limit");
    let envelope = json(&refused);
    assert_eq!((envelope["success"].clone(), envelope["errors"][0]["code"].clone()), (false.into(), 1004.into()));

    // A capture waited for that fails (no agent: at once) is 4, printed all the same.
    let failed = edgecap(home, &["capture", "create", "--time-limit", "10", "--wait", "--output", "json"], &env);
    fails(&failed, 4, "failed");
    let capture = json(&failed);
    assert_eq!(capture["status"], "failed", "{capture:#}");
    let id = capture["id"].as_str().unwrap();
    let waited = edgecap(home, &["capture", "wait", id, "--output", "table"], &env);
    fails(&waited, 4, id);
    assert!(text(&waited.stdout).lines().any(|l| l.starts_with("Status") && l.ends_with("failed")));
    // Scripts from before exit codes (stdout not a terminal, no --output) still get 0 and the JSON.
    let legacy = edgecap(home, &["capture", "create", "--time-limit", "10", "--wait"], &env);
    assert!(legacy.status.success(), "{}", text(&legacy.stderr));
    assert_eq!(json(&legacy)["status"], "failed");

    // The API cannot be reached (5).
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let nowhere = format!("http://{closed}/client/v4");
    fails(&edgecap(home, &["capture", "--api", &nowhere, "list"], &env), 5, "Connection refused");
    // A file that cannot be read (5): the token's, named.
    let no_file = [env[0], env[1], ("EDGECAP_TOKEN_FILE", "/nonexistent/token")];
    fails(&edgecap(home, &["capture", "list"], &no_file), 5, "/nonexistent/token");
    coordinator.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn json_for_scripts_tables_for_people() {
    let dir = tempfile::tempdir().unwrap();
    let coordinator = coordinator(dir.path()).await;
    let api = format!("http://{}/client/v4", coordinator.api_addr);
    let env = [("EDGECAP_API", api.as_str()), ("EDGECAP_ACCOUNT", "acct"), ("EDGECAP_TOKEN", TOKEN)];
    let home = dir.path();
    let created = json(&edgecap(home, &["capture", "create", "--time-limit", "10", "--protocol", "1"], &env));
    let id = created["id"].as_str().unwrap();

    // Not a terminal: JSON, the API's result as it always was.
    let list = json(&edgecap(home, &["capture", "list"], &env));
    assert_eq!(list[0]["id"], id);
    assert_eq!(json(&edgecap(home, &["capture", "get", id], &env))["filter_v1"]["protocol"], 1);
    assert_eq!(json(&edgecap(home, &["agents"], &env)), Value::Array(vec![]));
    let scope = json(&edgecap(home, &["account", "scope"], &env));
    assert_eq!((scope["account_id"].clone(), scope["unrestricted"].clone()), ("acct".into(), true.into()));

    // --output table (or EDGECAP_OUTPUT=table): headers, not JSON.
    let header = |out: &Output| {
        text(&out.stdout).lines().next().unwrap_or_default().split_whitespace().collect::<Vec<_>>().join(" ")
    };
    let table = edgecap(home, &["capture", "list", "--output", "table"], &env);
    assert_eq!(header(&table), "ID TYPE STATUS SUBMITTED PACKETS COLO");
    assert!(text(&table.stdout).contains(id));
    let by_env = edgecap(home, &["capture", "list"], &[("EDGECAP_OUTPUT", "table"), env[0], env[1], env[2]]);
    assert_eq!(header(&by_env), "ID TYPE STATUS SUBMITTED PACKETS COLO");
    let one = text(&edgecap(home, &["capture", "get", id, "--output", "table"], &env).stdout);
    for field in ["ID", "Type", "Status", "Submitted", "Filter"] {
        assert!(one.lines().any(|l| l.starts_with(field)), "{field} in {one}");
    }
    assert!(one.contains("protocol=1"), "{one}");
    let ownerships = edgecap(home, &["ownership", "--output", "table", "list"], &env);
    assert_eq!(header(&ownerships), "ID STATUS DESTINATION FILENAME SUBMITTED VALIDATED");
    assert_eq!(text(&edgecap(home, &["agents", "--output", "table"], &env).stdout).trim(), "no agents connected");
    let scope = text(&edgecap(home, &["account", "scope", "--output", "table"], &env).stdout);
    assert!(scope.lines().any(|l| l.starts_with("Account") && l.ends_with("acct")), "{scope}");
    // --output json forces JSON too, at any level of the command line.
    assert_eq!(json(&edgecap(home, &["--output", "json", "capture", "list"], &env))[0]["id"], id);
    coordinator.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn profiles_come_from_the_config_file_under_env_and_flags() {
    let dir = tempfile::tempdir().unwrap();
    let coordinator = coordinator(dir.path()).await;
    let api = format!("http://{}/client/v4", coordinator.api_addr);
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let nowhere = format!("http://{closed}/client/v4");
    let home = dir.path();
    let config = home.join(".config/edgecap/config.toml");
    std::fs::create_dir_all(config.parent().unwrap()).unwrap();
    std::fs::write(home.join("token"), format!("{TOKEN}\n")).unwrap();
    std::fs::write(
        &config,
        format!(
            "[profiles.default]\napi = \"{api}\"\naccount = \"acct\"\ntoken_file = \"{}\"\n\n\
             [profiles.far]\napi = \"{nowhere}\"\naccount = \"acct\"\ntoken_file = \"../../token\"\n",
            home.join("token").display()
        ),
    )
    .unwrap();
    let ok = |out: Output| {
        assert!(out.status.success(), "{}", text(&out.stderr));
        json(&out)
    };

    // ~/.config/edgecap/config.toml, profile `default`: nothing else needed.
    assert!(ok(edgecap(home, &["capture", "list"], &[])).is_array());
    // Another profile (its token file relative to the config file's directory).
    fails(&edgecap(home, &["--profile", "far", "capture", "list"], &[]), 5, &closed.to_string());
    fails(&edgecap(home, &["capture", "list"], &[("EDGECAP_PROFILE", "far")]), 5, &closed.to_string());
    // Environment variables win over the profile, flags over environment variables.
    assert!(ok(edgecap(home, &["--profile", "far", "capture", "list"], &[("EDGECAP_API", &api)])).is_array());
    assert!(ok(edgecap(home, &["capture", "--api", &api, "list"], &[("EDGECAP_API", &nowhere)])).is_array());
    fails(&edgecap(home, &["capture", "list"], &[("EDGECAP_API", &nowhere)]), 5, &closed.to_string());
    fails(&edgecap(home, &["capture", "list"], &[("EDGECAP_TOKEN", "wrong-token-0123456789")]), 3, "401");
    // XDG_CONFIG_HOME and EDGECAP_CONFIG say where the file is.
    let xdg = home.join("xdg");
    std::fs::create_dir_all(xdg.join("edgecap")).unwrap();
    std::fs::write(xdg.join("edgecap/config.toml"), format!("[profiles.default]\napi = \"{nowhere}\"\n")).unwrap();
    let xdg_env = [("XDG_CONFIG_HOME", xdg.to_str().unwrap()), ("EDGECAP_ACCOUNT", "acct"), ("EDGECAP_TOKEN", TOKEN)];
    fails(&edgecap(home, &["capture", "list"], &xdg_env), 5, &closed.to_string());
    let elsewhere = home.join("elsewhere.toml");
    std::fs::write(&elsewhere, format!("[profiles.default]\napi = \"{nowhere}\"\n")).unwrap();
    let elsewhere_env = [("EDGECAP_CONFIG", elsewhere.to_str().unwrap())];
    fails(&edgecap(home, &["capture", "list"], &elsewhere_env), 2, "EDGECAP_ACCOUNT");
    // A named profile must exist; a token in the file is refused without being shown.
    fails(&edgecap(home, &["--profile", "nope", "agents"], &[]), 2, "--profile nope");
    std::fs::write(&elsewhere, "[profiles.default]\ntoken = \"sekrit-0123456789\"\n").unwrap();
    let token_in_file = edgecap(home, &["agents"], &elsewhere_env);
    fails(&token_in_file, 2, "profiles.default.token");
    assert!(!text(&token_in_file.stderr).contains("sekrit"));

    // `config set-profile` writes a profile that works; `config show` never shows a token.
    let made = home.join("made.toml");
    let made_env = [("EDGECAP_CONFIG", made.to_str().unwrap())];
    let token_file = home.join("token");
    let set = edgecap(
        home,
        &[
            "config",
            "set-profile",
            "lab",
            "--api",
            &api,
            "--account",
            "acct",
            "--token-file",
            token_file.to_str().unwrap(),
        ],
        &made_env,
    );
    assert!(set.status.success(), "{}", text(&set.stderr));
    assert!(!std::fs::read_to_string(&made).unwrap().contains(TOKEN));
    assert!(ok(edgecap(home, &["--profile", "lab", "agents"], &made_env)).is_array());
    let shown = edgecap(
        home,
        &["config", "show", "--profile", "lab", "--output", "json"],
        &[made_env[0], ("EDGECAP_TOKEN", TOKEN)],
    );
    let shown_text = text(&shown.stdout) + &text(&shown.stderr);
    assert!(!shown_text.contains(TOKEN), "{shown_text}");
    let shown = json(&shown);
    assert_eq!((shown["profile"].as_str(), shown["api_from"].as_str()), (Some("lab"), Some("profile lab")));
    assert_eq!(shown["token_from"], "env EDGECAP_TOKEN");
    coordinator.shutdown().await.unwrap();
}

/// The subcommands `edgecap PATH --help` lists.
fn subcommands(home: &Path, path: &[String]) -> Vec<String> {
    let args: Vec<&str> = path.iter().map(String::as_str).chain(["--help"]).collect();
    let help = text(&edgecap(home, &args, &[]).stdout);
    assert!(help.contains("Examples:\n  "), "`edgecap {}` has no example:\n{help}", path.join(" "));
    help.split("Commands:\n")
        .nth(1)
        .map(|rest| {
            rest.lines()
                .take_while(|l| l.starts_with("  "))
                .filter_map(|l| l.split_whitespace().next())
                .filter(|name| *name != "help")
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn every_command_has_an_example_a_man_page_and_completions() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path();
    let man = home.join("man");
    let out = edgecap(home, &["man", "--dir", man.to_str().unwrap()], &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let mut todo = vec![Vec::<String>::new()];
    let mut pages = 0;
    while let Some(path) = todo.pop() {
        let page: PathBuf = man
            .join(format!("{}.1", ["edgecap".to_string()].iter().chain(&path).cloned().collect::<Vec<_>>().join("-")));
        let roff = std::fs::read_to_string(&page).unwrap_or_else(|e| panic!("{}: {e}", page.display()));
        assert!(roff.contains(".SH \"EXAMPLES\"") && roff.contains("edgecap"), "{}", page.display());
        pages += 1;
        for sub in subcommands(home, &path) {
            let mut next = path.clone();
            next.push(sub);
            todo.push(next);
        }
    }
    assert!(pages > 30, "only {pages} commands found");
    assert_eq!(std::fs::read_dir(&man).unwrap().count(), pages, "one page per command, no more");
    let top = text(&edgecap(home, &["--help"], &[]).stdout);
    for code in ["0  success", "2  usage", "3  the API refused", "4  the capture", "5  any other"] {
        assert!(top.contains(code), "exit code {code:?} in --help");
    }
    for shell in ["bash", "zsh", "fish"] {
        let out = edgecap(home, &["completions", shell], &[]);
        assert!(out.status.success() && text(&out.stdout).contains("capture"), "{shell}");
    }
}
