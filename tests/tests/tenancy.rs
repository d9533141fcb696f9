//! Tenancy: an account captures only its own traffic, and only where it may. Real traffic in
//! namespaces (two PoPs, `ord01` and `ord02`, joined to a core namespace) carries two
//! customers' prefixes and traffic of neither, replayed with tcpreplay from a pcap written
//! here, so every count is known. Account A owns 198.51.100.0/24 and may capture at `ord*`;
//! account B owns 203.0.113.0/24 and 2001:db8:b::/48 and may capture at `ord01` only.
//!
//! A sample and a full capture by A hold exactly A's packets, all of them (per PoP, and in
//! the file, read with tshark); B's sample likewise; the packets left out are counted per
//! PoP; B cannot capture at `ord02`; an account without a scope captures nothing; the admin
//! API refuses an account token and bad prefixes, naming the field. A second test: a scope
//! set through one replica is in force on another (shared etcd) for the next capture.

#![allow(clippy::unwrap_used, reason = "a test: a failed unwrap is a failed test")]

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use edgecap_e2e::{
    NetNs, PopNs, Proc, S3Server, api_call, bin, core_pki, pop_namespaces, require_root, require_tool, sweep_stale,
    wait_for,
};
use serde_json::{Value, json};

const TOKEN_A: &str = "tenant-a-token-0123456789";
const TOKEN_B: &str = "tenant-b-token-0123456789";
const TOKEN_C: &str = "tenant-c-token-0123456789";
const ADMIN: &str = "tenancy-admin-token-0123456789";
const BUCKET: &str = "tenants";
const API: &str = "http://127.0.0.1:9440";

/// Per replay, per PoP: A's, B's IPv4, B's IPv6, and neither's packets.
const A_PACKETS: usize = 40;
const B4_PACKETS: usize = 30;
const B6_PACKETS: usize = 10;
const OTHER_PACKETS: usize = 50;

fn udp4(src: [u8; 4], dst: [u8; 4]) -> Vec<u8> {
    let mut f = vec![0u8; 14 + 20 + 8 + 18];
    f[0..6].copy_from_slice(&[0x02, 0, 0, 0, 0, 1]);
    f[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 2]);
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    f[14] = 0x45;
    f[16..18].copy_from_slice(&(46u16).to_be_bytes());
    f[22] = 64;
    f[23] = 17;
    f[26..30].copy_from_slice(&src);
    f[30..34].copy_from_slice(&dst);
    f[34..36].copy_from_slice(&4000u16.to_be_bytes());
    f[36..38].copy_from_slice(&5000u16.to_be_bytes());
    f[38..40].copy_from_slice(&26u16.to_be_bytes());
    f
}

fn udp6(src: [u16; 8], dst: [u16; 8]) -> Vec<u8> {
    let mut f = vec![0u8; 14 + 40 + 8 + 10];
    f[0..6].copy_from_slice(&[0x02, 0, 0, 0, 0, 1]);
    f[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 2]);
    f[12..14].copy_from_slice(&[0x86, 0xdd]);
    f[14] = 0x60;
    f[18..20].copy_from_slice(&18u16.to_be_bytes());
    f[20] = 17;
    f[21] = 64;
    for (i, w) in src.iter().chain(dst.iter()).enumerate() {
        f[22 + 2 * i..24 + 2 * i].copy_from_slice(&w.to_be_bytes());
    }
    f[54..56].copy_from_slice(&4000u16.to_be_bytes());
    f[56..58].copy_from_slice(&5000u16.to_be_bytes());
    f[58..60].copy_from_slice(&18u16.to_be_bytes());
    f
}

