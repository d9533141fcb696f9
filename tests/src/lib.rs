//! End-to-end test harness: PoPs as Linux network namespaces joined by veth pairs, the real
//! binaries running inside them, real traffic.
//!
//! Everything a test creates is owned by a guard that removes it on drop, panics included:
//! [`NetNs`] deletes its namespace (which destroys the veth ends in it), [`Proc`] kills and
//! reaps its process. Namespaces are named `ec-{pid}-{tag}`; [`sweep_stale`] removes any left
//! by a test process that no longer exists (a SIGKILLed run cannot run its destructors).
//!
//! Traffic stays inside the namespaces a test made: they are joined only to each other,
//! never to the host's network.

#![allow(clippy::unwrap_used, reason = "a test: a failed unwrap is a failed test")]

mod fake_agent;
pub mod otlp;
mod proxy;

pub use fake_agent::FakeAgent;
pub use proxy::TcpProxy;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Whether privileged tests (namespaces, capture) can run. Outside CI a non-root run skips
/// them with a message; in CI (`CI=true`) not being root is a failure, never a silent skip.
pub fn require_root(test: &str) -> bool {
    let root = Command::new("id").arg("-u").output().map(|o| o.stdout.starts_with(b"0")).unwrap_or(false);
    if !root {
        assert!(std::env::var("CI").is_err(), "{test}: needs root, and CI must run it");
        eprintln!("SKIP {test}: needs root (network namespaces, packet capture)");
    }
    root
}

/// A tool the test needs: present, or a failure in CI / a skip elsewhere.
pub fn require_tool(test: &str, tool: &str) -> bool {
    let found =
        Command::new("sh").args(["-c", &format!("command -v {tool}")]).output().is_ok_and(|o| o.status.success());
    if !found {
        assert!(std::env::var("CI").is_err(), "{test}: {tool} is missing; .ci/run installs it");
        eprintln!("SKIP {test}: {tool} is not installed (scripts/setup.sh installs it)");
    }
    found
}

/// Path of a workspace binary, next to the test executable's `deps/` directory.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().and_then(|p| p.parent()).expect("target dir");
    let path = dir.join(name);
    assert!(path.exists(), "{} is missing: build the binaries first (cargo build --workspace)", path.display());
    path
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    out
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A short name unique to this process and call (interface names are at most 15 bytes).
pub fn unique(tag: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("e{:x}{n}{tag}", std::process::id() & 0xfffff)
}

/// Removes `ec-{pid}-*` namespaces whose process is gone.
pub fn sweep_stale() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else { return };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let Some(pid) = name.strip_prefix("ec-").and_then(|r| r.split('-').next()) else { continue };
        if !PathBuf::from(format!("/proc/{pid}")).exists() {
            let _ = Command::new("ip").args(["netns", "del", name]).status();
        }
    }
}

/// A network namespace, deleted on drop.
pub struct NetNs {
    /// `ec-{pid}-{tag}`.
    pub name: String,
}

impl NetNs {
    /// Creates the namespace, with its loopback up.
    pub fn new(tag: &str) -> Self {
        let name = format!("ec-{}-{}", std::process::id(), unique(tag));
        run(Command::new("ip").args(["netns", "add", &name]));
        let ns = NetNs { name };
        run(Command::new("ip").args(["-n", &ns.name, "link", "set", "lo", "up"]));
        ns
    }

    /// A command that runs inside this namespace.
    pub fn cmd(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }

