//! The `edgecap` CLI for people and for scripts, run as a process against a coordinator on
//! loopback: exit codes (usage 2, API refusal 3 with the field in one line and no JSON on
//! stderr, a failed capture waited for 4, an unreachable API 5), JSON when stdout is not a
//! terminal and with `--output json` (the API's envelope on a refusal), tables with
//! `--output table`, profiles from a config file with environment variables and flags over
//! them, completions, and a man page with examples for every command; and `capture create
//! --dry-run` against agents (real agent code replaying generated traffic) and a validated
//! bucket (s3s-fs): what the capture would do, told for people and for scripts, with nothing
//! started.

#![allow(clippy::unwrap_used, reason = "a test: a failed unwrap is a failed test")]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use edgecap_agent::{Agent, AgentConfig};
use edgecap_capture::source::SourceConfig;
use edgecap_capture::source::replay::ReplayConfig;
use edgecap_common::tasks::Tasks;
use edgecap_coordinator::{Coordinator, CoordinatorConfig, RateLimits};
use edgecap_e2e::S3Server;
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
    // A sample capture cannot be streamed live: one line naming the field, nothing written.
    let live = dir.path().join("live.pcapng");
    let streamed = edgecap(home, &["capture", "stream", id, "-o", live.to_str().unwrap()], &env);
    fails(&streamed, 3, "pcap_id: sample captures complete at once");
    assert!(!live.exists(), "no file for a refused stream");
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

const BUCKET: &str = "dryrun";

/// A coordinator that may deliver into `s3`'s bucket [`BUCKET`] (on loopback), account `acct`.
async fn coordinator_with_bucket(dir: &Path, s3: &S3Server) -> Coordinator {
    let pki = dir.join("pki");
    edgecap_tls::pki::init_ca(&pki, "cli").unwrap();
    edgecap_tls::pki::issue_coordinator(&pki, "cli", &["127.0.0.1".into()]).unwrap();
    let config = edgecap_e2e::bucket_config(dir, "cli", TOKEN, s3, BUCKET);
    Coordinator::start(CoordinatorConfig { agent_wait: Duration::ZERO, ..config }).await.unwrap()
}

/// An agent (the real agent code) of `pop` replaying 200 generated UDP frames a second,
/// connected to `coordinator`; it runs until `tasks` is shut down.
fn agent(dir: &Path, coordinator: &Coordinator, agent_id: &str, pop: &str, tasks: &Tasks) {
    let files = edgecap_tls::pki::issue_agent(&dir.join("pki"), agent_id, pop).unwrap();
    let endpoint = format!("https://127.0.0.1:{}", coordinator.grpc_addr.port());
    let mut config = AgentConfig::new(vec![endpoint], files, vec!["sim0".into()]);
    config.source = SourceConfig::Replay(ReplayConfig { rate_pps: 200, ..Default::default() });
    let agent = Agent::start(config).unwrap();
    tasks.spawn(agent.run(tasks.token()));
}