/// The traffic both PoPs see: A's, B's (v4 and v6) and neither's, interleaved.
fn write_traffic(path: &Path) {
    let mut frames = Vec::new();
    for i in 0..A_PACKETS {
        frames.push(udp4([198, 51, 100, 1 + i as u8], [192, 0, 2, 1]));
    }
    for i in 0..B4_PACKETS {
        frames.push(udp4([192, 0, 2, 2], [203, 0, 113, 1 + i as u8]));
    }
    for i in 0..B6_PACKETS {
        frames.push(udp6([0x2001, 0xdb8, 0xb, 0, 0, 0, 0, 1 + i as u16], [0x2001, 0xdb8, 0xff, 0, 0, 0, 0, 1]));
    }
    for i in 0..OTHER_PACKETS {
        frames.push(udp4([192, 0, 2, 10 + i as u8], [192, 0, 2, 200]));
    }
    // Interleave deterministically so every kind is spread over the replay.
    let mut order: Vec<usize> = (0..frames.len()).collect();
    order.sort_by_key(|i| (i * 7919) % frames.len());
    let mut w = edgecap_merge::write::PcapWriter::new(std::fs::File::create(path).unwrap(), 1, 65535, false).unwrap();
    for (n, i) in order.into_iter().enumerate() {
        w.packet(1_000_000_000 + n as u64 * 1_000_000, frames[i].len() as u32, &frames[i]).unwrap();
    }
    w.finish().unwrap();
}