    /// Starts a long-running process inside the namespace, its output in `log`.
    pub fn spawn(&self, program: impl AsRef<std::ffi::OsStr>, args: &[&str], log: &std::path::Path) -> Proc {
        let file = std::fs::File::create(log).expect("log file");
        let child = self
            .cmd(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log"))
            .stderr(file)
            .spawn()
            .expect("spawn in namespace");
        Proc { child, log: log.to_path_buf() }
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        // Kill anything still running in it, then delete it (veths in it go with it).
        let _ = Command::new("ip").args(["netns", "pids", &self.name]).output().map(|o| {
            for pid in String::from_utf8_lossy(&o.stdout).split_whitespace() {
                let _ = Command::new("kill").args(["-9", pid]).status();
            }
        });
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

/// Joins two namespaces with a veth pair and addresses each end; returns the interface names.
pub fn veth(a: &NetNs, a_addr: &str, b: &NetNs, b_addr: &str) -> (String, String) {
    let (ia, ib) = (unique("a"), unique("b"));
    run(Command::new("ip").args(["link", "add", &ia, "type", "veth", "peer", "name", &ib]));
    run(Command::new("ip").args(["link", "set", &ia, "netns", &a.name]));
    run(Command::new("ip").args(["link", "set", &ib, "netns", &b.name]));
    for (ns, iface, addr) in [(a, &ia, a_addr), (b, &ib, b_addr)] {
        run(Command::new("ip").args(["-n", &ns.name, "addr", "add", addr, "dev", iface]));
        run(Command::new("ip").args(["-n", &ns.name, "link", "set", iface, "up"]));
    }
    (ia, ib)
}

/// A child process, killed and reaped on drop.
pub struct Proc {
    /// The process.
    pub child: Child,
    /// Where its stdout and stderr go.
    pub log: PathBuf,
}

impl Proc {
    /// What it has written so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Panics with the process's log if it has exited.
    pub fn assert_running(&mut self, what: &str) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("{what} exited ({status}):\n{}", self.log_text());
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until something listens on `addr` (`host:port`) inside namespace `ns`.
pub fn wait_port_in(ns: &str, addr: &str, what: &str) {
    let (host, port) = addr.rsplit_once(':').expect("host:port");
    let probe = format!("exec 3<>/dev/tcp/{host}/{port}");
    wait_for(what, Duration::from_secs(30), || {
        Command::new("ip")
            .args(["netns", "exec", ns, "bash", "-c", &probe])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
            .then_some(())
    });
}

/// Polls `check` until it returns `Some` or `timeout` passes.
pub fn wait_for<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A free TCP port on loopback (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Reads a pcap with tshark: (epoch time, ip.src) per packet. Fails if tshark complains.
pub fn tshark_packets(path: &std::path::Path) -> Vec<(f64, String)> {
    let out = Command::new("tshark")
        .args(["-n", "-r"])
        .arg(path)
        .args(["-T", "fields", "-e", "frame.time_epoch", "-e", "ip.src"])
        .output()
        .expect("run tshark");
    assert!(out.status.success(), "tshark failed: {}", String::from_utf8_lossy(&out.stderr));
    let stderr = String::from_utf8_lossy(&out.stderr);
    for line in stderr.lines() {
        assert!(line.contains("Running as user") || line.trim().is_empty(), "tshark warned: {line}");
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let mut f = l.split('\t');
            let t: f64 = f.next().unwrap_or("").parse().expect("time");
            (t, f.next().unwrap_or("").to_string())
        })
        .collect()
}

/// A real etcd (Debian's `etcd-server`) on loopback with its own data directory; stopped on
/// drop. `stop` and `start` keep the data directory, as a restarted etcd would.
pub struct EtcdServer {
    child: Option<std::process::Child>,
    /// Its client URL, `http://127.0.0.1:PORT`.
    pub client: String,
    peer: String,
    dir: tempfile::TempDir,
    /// Runs inside this namespace (on its loopback), else on the host's.
    netns: Option<String>,
    /// Server TLS (cert, key, client CA): clients must present a certificate from that CA.
    tls: Option<(PathBuf, PathBuf, PathBuf)>,
}

impl EtcdServer {
    /// Starts one, or returns `None` (skip) when etcd is not installed outside CI.
    pub fn launch(test: &str) -> Option<Self> {
        if !require_tool(test, "etcd") {
            return None;
        }
        let client = format!("127.0.0.1:{}", free_port());
        let peer = format!("http://127.0.0.1:{}", free_port());
        let mut server = EtcdServer {
            child: None,
            client,
            peer,
            dir: tempfile::tempdir().expect("temp dir"),
            netns: None,
            tls: None,
        };
        server.start();
        Some(server)
    }

    /// Starts one that speaks only TLS and requires client certificates (`--client-cert-auth`).
    pub fn launch_tls(test: &str, cert: &Path, key: &Path, client_ca: &Path) -> Option<Self> {
        if !require_tool(test, "etcd") {
            return None;
        }
        let client = format!("127.0.0.1:{}", free_port());
        let peer = format!("http://127.0.0.1:{}", free_port());
        let tls = Some((cert.to_path_buf(), key.to_path_buf(), client_ca.to_path_buf()));
        let mut server =
            EtcdServer { child: None, client, peer, dir: tempfile::tempdir().expect("temp dir"), netns: None, tls };
        server.start();
        Some(server)
    }

    /// Starts one on the loopback of `ns` (for coordinators running in that namespace).
    pub fn launch_in(test: &str, ns: &NetNs) -> Option<Self> {
        if !require_tool(test, "etcd") {
            return None;
        }
        let mut server = EtcdServer {
            child: None,
            client: "127.0.0.1:2379".into(),
            peer: "http://127.0.0.1:2380".into(),
            dir: tempfile::tempdir().expect("temp dir"),
            netns: Some(ns.name.clone()),
            tls: None,
        };
        server.start();
        Some(server)
    }

    /// The endpoints to give an etcd client.
    pub fn endpoints(&self) -> Vec<String> {
        vec![self.client.clone()]
    }

    /// (Re)starts etcd on the same ports and data directory and waits for it to listen.
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "etcd already running");
        let mut command = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, "etcd"]);
                c
            }
            None => Command::new("etcd"),
        };
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        if let Some((cert, key, ca)) = &self.tls {
            command.arg("--cert-file").arg(cert).arg("--key-file").arg(key).arg("--trusted-ca-file").arg(ca);
            command.arg("--client-cert-auth");
        }
        let child = command
            .args(["--name", "t", "--data-dir"])
            .arg(self.dir.path().join("data"))
            .args(["--listen-client-urls", &format!("{scheme}://{}", self.client)])
            .args(["--advertise-client-urls", &format!("{scheme}://{}", self.client)])
            .args(["--listen-peer-urls", &self.peer, "--initial-advertise-peer-urls", &self.peer])
            .args(["--initial-cluster", &format!("t={}", self.peer), "--log-level", "error"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start etcd");
        self.child = Some(child);
        match &self.netns {
            Some(ns) => wait_port_in(ns, &self.client, "etcd to listen"),
            None => {
                let client = self.client.clone();
                wait_for("etcd to listen", Duration::from_secs(30), || std::net::TcpStream::connect(&client).ok());
            }
        }
    }

    /// Kills etcd (keeps its data).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// An S3-compatible server (`s3s-fs`) on loopback with a temporary directory, for tests.
/// Credentials are [`S3Server::ACCESS_KEY`] / [`S3Server::SECRET_KEY`]; SigV4 is verified.
pub struct S3Server {
    child: Option<std::process::Child>,
    /// Its port (on loopback, or on every address of its namespace).
    pub port: u16,
    /// Where it keeps the objects (a bucket is a directory).
    pub dir: tempfile::TempDir,
    /// Runs inside this namespace, on all its addresses (else on host loopback).
    netns: Option<String>,
}

impl S3Server {
    /// The access key it accepts.
    pub const ACCESS_KEY: &'static str = "edgecaptestkey";
    /// The secret key it accepts.
    pub const SECRET_KEY: &'static str = "edgecaptestsecret";

    /// Starts one, or returns `None` (skip) when s3s-fs is not installed outside CI.
    pub fn launch(test: &str) -> Option<Self> {
        if !require_tool(test, "s3s-fs") {
            return None;
        }
        let mut server =
            S3Server { child: None, port: free_port(), dir: tempfile::tempdir().expect("temp dir"), netns: None };
        server.start();
        Some(server)
    }

    /// Starts one inside `ns`, listening on all of the namespace's addresses.
    pub fn launch_in(test: &str, ns: &NetNs) -> Option<Self> {
        if !require_tool(test, "s3s-fs") {
            return None;
        }
        let mut server = S3Server {
            child: None,
            port: 9014,
            dir: tempfile::tempdir().expect("temp dir"),
            netns: Some(ns.name.clone()),
        };
        server.start();
        Some(server)
    }

    /// Its URL from the host.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Creates a bucket (a directory for s3s-fs).
    pub fn create_bucket(&self, bucket: &str) {
        std::fs::create_dir_all(self.dir.path().join(bucket)).expect("create bucket directory");
    }

    /// The stored object, straight from the server's directory.
    pub fn object_path(&self, bucket: &str, key: &str) -> PathBuf {
        self.dir.path().join(bucket).join(key)
    }

    /// Keys in a bucket under a prefix, from the server's directory (s3s-fs keeps its own
    /// bookkeeping in dot-files, left out).
    pub fn keys(&self, bucket: &str, prefix: &str) -> Vec<String> {
        fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
            for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                let path = entry.path();
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.starts_with('.') {
                    continue;
                }
                if path.is_dir() {
                    walk(root, &path, out);
                } else if let Ok(rel) = path.strip_prefix(root) {
                    out.push(rel.to_string_lossy().into_owned());
                }
            }
        }
        let root = self.dir.path().join(bucket);
        let mut out = Vec::new();
        walk(&root, &root, &mut out);
        out.retain(|k| k.starts_with(prefix));
        out.sort();
        out
    }

    /// (Re)starts the server on the same port and directory and waits for it to listen.
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "s3s-fs already running");
        let mut command = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, "s3s-fs", "--host", "0.0.0.0"]);
                c
            }
            None => {
                let mut c = Command::new("s3s-fs");
                c.args(["--host", "127.0.0.1"]);
                c
            }
        };
        let child = command
            .args(["--port", &self.port.to_string()])
            .args(["--access-key", Self::ACCESS_KEY, "--secret-key", Self::SECRET_KEY])
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start s3s-fs");
        self.child = Some(child);
        let addr = format!("127.0.0.1:{}", self.port);
        // Probe the port, not HTTP: unsigned requests are refused (and logged) by s3s-fs.
        match &self.netns {
            Some(ns) => wait_port_in(ns, &addr, "s3s-fs to listen"),
            None => {
                wait_for("s3s-fs to listen", Duration::from_secs(30), || std::net::TcpStream::connect(&addr).ok());
            }
        }
    }

    /// Kills the server (keeps its data).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A PoP namespace joined to a core namespace by a veth pair, with its agent's certificate.
