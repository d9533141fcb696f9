//! The live stream of a running full capture (`GET .../pcaps/{id}/stream`, `edgecap capture
//! stream`): two PoPs (`ams000`, `ord001`, simulated agents at 4000 packets/s each) and one
//! coordinator. While the capture runs, `edgecap capture stream ID | tshark -l -r -` prints
//! packets of both PoPs, in time order, and ends by itself when the capture ends; a second
//! viewer that reads nothing (a tiny receive buffer) does not hold anything up, and when it
//! finally reads, its stream is in time order and says in its interface statistics how many
//! packets it lost; the file delivered to the bucket is complete (every packet each PoP
//! matched, no loss at the capture). A sample capture, an unknown id and a finished capture
//! cannot be streamed (4xx naming `pcap_id`).

#![allow(clippy::unwrap_used, reason = "a test: a failed unwrap is a failed test")]

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use edgecap_coordinator::Coordinator;
use edgecap_e2e::{S3Server, api_call, wait_for};
use serde_json::json;

const TOKEN: &str = "stream-test-token-0123456789";
const BUCKET: &str = "live";

/// The Enhanced Packet Blocks' (interface, timestamp) and the Interface Statistics Blocks'
/// `isb_ifdrop` sum of a little-endian pcapng stream.
fn pcapng(bytes: &[u8]) -> (Vec<(u32, u64)>, u64) {
    let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap());
    let (mut packets, mut dropped, mut at) = (Vec::new(), 0, 0);
    while at + 12 <= bytes.len() {
        let (kind, len) = (u32_at(at), u32_at(at + 4) as usize);
        assert!(len >= 12 && at + len <= bytes.len(), "a cut block at {at}");
        match kind {
            6 => packets.push((u32_at(at + 8), (u64::from(u32_at(at + 12)) << 32) | u64::from(u32_at(at + 16)))),
            5 => {
                // Options after interface id and timestamp.
                let mut o = at + 20;
                while o + 4 <= at + len - 4 {
                    let (code, olen) = (
                        u16::from_le_bytes([bytes[o], bytes[o + 1]]),
                        u16::from_le_bytes([bytes[o + 2], bytes[o + 3]]),
                    );
                    if code == 0 {
                        break;
                    }
                    if code == 5 {
                        dropped += u64::from_le_bytes(bytes[o + 4..o + 12].try_into().unwrap());
                    }
                    o += 4 + usize::from(olen).div_ceil(4) * 4;
                }
            }
            _ => {}
        }
        at += len;
    }
    assert_eq!(at, bytes.len(), "the stream ends on a block boundary");
    (packets, dropped)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_running_capture_streams_live_to_several_viewers() {
    let test = "a_running_capture_streams_live_to_several_viewers";
    let Some(s3) = S3Server::launch(test) else { return };
    if !edgecap_e2e::require_tool(test, "tshark") {
        return;
    }
    s3.create_bucket(BUCKET);
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    edgecap_tls::pki::init_ca(&pki, "stream").unwrap();
    edgecap_tls::pki::issue_coordinator(&pki, "c", &["127.0.0.1".into()]).unwrap();
    let c = Coordinator::start(edgecap_e2e::bucket_config(dir.path(), "c", TOKEN, &s3, BUCKET)).await.unwrap();
    let endpoint = format!("https://127.0.0.1:{}", c.grpc_addr.port());
    let spool = dir.path().join("spool");
    // 8000 packets/s each: the stalled viewer below must be sent more than its queue (64
    // batches) and the kernel's send buffer (up to 4 MiB) hold together. At 4000 the whole
    // stream (~6 MiB, 320 batches of 50 ms) could fit when a loaded machine drained the taps
    // less often, and nothing was dropped.
    let args = ["--agents", "2", "--pops", "2", "--colos", "ams,ord", "--rate", "8000", "--shard-seconds", "1"];
    let mut sim = edgecap_e2e::simulate("pops", dir.path(), &pki, &endpoint, &spool, &args);
    wait_for("both agents to connect", Duration::from_secs(60), || {
        sim.assert_running("the simulator");
        (c.connected_agents().len() == 2).then_some(())
    });

    let base = format!("http://{}/client/v4", c.api_addr);
    let url = format!("{base}/accounts/acct/pcaps");
    let destination = edgecap_e2e::own_bucket(&url, TOKEN, &s3, BUCKET, "live").await;
    let body = json!({"system": "magic-transit", "type": "full", "time_limit": 8, "colo_names": ["ams", "ord"],
        "destination_conf": destination});
    let (status, created) = api_call("POST", &url, TOKEN, Some(body)).await;
    assert_eq!(status, 200, "{created}");
    let id = created["result"]["id"].as_str().unwrap().to_string();

    // Viewer 1: the CLI into tshark, printing each packet's interface and time as it comes.
    let out = dir.path().join("tshark.txt");
    let log = dir.path().join("viewer.log");
    let pipeline = format!(
        "{} capture stream {id} | tshark -l -n -r - -T fields -e frame.interface_name -e frame.time_epoch > {}",
        edgecap_e2e::bin("edgecap").display(),
        out.display()
    );
    let mut viewer = edgecap_e2e::Proc {
        child: Command::new("sh")
            .args(["-c", &pipeline])
            .env("EDGECAP_API", &base)
            .env("EDGECAP_ACCOUNT", "acct")
            .env("EDGECAP_TOKEN", TOKEN)
            .env("HOME", dir.path())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
        log,
    };
    // Viewer 2: asks for the stream and reads nothing, through a 4 KiB receive buffer.
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.connect(&c.api_addr.into()).unwrap();
    let mut stalled: std::net::TcpStream = socket.into();
    write!(stalled, "GET /client/v4/accounts/acct/pcaps/{id}/stream HTTP/1.0\r\nAuthorization: Bearer {TOKEN}\r\n\r\n")
        .unwrap();

    // Packets arrive while the capture runs.
    let lines = || std::fs::read_to_string(&out).unwrap_or_default().lines().count();
    wait_for("the stream to show packets", Duration::from_secs(30), || {
        viewer.assert_running("the viewer");
        (lines() > 100).then_some(())
    });
    // Eight viewers at most per capture here: with the two above watching, six more
    // (reading nothing), then a ninth is refused with 429 naming pcap_id; the six leave.
    let mut extra = Vec::new();
    for _ in 0..6 {
        let mut s = std::net::TcpStream::connect(c.api_addr).unwrap();
        write!(s, "GET /client/v4/accounts/acct/pcaps/{id}/stream HTTP/1.0\r\nAuthorization: Bearer {TOKEN}\r\n\r\n")
            .unwrap();
        extra.push(s);
    }
    tokio::time::sleep(Duration::from_millis(500)).await; // their requests reach the coordinator
    let (status, refused) = api_call("GET", &format!("{url}/{id}/stream"), TOKEN, None).await;
    assert_eq!(status, 429, "a ninth viewer: {refused}");
    assert!(refused["errors"][0]["message"].as_str().unwrap().starts_with("pcap_id"), "{refused}");
    drop(extra);

    let (_, now) = api_call("GET", &format!("{url}/{id}"), TOKEN, None).await;
    let status = now["result"]["status"].as_str().unwrap();
    assert!(status == "pending" || status == "running", "packets were seen live, before the capture ended: {now}");

    let full = edgecap_e2e::wait_final_or(&url, TOKEN, &id, Duration::from_secs(90), || sim.log_text()).await;
    assert_eq!(full["status"], "success", "{full:#}\n{}", sim.log_text());
    // The stream ended by itself with the capture, and cleanly.
    let status = wait_for("the viewer to end", Duration::from_secs(30), || viewer.child.try_wait().unwrap());
    assert!(status.success(), "{}", viewer.log_text());
    assert!(viewer.log_text().contains("the capture ended"), "{}", viewer.log_text());
    let seen: Vec<(String, f64)> = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(|l| {
            let (iface, t) = l.split_once('\t').unwrap();
            (iface.to_string(), t.parse().unwrap())
        })
        .collect();
    for pop in ["ams000/sim-00000/sim0", "ord001/sim-00001/sim0"] {
        assert!(seen.iter().filter(|(i, _)| i == pop).count() > 1000, "packets of {pop} in the stream");
    }
    assert!(seen.windows(2).all(|w| w[0].1 <= w[1].1), "the stream is in time order");

    // The stalled viewer, read at last: in order, its losses counted.
    stalled.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut answer = Vec::new();
    tokio::task::block_in_place(|| stalled.read_to_end(&mut answer)).unwrap();
    let split = answer.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&answer[..split]).to_string();
    assert!(head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"), "{head}");
    let (packets, dropped) = pcapng(&answer[split + 4..]);
    assert!(packets.windows(2).all(|w| w[0].1 <= w[1].1), "the stalled viewer's stream is in time order");
    assert!(dropped > 0, "a reader that stalls loses packets, counted: {} packets, {dropped} dropped", packets.len());

    // The delivered file is whole: every packet each PoP matched, none lost at the capture.
    let pops = full["pops"].as_array().unwrap();
    let mut total = 0;
    for p in pops {
        assert_eq!(p["status"], "done", "{p}");
        assert_eq!(p["agent_dropped"], 0, "{p}");
        assert_eq!(p["packets"], p["matched"], "{p}");
        total += p["packets"].as_u64().unwrap();
    }
    let merged =
        edgecap_e2e::tshark_packets(&s3.object_path(BUCKET, &format!("live/{}", full["object_key"].as_str().unwrap())));
    assert_eq!(merged.len() as u64, total, "{full:#}");
    assert!(total as usize >= seen.len(), "the live view never holds more than the capture");

    // What cannot be streamed.
    let (status, v) = api_call("GET", &format!("{url}/{id}/stream"), TOKEN, None).await;
    assert_eq!(status, 409, "a finished capture: {v}");
    assert!(v["errors"][0]["message"].as_str().unwrap().starts_with("pcap_id"), "{v}");
    let (status, v) = api_call("GET", &format!("{url}/{}/stream", "0".repeat(32)), TOKEN, None).await;
    assert_eq!(status, 404, "{v}");
    let sample = json!({"system": "magic-transit", "type": "simple", "time_limit": 10, "packet_limit": 10});
    let (_, sample) = api_call("POST", &url, TOKEN, Some(sample)).await;
    let sample_id = sample["result"]["id"].as_str().unwrap();
    let (status, v) = api_call("GET", &format!("{url}/{sample_id}/stream"), TOKEN, None).await;
    assert_eq!(status, 400, "{v}");
    assert!(v["errors"][0]["message"].as_str().unwrap().starts_with("pcap_id"), "{v}");
    c.shutdown().await.unwrap();
}