/// The connected agents, as `edgecap agents` lists them (JSON).
fn agent_ids(home: &Path, env: &[(&str, &str)]) -> Vec<String> {
    let mut ids: Vec<String> = json(&edgecap(home, &["agents"], env))
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["agent_id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    ids
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dry_run_says_what_would_happen_and_starts_nothing() {
    let Some(s3) = S3Server::launch("a_dry_run_says_what_would_happen_and_starts_nothing") else {
        return;
    };
    s3.create_bucket(BUCKET);
    let dir = tempfile::tempdir().unwrap();
    let coordinator = coordinator_with_bucket(dir.path(), &s3).await;
    let api = format!("http://{}/client/v4", coordinator.api_addr);
    let env = [("EDGECAP_API", api.as_str()), ("EDGECAP_ACCOUNT", "acct"), ("EDGECAP_TOKEN", TOKEN)];
    let home = dir.path();

    // Agents at ams01 and ord01, and one at ams02 that connects once and goes away (offline).
    let (agents, gone) = (Tasks::new(), Tasks::new());
    agent(home, &coordinator, "ams01-a", "ams01", &agents);
    agent(home, &coordinator, "ord01-a", "ord01", &agents);
    agent(home, &coordinator, "ams02-a", "ams02", &gone);
    edgecap_e2e::wait_for("three agents connected", Duration::from_secs(30), || {
        (agent_ids(home, &env).len() == 3).then_some(())
    });
    assert!(gone.shutdown(Duration::from_secs(10)).await);
    edgecap_e2e::wait_for("ams02-a offline", Duration::from_secs(30), || {
        (agent_ids(home, &env) == ["ams01-a", "ord01-a"]).then_some(())
    });
    // A few seconds of traffic in the lookbacks (the dry run reads their last ten seconds).
    tokio::time::sleep(Duration::from_secs(3)).await;

    // A validated bucket, through the CLI: the challenge file's text read from s3s-fs.
    let destination = format!("s3://{BUCKET}/pcaps?region=us-east-1&endpoint={}", s3.endpoint());
    let ownership = json(&edgecap(home, &["ownership", "create", "--destination-conf", &destination], &env));
    let challenge =
        std::fs::read_to_string(s3.object_path(BUCKET, &format!("pcaps/{}", ownership["filename"].as_str().unwrap())))
            .unwrap();
    let validated = json(&edgecap(
        home,
        &["ownership", "validate", "--destination-conf", &destination, "--ownership-challenge", challenge.trim()],
        &env,
    ));
    assert_eq!(validated["status"], "success", "{validated:#}");
    let before = json(&edgecap(home, &["capture", "list"], &env));
    assert_eq!(before, Value::Array(vec![]));

    // A full capture of colos ams and ord (--colo-names reaches the request), for people.
    let full = [
        "capture",
        "create",
        "--type",
        "full",
        "--colo-names",
        "ams,ord",
        "--destination-conf",
        &destination,
        "--time-limit",
        "300",
        "--packet-limit",
        "1000",
        "--protocol",
        "17",
        "--clock-correction",
        "--dry-run",
    ];
    let out = edgecap(home, &[&full[..], &["--output", "table"]].concat(), &env);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let table = text(&out.stdout);
    let lines: Vec<&str> = table.lines().collect();
    let cells = |l: &str| l.split("  ").filter(|c| !c.is_empty()).map(|c| c.trim().to_string()).collect::<Vec<_>>();
    assert_eq!(cells(lines[0]), ["POP", "AGENT", "MATCHING PPS", "MATCHING B/S", "ERROR"], "{table}");
    assert!(lines[1].starts_with("ams01") && lines[1].contains("ams01-a"), "{table}");
    assert!(lines[2].starts_with("ord01") && lines[2].contains("ord01-a"), "{table}");
    let field = |key: &str| {
        lines.iter().find(|l| l.starts_with(key)).map(|l| l[key.len()..].trim().to_string()).unwrap_or_default()
    };
    assert!(field("Offline PoPs").starts_with("ams02 (agent ams02-a, last connected 20"), "{table}");
    assert!(field("Total").ends_with("/s") && !field("Total").starts_with("0 packets"), "{table}");
    assert!(field("Estimate").starts_with("ends by packet_limit after ~"), "{table}");
    assert_eq!(field("Colos"), "ams, ord", "{table}");
    assert!(field("Applied filter").contains("17"), "{table}");
    assert!(table.trim_end().ends_with("Dry run: nothing was started."), "{table}");

    // The same for scripts: the API's answer.
    let out = edgecap(home, &[&full[..], &["--output", "json"]].concat(), &env);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let answer = json(&out);
    assert_eq!((answer["dry_run"].clone(), answer["type"].clone()), (true.into(), "full".into()), "{answer:#}");
    assert_eq!(answer["colo_names"], serde_json::json!(["ams", "ord"]), "{answer:#}");
    let pops: Vec<(&str, &str)> = answer["pops"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["pop"].as_str().unwrap(), p["agent_id"].as_str().unwrap()))
        .collect();
    assert_eq!(pops, [("ams01", "ams01-a"), ("ord01", "ord01-a")], "{answer:#}");
    for p in answer["pops"].as_array().unwrap() {
        assert!(p["matching_pps"].as_f64().unwrap() > 0.0 && p["error"].is_null(), "{answer:#}");
    }
    assert_eq!(answer["offline"][0]["agent_id"], "ams02-a", "{answer:#}");
    assert!(answer["estimated_seconds_to_packet_limit"].as_f64().unwrap() > 0.0, "{answer:#}");
    assert!(answer["id"].is_null(), "no capture: {answer:#}");

    // A sample capture's dry run asks every connected agent.
    let out = edgecap(
        home,
        &["capture", "create", "--time-limit", "10", "--protocol", "17", "--dry-run", "--output", "table"],
        &env,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let table = text(&out.stdout);
    assert!(table.lines().any(|l| l.starts_with("ams01") && l.contains("ams01-a")), "{table}");
    assert!(table.lines().any(|l| l.starts_with("ord01") && l.contains("ord01-a")), "{table}");
    assert!(table.lines().any(|l| l.starts_with("Estimate") && l.ends_with("packets in the window")), "{table}");
    assert!(table.trim_end().ends_with("Dry run: nothing was started."), "{table}");

    // Nothing was started: the list is as it was.
    assert_eq!(json(&edgecap(home, &["capture", "list"], &env)), before);

    // Bad input: one line naming the field, exit code 3 (the API refused), nothing on stdout.
    let with = |colos: &str| {
        let mut args = full.to_vec();
        args[5] = colos;
        edgecap(home, &args, &env)
    };
    let empty = with("");
    fails(&empty, 3, "edgecap: colo_names[0]: ");
    assert!(empty.stdout.is_empty());
    let unknown = with("ams,nowhere");
    fails(&unknown, 3, "edgecap: colo_names[1]: no PoP named \"nowhere\" or starting with it has ever connected");
    assert!(text(&unknown.stderr).contains("HTTP 422"), "{}", text(&unknown.stderr));
    // A dry run is never waited for (usage, 2).
    fails(&edgecap(home, &[&full[..], &["--wait"]].concat(), &env), 2, "--wait");
    assert_eq!(json(&edgecap(home, &["capture", "list"], &env)), before);

    agents.shutdown(Duration::from_secs(10)).await;
    coordinator.shutdown().await.unwrap();
}

/// Three classic pcap inputs of interleaved timestamps (sizes 60 to 1 500 bytes, 3 x 4 000
/// packets, ~9 MB in all: many of the merge's 256 KiB output buffers), and the packets in the
/// order a merge must write them: (timestamp ns, input, index).
fn merge_inputs(dir: &Path) -> (Vec<PathBuf>, Vec<(u64, usize, usize)>) {
    let mut paths = Vec::new();
    let mut expected = Vec::new();
    for input in 0..3usize {
        let path = dir.join(format!("in{input}.pcap"));
        let file = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
        let mut writer = edgecap_merge::write::PcapWriter::new(file, 1, 65535, false).unwrap();
        for i in 0..4000usize {
            // Ties across inputs every 7th packet: the earlier input goes first.
            let ts = 1_700_000_000_000_000_000 + (i as u64 * 3 + if i % 7 == 0 { 0 } else { input as u64 }) * 1000;
            let len = 60 + (i * 37 + input * 11) % 1441;
            let data: Vec<u8> = (0..len).map(|j| (i + j + input) as u8).collect();
            writer.packet(ts, len as u32, &data).unwrap();
            expected.push((ts, input, i));
        }
        writer.finish().unwrap();
        paths.push(path);
    }
    expected.sort();
    (paths, expected)
}

/// `edgecap merge`: the output (written by its writer thread) holds every packet, byte for
/// byte, in time order; a malformed input, or a disk that fills up, is one line naming what
/// failed, and leaves neither the output nor its temporary file behind.
#[test]
fn merge_writes_every_packet_in_order_and_fails_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path();
    let (inputs, expected) = merge_inputs(home);
    let out = home.join("all.pcap");
    let mut args = vec!["merge".to_owned(), "-o".into(), out.display().to_string()];
    args.extend(inputs.iter().map(|p| p.display().to_string()));
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let run = edgecap(home, &argv, &[]);
    assert!(run.status.success(), "{}", text(&run.stderr));
    assert!(text(&run.stderr).contains("12000 packets from 3 inputs"), "{}", text(&run.stderr));
    let bytes = std::fs::read(&out).unwrap();
    let mut reader = edgecap_merge::CaptureReader::open(&bytes[..]).unwrap();
    let mut record = edgecap_merge::Record::default();
    for &(ts, input, i) in &expected {
        assert!(reader.next_record(&mut record).unwrap(), "packet ({input}, {i}) is missing");
        let ts_us = ts / 1000 * 1000;
        let len = 60 + (i * 37 + input * 11) % 1441;
        let data: Vec<u8> = (0..len).map(|j| (i + j + input) as u8).collect();
        assert_eq!((record.ts_ns, record.bytes()), (ts_us, &data[..]), "packet ({input}, {i})");
    }
    assert!(!reader.next_record(&mut record).unwrap(), "nothing more");
    let leftovers = |d: &Path| {
        std::fs::read_dir(d)
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.ends_with(".tmp"))
            .count()
    };
    assert_eq!(leftovers(home), 0);

    // A malformed input: one line naming the file and the byte, nothing left behind.
    let junk = home.join("junk.pcap");
    std::fs::write(&junk, b"this is not a capture at all").unwrap();
    let bad_out = home.join("bad.pcap");
    let run = edgecap(
        home,
        &["merge", "-o", bad_out.to_str().unwrap(), inputs[0].to_str().unwrap(), junk.to_str().unwrap()],
        &[],
    );
    fails(&run, 5, "junk.pcap: at byte 0: not a pcap or pcapng file");
    assert!(!bad_out.exists());
    assert_eq!(leftovers(home), 0);

    // A tuning variable set to nonsense is refused, naming it, before anything is written.
    for (name, value) in
        [("EDGECAP_MERGE_WRITE_DEPTH", "0"), ("EDGECAP_MERGE_READ_BUFFER", "32k"), ("EDGECAP_MERGE_WRITE_BUFFER", "")]
    {
        let run =
            edgecap(home, &["merge", "-o", bad_out.to_str().unwrap(), inputs[0].to_str().unwrap()], &[(name, value)]);
        fails(&run, 2, &format!("{name}: expected a whole number from"));
        assert!(!bad_out.exists());
    }

    // A disk that fills up while the writer thread writes: a 1 MiB tmpfs (root only).
    if !edgecap_e2e::require_root("merge on a full disk (mounts a tmpfs)") {
        return;
    }
    let small = home.join("small");
    std::fs::create_dir(&small).unwrap();
    let mounted = Command::new("mount").args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"]).arg(&small).status().unwrap();
    assert!(mounted.success(), "mount a tmpfs");
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(small.clone());
    let full_out = small.join("all.pcap");
    let mut args = vec!["merge".to_owned(), "-o".into(), full_out.display().to_string()];
    args.extend(inputs.iter().map(|p| p.display().to_string()));
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let run = edgecap(home, &argv, &[]);
    fails(&run, 5, "No space left on device");
    assert!(!full_out.exists());
    assert_eq!(leftovers(&small), 0, "the temporary output is removed");
}