pub struct PopNs {
    /// The PoP's name.
    pub name: String,
    /// Its namespace.
    pub ns: NetNs,
    /// The core-side end of the PoP's uplink (traffic is replayed into it).
    pub core_veth: String,
    /// The PoP-side end (the agent captures on it).
    pub pop_veth: String,
    /// Its agent's certificate, key and CA.
    pub tls: edgecap_tls::TlsFiles,
}

impl PopNs {
    /// Starts this PoP's agent on its uplink, dialling `coordinator`, with its own spool in
    /// `dir`, 1 s shards and `extra` arguments; logs to `dir/agent-{pop}.log`.
    pub fn spawn_agent(&self, coordinator: &str, dir: &Path, extra: &[&str]) -> Proc {
        let spool = dir.join(format!("spool-{}", self.name));
        let mut args = vec![
            "run",
            "--coordinator",
            coordinator,
            "--iface",
            &self.pop_veth,
            "--tls-ca",
            self.tls.ca.to_str().expect("path"),
            "--tls-cert",
            self.tls.cert.to_str().expect("path"),
            "--tls-key",
            self.tls.key.to_str().expect("path"),
            "--spool-dir",
            spool.to_str().expect("path"),
            "--shard-rotate-seconds",
            "1",
        ];
        args.extend_from_slice(extra);
        self.ns.spawn(bin("edgecap-agent"), &args, &dir.join(format!("agent-{}.log", self.name)))
    }
}