/// (source address) of every packet in a capture file, IPv4 or IPv6.
fn sources(path: &Path) -> Vec<String> {
    let out = Command::new("tshark")
        .args(["-n", "-r"])
        .arg(path)
        .args(["-T", "fields", "-e", "ip.src", "-e", "ipv6.src"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.split('\t').find(|s| !s.is_empty()).unwrap_or("").to_string())
        .collect()
}

struct Fixture {
    _agents: Vec<Proc>,
    _coordinator: Proc,
    s3: S3Server,
    pops: Vec<PopNs>,
    core: NetNs,
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new(test: &str) -> Option<Self> {
        if !require_root(test) || !require_tool(test, "tshark") || !require_tool(test, "tcpreplay") {
            return None;
        }
        sweep_stale();
        let dir = tempfile::tempdir().unwrap();
        let pki = core_pki(dir.path(), 2);
        let core = NetNs::new("core");
        let s3 = S3Server::launch_in(test, &core)?;
        s3.create_bucket(BUCKET);
        let pops = pop_namespaces(&core, &pki, 2);
        let creds = dir.path().join("s3.json");
        s3.write_credentials(&creds, BUCKET);
        let tokens = dir.path().join("tokens");
        std::fs::write(&tokens, format!("a:{TOKEN_A}\nb:{TOKEN_B}\nc:{TOKEN_C}\n")).unwrap();
        let admin = dir.path().join("admin-tokens");
        std::fs::write(&admin, format!("{ADMIN}\n")).unwrap();
        let path = |p: &Path| p.to_str().unwrap().to_string();
        let coordinator = core.spawn(
            bin("edgecap-coordinator"),
            &[
                "--data-dir",
                &path(&dir.path().join("coord")),
                "--pki-dir",
                &path(&pki),
                "--api-listen",
                "127.0.0.1:9440",
                "--grpc-listen",
                "0.0.0.0:7443",
                "--tokens-file",
                &path(&tokens),
                "--admin-tokens-file",
                &path(&admin),
                "--no-rate-limits",
                "--allow-private-endpoints",
                "--s3-credentials",
                &path(&creds),
            ],
            &dir.path().join("coordinator.log"),
        );
        let agents = pops
            .iter()
            .enumerate()
            .map(|(i, pop)| pop.spawn_agent(&format!("https://10.213.{}.1:7443", i + 1), dir.path(), &[]))
            .collect();
        let fixture = Fixture { _agents: agents, _coordinator: coordinator, s3, pops, core, dir };
        wait_for("both agents", Duration::from_secs(60), || {
            let out = fixture.curl("GET", "/edgecap/v1/agents", TOKEN_A, None);
            (out["result"].as_array().map_or(0, |a| a.len()) == 2).then_some(())
        });
        Some(fixture)
    }

    /// One API call from inside the core namespace: the JSON envelope, with `status` added.
    fn curl(&self, method: &str, path: &str, token: &str, body: Option<Value>) -> Value {
        let mut cmd = self.core.cmd("curl");
        cmd.args(["-s", "-X", method, "-w", "\n%{http_code}", "-H", &format!("Authorization: Bearer {token}")]);
        if let Some(b) = body {
            cmd.args(["-H", "Content-Type: application/json", "-d", &b.to_string()]);
        }
        let out = cmd.arg(format!("{API}{path}")).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let (body, status) = text.rsplit_once('\n').unwrap_or(("", "0"));
        let mut v: Value = serde_json::from_str(body).unwrap_or(Value::Null);
        if !v.is_object() {
            v = json!({});
        }
        v["status"] = json!(status.parse::<u16>().unwrap_or(0));
        v
    }

    fn replay(&self, file: &Path) {
        for pop in &self.pops {
            let out = self
                .core
                .cmd("tcpreplay")
                .args(["-q", "-i", &pop.core_veth, "--pps", "400"])
                .arg(file)
                .output()
                .unwrap();
            assert!(out.status.success(), "tcpreplay: {}", String::from_utf8_lossy(&out.stderr));
        }
    }

    fn logs(&self) -> String {
        let mut out = String::new();
        for entry in std::fs::read_dir(self.dir.path()).unwrap().flatten() {
            if entry.file_name().to_string_lossy().ends_with(".log") {
                out.push_str(&format!(
                    "\n--- {:?}\n{}",
                    entry.file_name(),
                    std::fs::read_to_string(entry.path()).unwrap()
                ));
            }
        }
        out
    }

    fn wait_final(&self, account: &str, token: &str, id: &str) -> Value {
        wait_for("a final status", Duration::from_secs(120), || {
            let v = self.curl("GET", &format!("/client/v4/accounts/{account}/pcaps/{id}"), token, None);
            matches!(v["result"]["status"].as_str(), Some("success" | "failed")).then(|| v["result"].clone())
        })
    }

    fn download(&self, account: &str, token: &str, id: &str, out: &Path) {
        let status = self
            .core
            .cmd("curl")
            .args(["-s", "-f", "-o", out.to_str().unwrap(), "-H", &format!("Authorization: Bearer {token}")])
            .arg(format!("{API}/client/v4/accounts/{account}/pcaps/{id}/download"))
            .status()
            .unwrap();
        assert!(status.success());
    }
}

fn sample(fixture: &Fixture, account: &str, token: &str) -> Value {
    let body = json!({"system": "magic-transit", "type": "simple", "time_limit": 60, "packet_limit": 10000});
    let created = fixture.curl("POST", &format!("/client/v4/accounts/{account}/pcaps"), token, Some(body));
    assert_eq!(created["status"], 200, "{created}");
    fixture.wait_final(account, token, created["result"]["id"].as_str().unwrap())
}

#[test]
fn accounts_capture_only_their_own_traffic_where_they_may() {
    let Some(f) = Fixture::new("accounts_capture_only_their_own_traffic_where_they_may") else { return };
    let admin = |method: &str, path: &str, body: Option<Value>| f.curl(method, path, ADMIN, body);

    // The admin API is the operator's: an account token is refused; bad prefixes name the field.
    assert_eq!(f.curl("GET", "/edgecap/v1/admin/accounts", TOKEN_A, None)["status"], 403);
    for (body, field) in [
        (json!({"prefixes": []}), "prefixes"),
        (json!({"prefixes": ["198.51.100.0/24", "198.51.100.128/25"]}), "prefixes"),
        (json!({"prefixes": ["198.51.100.1/24"]}), "prefixes"),
        (json!({"prefixes": ["not-a-network"]}), "prefixes"),
        (json!({"prefixes": "198.51.100.0/24"}), "prefixes"),
        (json!({"prefixes": ["198.51.100.0/24"], "pops": []}), "pops"),
        (json!({"prefixes": ["198.51.100.0/24"], "colos": ["x"]}), "colos"),
    ] {
        let v = admin("PUT", "/edgecap/v1/admin/accounts/a", Some(body.clone()));
        let message = v["errors"][0]["message"].as_str().unwrap_or_default().to_string();
        assert_eq!(v["status"], 400, "{body}: {v}");
        assert!(message.starts_with(field), "{body}: {message}");
    }
    // Without a scope, an account captures nothing.
    let refused = f.curl(
        "POST",
        "/client/v4/accounts/c/pcaps",
        TOKEN_C,
        Some(json!({"system": "magic-transit", "type": "simple", "time_limit": 60, "packet_limit": 100})),
    );
    assert_eq!(refused["status"], 403, "{refused}");
    assert!(refused["errors"][0]["message"].as_str().unwrap().starts_with("account:"), "{refused}");

    let a =
        admin("PUT", "/edgecap/v1/admin/accounts/a", Some(json!({"prefixes": ["198.51.100.0/24"], "pops": ["ord*"]})));
    assert_eq!(a["status"], 200, "{a}");
    let b = admin(
        "PUT",
        "/edgecap/v1/admin/accounts/b",
        Some(json!({"prefixes": ["203.0.113.0/24", "2001:db8:b::/48"], "pops": ["ord01"]})),
    );
    assert_eq!(b["status"], 200, "{b}");
    let own = f.curl("GET", "/edgecap/v1/accounts/b/scope", TOKEN_B, None);
    assert_eq!(own["result"]["prefixes"], json!(["203.0.113.0/24", "2001:db8:b::/48"]), "{own}");

    let traffic = f.dir.path().join("tenants.pcap");
    write_traffic(&traffic);
    f.replay(&traffic);
    std::thread::sleep(Duration::from_secs(1));

    // Samples: A's packets at both PoPs, B's at ord01 only; nothing else, and all of them.
    let sa = sample(&f, "a", TOKEN_A);
    assert_eq!(sa["status"], "success", "{sa:#}\n{}", f.logs());
    assert_eq!(sa["effective_filter"], "net 198.51.100.0/24", "{sa:#}");
    let pops = sa["pops"].as_array().unwrap();
    assert_eq!(pops.len(), 2, "{sa:#}");
    for pop in pops {
        assert_eq!(pop["packets"], A_PACKETS, "{pop:#}");
        assert!(pop["excluded"].as_u64().unwrap() >= (B4_PACKETS + B6_PACKETS + OTHER_PACKETS) as u64, "{pop:#}");
    }
    let file = f.dir.path().join("a.pcap");
    f.download("a", TOKEN_A, sa["id"].as_str().unwrap(), &file);
    let got = sources(&file);
    assert_eq!(got.len(), 2 * A_PACKETS, "{got:?}");
    assert!(got.iter().all(|s| s.starts_with("198.51.100.")), "{got:?}");

    let sb = sample(&f, "b", TOKEN_B);
    assert_eq!(sb["status"], "success", "{sb:#}");
    let pops = sb["pops"].as_array().unwrap();
    assert_eq!(pops.len(), 1, "B may capture at ord01 only: {sb:#}");
    assert_eq!(pops[0]["pop"], "ord01");
    assert_eq!(pops[0]["packets"], B4_PACKETS + B6_PACKETS, "{sb:#}");
    let file = f.dir.path().join("b.pcap");
    f.download("b", TOKEN_B, sb["id"].as_str().unwrap(), &file);
    let got = sources(&file);
    assert_eq!(got.len(), B4_PACKETS + B6_PACKETS, "{got:?}");
    assert!(got.iter().all(|s| s == "192.0.2.2" || s.starts_with("2001:db8:b:")), "{got:?}");

    // B may not capture at ord02.
    let destination = format!("s3://{BUCKET}/t?region=us-east-1&endpoint=http://10.213.1.1:{}", f.s3.port);
    for (account, token) in [("a", TOKEN_A), ("b", TOKEN_B)] {
        let owned = f.curl(
            "POST",
            &format!("/client/v4/accounts/{account}/pcaps/ownership"),
            token,
            Some(json!({"destination_conf": destination})),
        );
        assert_eq!(owned["status"], 200, "{owned}");
        let challenge = std::fs::read_to_string(
            f.s3.object_path(BUCKET, &format!("t/{}", owned["result"]["filename"].as_str().unwrap())),
        )
        .unwrap();
        let validated = f.curl(
            "POST",
            &format!("/client/v4/accounts/{account}/pcaps/ownership/validate"),
            token,
            Some(json!({"destination_conf": destination, "ownership_challenge": challenge.trim()})),
        );
        assert_eq!(validated["status"], 200, "{validated}");
    }
    let full = |colo: &str| {
        json!({"system": "magic-transit", "type": "full", "time_limit": 6, "colo_name": colo,
            "destination_conf": destination, "packet_limit": 10000})
    };
    let outside = f.curl("POST", "/client/v4/accounts/b/pcaps", TOKEN_B, Some(full("ord02")));
    assert_eq!(outside["status"], 403, "{outside}");
    assert!(outside["errors"][0]["message"].as_str().unwrap().starts_with("colo_name:"), "{outside}");

    // A full capture by A at `ord`: exactly A's packets from both PoPs in the merged file.
    let created = f.curl("POST", "/client/v4/accounts/a/pcaps", TOKEN_A, Some(full("ord")));
    assert_eq!(created["status"], 200, "{created}");
    let id = created["result"]["id"].as_str().unwrap().to_string();
    wait_for("A's capture to run", Duration::from_secs(30), || {
        let v = f.curl("GET", &format!("/client/v4/accounts/a/pcaps/{id}"), TOKEN_A, None);
        v["result"]["pops"].as_array()?.iter().all(|p| p["status"] == "running").then_some(())
    });
    f.replay(&traffic);
    let done = f.wait_final("a", TOKEN_A, &id);
    assert_eq!(done["status"], "success", "{done:#}\n{}", f.logs());
    for pop in done["pops"].as_array().unwrap() {
        assert_eq!(pop["packets"], A_PACKETS, "{pop:#}");
        assert!(pop["excluded"].as_u64().unwrap() >= (B4_PACKETS + B6_PACKETS + OTHER_PACKETS) as u64, "{pop:#}");
    }
    let merged = f.s3.object_path(BUCKET, &format!("t/{}", done["object_key"].as_str().unwrap()));
    let got = sources(&merged);
    assert_eq!(got.len(), 2 * A_PACKETS, "{got:?}");
    assert!(got.iter().all(|s| s.starts_with("198.51.100.")), "{got:?}");
}

/// A scope set through one replica is what another replica applies to its next capture
/// (both read it from etcd when a capture is created).
#[tokio::test(flavor = "multi_thread")]
async fn a_scope_change_is_in_force_on_every_replica_for_the_next_capture() {
    let test = "a_scope_change_is_in_force_on_every_replica_for_the_next_capture";
    let Some(etcd) = edgecap_e2e::EtcdServer::launch(test) else { return };
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    edgecap_tls::pki::init_ca(&pki, "tenancy").unwrap();
    let tls = edgecap_tls::pki::issue_coordinator(&pki, "c", &["127.0.0.1".into()]).unwrap();
    let start = |name: &str| {
        edgecap_coordinator::Coordinator::start(edgecap_coordinator::CoordinatorConfig {
            name: name.into(),
            api_listen: "127.0.0.1:0".parse().unwrap(),
            grpc_listen: "127.0.0.1:0".parse().unwrap(),
            tls: tls.clone(),
            state: edgecap_state::StateConfig::parse(&format!("etcd://{}/tenancy", etcd.client), dir.path()).unwrap(),
            storage: edgecap_storage::StorageConfig::LocalDir { root: dir.path().join("objects") },
            tmp_dir: dir.path().join(format!("tmp-{name}")),
            rate_limits: edgecap_coordinator::RateLimits::off(),
            agent_wait: Duration::ZERO,
            tokens: vec![("a".into(), TOKEN_A.into())],
            admin_tokens: vec![ADMIN.into()],
            ..Default::default()
        })
    };
    let (c1, c2) = (start("c1").await.unwrap(), start("c2").await.unwrap());
    let (api1, api2) = (format!("http://{}", c1.api_addr), format!("http://{}", c2.api_addr));
    let body = json!({"system": "magic-transit", "type": "simple", "time_limit": 60, "packet_limit": 100});
    let capture = |api: String, body: Value| async move {
        api_call("POST", &format!("{api}/client/v4/accounts/a/pcaps"), TOKEN_A, Some(body)).await
    };
    assert_eq!(capture(api2.clone(), body.clone()).await.0, 403, "no scope yet");
    let put = |prefixes: Value| {
        let url = format!("{api1}/edgecap/v1/admin/accounts/a");
        async move { api_call("PUT", &url, ADMIN, Some(json!({ "prefixes": prefixes }))).await }
    };
    assert_eq!(put(json!(["198.51.100.0/24"])).await.0, 200);
    let (status, created) = capture(api2.clone(), body.clone()).await;
    assert_eq!(status, 200, "{created}");
    assert_eq!(created["result"]["effective_filter"], "net 198.51.100.0/24");
    assert_eq!(put(json!(["198.51.100.0/25", "2001:db8:a::/48"])).await.0, 200);
    let (_, created) = capture(api2.clone(), body).await;
    assert_eq!(created["result"]["effective_filter"], "net 198.51.100.0/25 or net 2001:db8:a::/48");
    c1.shutdown().await.unwrap();
    c2.shutdown().await.unwrap();
}