/// PoPs `ord01..ord0N`: PoP `i` is 10.213.i.2/30 with the core at 10.213.i.1, and a route to
/// the core's other addresses (so every PoP reaches services bound to 10.213.1.1). Agent
/// certificates (`agent-ord0i`) are issued from the CA in `pki`.
pub fn pop_namespaces(core: &NetNs, pki: &Path, count: usize) -> Vec<PopNs> {
    (1..=count)
        .map(|i| {
            let name = format!("ord0{i}");
            let ns = NetNs::new(&name);
            let (core_veth, pop_veth) = veth(core, &format!("10.213.{i}.1/30"), &ns, &format!("10.213.{i}.2/30"));
            run(Command::new("ip").args([
                "-n",
                &ns.name,
                "route",
                "add",
                "10.213.0.0/16",
                "via",
                &format!("10.213.{i}.1"),
            ]));
            let tls =
                edgecap_tls::pki::issue_agent(pki, &format!("agent-{name}"), &name).expect("issue agent certificate");
            PopNs { name, ns, core_veth, pop_veth, tls }
        })
        .collect()
}

/// Runs the `edgecap` CLI inside `ns` against `api` as account `acct`; its JSON output.
pub fn edgecap_cli(ns: &NetNs, api: &str, token: &str, args: &[&str]) -> Result<serde_json::Value, String> {
    let out = ns
        .cmd(bin("edgecap"))
        .args(args)
        .env("EDGECAP_API", api)
        .env("EDGECAP_ACCOUNT", "acct")
        .env("EDGECAP_TOKEN", token)
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    if out.stdout.is_empty() {
        return Ok(serde_json::Value::Null);
    }
    serde_json::from_slice(&out.stdout).map_err(|e| format!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

/// One HTTP call with curl from inside `ns` (where the API listens), with a Bearer token:
/// (status, JSON body or null).
pub fn api_in(
    ns: &NetNs,
    method: &str,
    url: &str,
    token: &str,
    body: Option<&serde_json::Value>,
) -> (u16, serde_json::Value) {
    let mut cmd = ns.cmd("curl");
    cmd.args(["-s", "-X", method, "-w", "\n%{http_code}", "-H", &format!("Authorization: Bearer {token}")]);
    if let Some(b) = body {
        cmd.args(["-H", "Content-Type: application/json", "-d", &b.to_string()]);
    }
    let out = cmd.arg(url).output().expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, status) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (status.parse().unwrap_or(0), serde_json::from_str(body).unwrap_or(serde_json::Value::Null))
}

/// One HTTP call to an edgecap API with a Bearer token: (status, JSON body or null).
pub async fn api_call(
    method: &str,
    url: &str,
    token: &str,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    use http_body_util::BodyExt as _;
    let client: hyper_util::client::legacy::Client<_, http_body_util::Full<bytes::Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
    let req = hyper::Request::builder()
        .method(method)
        .uri(url)
        .header("authorization", format!("Bearer {token}"))
        .body(http_body_util::Full::new(bytes::Bytes::from(body.map(|b| b.to_string()).unwrap_or_default())))
        .expect("request");
    let resp = tokio::time::timeout(Duration::from_secs(30), client.request(req))
        .await
        .expect("the API answers")
        .expect("HTTP");
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null))
}

/// A CA in `dir` and a coordinator certificate for the core side of `count` PoPs made by
/// [`pop_namespaces`] (10.213.i.1); returns the PKI directory.
pub fn core_pki(dir: &Path, count: usize) -> PathBuf {
    let pki = dir.join("pki");
    edgecap_tls::pki::init_ca(&pki, "e2e").expect("CA");
    let hosts: Vec<String> = (1..=count).map(|i| format!("10.213.{i}.1")).collect();
    edgecap_tls::pki::issue_coordinator(&pki, "core", &hosts).expect("coordinator certificate");
    pki
}

impl S3Server {
    /// Writes a coordinator `--s3-credentials` file holding this server's key for `bucket`.
    pub fn write_credentials(&self, path: &Path, bucket: &str) {
        let json =
            serde_json::json!({bucket: {"access_key_id": Self::ACCESS_KEY, "secret_access_key": Self::SECRET_KEY}});
        std::fs::write(path, json.to_string()).expect("write S3 credentials");
    }
}

/// Replays `DnsPackets.pcap` from the shared test data into every PoP's uplink (from the core
/// side), in a loop, at `pps` per PoP; one tcpreplay per PoP, logs in `logs`.
pub fn replay_dns(core: &NetNs, pops: &[PopNs], pps: u32, logs: &Path) -> Vec<Proc> {
    let pcap = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/testdata/pcaps/DnsPackets.pcap");
    let pps = pps.to_string();
    pops.iter()
        .map(|pop| {
            let log = logs.join(format!("tcpreplay-{}.log", pop.name));
            core.spawn(
                "tcpreplay",
                &["-q", "-i", &pop.core_veth, "--pps", &pps, "--loop", "0", pcap.to_str().expect("path")],
                &log,
            )
        })
        .collect()
}

/// Starts `edgecap-bench simulate` (real agents with a replayed packet source, in their own
/// process) with `args`, for the coordinators `endpoints` (comma-separated) and the CA in
/// `pki`, its spools under `spool`; its log in `dir`/`simulate-{tag}.log`.
pub fn simulate(tag: &str, dir: &Path, pki: &Path, endpoints: &str, spool: &Path, args: &[&str]) -> Proc {
    let log = dir.join(format!("simulate-{tag}.log"));
    let file = std::fs::File::create(&log).expect("simulator log");
    let child = Command::new(bin("edgecap-bench"))
        .args(["simulate", "--coordinator", endpoints])
        .args(args)
        .arg("--pki")
        .arg(pki)
        .arg("--spool-dir")
        .arg(spool)
        .stdout(file.try_clone().expect("log"))
        .stderr(file)
        .stdin(Stdio::null())
        .spawn()
        .expect("start edgecap-bench simulate");
    Proc { child, log }
}

/// Proves ownership of `bucket` (on `s3`, objects under `prefix`) through the API at `url`
/// (`.../pcaps`) as the holder of `token`: asks for a challenge, reads it from the bucket and
/// validates it. Returns the `destination_conf` a full capture can then name.
pub async fn own_bucket(url: &str, token: &str, s3: &S3Server, bucket: &str, prefix: &str) -> String {
    let destination = format!("s3://{bucket}/{prefix}?region=us-east-1&endpoint={}", s3.endpoint());
    let body = serde_json::json!({"destination_conf": destination});
    let (status, owned) = api_call("POST", &format!("{url}/ownership"), token, Some(body)).await;
    assert_eq!(status, 200, "{owned}");
    let file = owned["result"]["filename"].as_str().expect("challenge file name");
    let challenge = std::fs::read_to_string(s3.object_path(bucket, &format!("{prefix}/{file}"))).expect("challenge");
    let body = serde_json::json!({"destination_conf": destination, "ownership_challenge": challenge.trim()});
    let (status, validated) = api_call("POST", &format!("{url}/ownership/validate"), token, Some(body)).await;
    assert_eq!(status, 200, "{validated}");
    destination
}

/// A coordinator's configuration for a test on loopback: API and gRPC on ephemeral ports, the
/// coordinator certificate from `dir`/pki (issued by the caller), account `acct` with
/// `token`, no rate limits, accounts without a scope unrestricted, objects under
/// `dir`/objects and scratch files under `dir`/tmp-`name`.
pub fn loopback_config(dir: &Path, name: &str, token: &str) -> edgecap_coordinator::CoordinatorConfig {
    edgecap_coordinator::CoordinatorConfig {
        name: name.into(),
        api_listen: "127.0.0.1:0".parse().unwrap(),
        grpc_listen: "127.0.0.1:0".parse().unwrap(),
        tls: edgecap_tls::TlsFiles::in_dir(&dir.join("pki"), "coordinator"),
        unscoped_accounts: edgecap_coordinator::UnscopedAccounts::Unrestricted,
        tokens: vec![("acct".into(), token.into())],
        rate_limits: edgecap_coordinator::RateLimits::off(),
        tmp_dir: dir.join(format!("tmp-{name}")),
        storage: edgecap_storage::StorageConfig::LocalDir { root: dir.join("objects") },
        ..Default::default()
    }
}

/// [`loopback_config`], allowed to deliver full captures into `bucket` of `s3` (its
/// credentials written to `dir`/s3-credentials.json; endpoints on private addresses allowed).
pub fn bucket_config(
    dir: &Path,
    name: &str,
    token: &str,
    s3: &S3Server,
    bucket: &str,
) -> edgecap_coordinator::CoordinatorConfig {
    let credentials = dir.join("s3-credentials.json");
    s3.write_credentials(&credentials, bucket);
    edgecap_coordinator::CoordinatorConfig {
        s3_credentials: edgecap_coordinator::load_credentials(&credentials).unwrap(),
        full: edgecap_coordinator::FullSettings {
            endpoints: edgecap_coordinator::EndpointPolicy { allow_private: true, allowed: vec![] },
            ..Default::default()
        },
        ..loopback_config(dir, name, token)
    }
}

/// Polls `GET url/id` until the capture is `success` or `failed` (at most `timeout`);
/// returns its `result`.
pub async fn wait_final(url: &str, token: &str, id: &str, timeout: Duration) -> serde_json::Value {
    wait_final_or(url, token, id, timeout, String::new).await
}

/// [`wait_final`], adding `context()` (the logs of the processes involved) to the failure.
pub async fn wait_final_or(
    url: &str,
    token: &str,
    id: &str,
    timeout: Duration,
    context: impl Fn() -> String,
) -> serde_json::Value {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let (_, v) = api_call("GET", &format!("{url}/{id}"), token, None).await;
        if matches!(v["result"]["status"].as_str(), Some("success" | "failed")) {
            return v["result"].clone();
        }
        assert!(tokio::time::Instant::now() < deadline, "capture {id} not final: {v}\n{}", context());
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
