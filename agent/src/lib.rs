//! The edgecap agent: runs in every PoP, keeps the sampled lookback of its interfaces, and
//! answers the coordinator over one mutual-TLS control stream that it dials itself (so it
//! works behind NAT and firewalls).
//!
//! Connection life cycle: dial a coordinator (endpoints tried in turn), send Hello, serve
//! queries and send heartbeats until the stream drops, then back off (exponential, with
//! jitter, capped) and dial again. When the agent's certificate files change, the stream is
//! re-established with the new identity; the lookback is not interrupted by any of this.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use edgecap_capture::{FilterV1, IpPrefix, Lookback, LookbackCapture, LookbackCaptureConfig, LookbackConfig};
use edgecap_proto::agent::v1 as pb;
use edgecap_tls::{PeerIdentity, TlsFiles};
use rustls_pki_types::pem::PemObject;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

pub mod full;
pub mod http;

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// Coordinator endpoints, `https://host:port`, tried in turn.
    pub coordinators: Vec<String>,
    pub tls: TlsFiles,
    pub tls_reload_interval: Duration,
    pub capture: LookbackCaptureConfig,
    pub lookback: LookbackConfig,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    pub heartbeat: Duration,
    /// Full captures: spool and shard settings (`None`: this agent refuses full captures).
    pub full: Option<full::FullCaptureConfig>,
}

impl AgentConfig {
    pub fn new(coordinators: Vec<String>, tls: TlsFiles, interfaces: Vec<String>) -> Self {
        Self {
            coordinators,
            tls,
            tls_reload_interval: Duration::from_secs(5),
            capture: LookbackCaptureConfig { interfaces, ..LookbackCaptureConfig::default() },
            lookback: LookbackConfig::default(),
            backoff_min: Duration::from_millis(250),
            backoff_max: Duration::from_secs(30),
            heartbeat: Duration::from_secs(5),
            full: None,
        }
    }
}

/// Reads the agent id and PoP from the agent's own certificate.
pub fn own_identity(files: &TlsFiles) -> anyhow::Result<(String, String)> {
    let der = rustls_pki_types::CertificateDer::pem_file_iter(&files.cert)
        .with_context(|| format!("read {}", files.cert.display()))?
        .next()
        .with_context(|| format!("{}: no certificate", files.cert.display()))?
        .with_context(|| format!("{}: bad certificate", files.cert.display()))?;
    match edgecap_tls::peer_identity(&der)? {
        PeerIdentity::Agent { agent_id, pop } => Ok((agent_id, pop)),
        other => anyhow::bail!("{}: {other:?} is not an agent certificate", files.cert.display()),
    }
}

/// A running agent: its lookback and its connection loop.
pub struct Agent {
    pub agent_id: String,
    pub pop: String,
    lookback: Arc<Mutex<Lookback>>,
    capture: Option<LookbackCapture>,
    config: AgentConfig,
    jobs: Option<Arc<full::Jobs>>,
}

impl Agent {
    /// Opens the interfaces and starts the lookback. Errors here are configuration errors.
    pub fn start(config: AgentConfig) -> anyhow::Result<Self> {
        edgecap_tls::install_default_provider();
        anyhow::ensure!(!config.coordinators.is_empty(), "at least one coordinator endpoint is required");
        for endpoint in &config.coordinators {
            parse_endpoint(endpoint)?;
        }
        let (agent_id, pop) = own_identity(&config.tls)?;
        let lookback = Arc::new(Mutex::new(Lookback::new(config.lookback.clone())));
        let capture =
            LookbackCapture::start(&config.capture, lookback.clone()).context("start the lookback capture")?;
        let jobs = match &config.full {
            Some(full) => Some(Arc::new(
                full::Jobs::open(full.clone(), &agent_id, &pop, config.capture.interfaces.first().cloned())
                    .context("open the full-capture spool")?,
            )),
            None => None,
        };
        Ok(Self { agent_id, pop, lookback, capture: Some(capture), config, jobs })
    }

    pub fn lookback(&self) -> &Arc<Mutex<Lookback>> {
        &self.lookback
    }

    /// Keeps the control stream up until `cancel`.
    pub async fn run(mut self, cancel: CancellationToken) -> anyhow::Result<()> {
        let mut tls = edgecap_tls::watch_client_config(self.config.tls.clone(), self.config.tls_reload_interval)
            .context("load the agent's TLS files")?;
        let mut backoff = self.config.backoff_min;
        let mut endpoint_index = 0usize;
        while !cancel.is_cancelled() {
            let endpoint = self.config.coordinators[endpoint_index % self.config.coordinators.len()].clone();
            endpoint_index += 1;
            let started = tokio::time::Instant::now();
            let result = tokio::select! {
                _ = cancel.cancelled() => break,
                r = self.session(&endpoint, &mut tls) => r,
            };
            match result {
                Ok(()) => tracing::info!(%endpoint, "control stream closed"),
                Err(error) => tracing::warn!(%endpoint, error = format!("{error:#}"), "control stream failed"),
            }
            // A session that lasted a while resets the backoff.
            if started.elapsed() > Duration::from_secs(30) {
                backoff = self.config.backoff_min;
            }
            let jitter = backoff.mul_f64(fastrand::f64() * 0.5);
            let wait = backoff + jitter;
            tracing::info!(wait_ms = wait.as_millis() as u64, "reconnecting after backoff");
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep(wait) => {}
            }
            backoff = (backoff * 2).min(self.config.backoff_max);
        }
        if let Some(capture) = self.capture.take() {
            tokio::task::spawn_blocking(move || capture.stop()).await.ok();
        }
        if let Some(jobs) = &self.jobs {
            // Running full captures end normally (their shards stay spooled for the next run).
            jobs.stop_all();
        }
        Ok(())
    }

    /// One connection: dial, Hello, then serve until the stream ends or the TLS files change.
    async fn session(
        &self,
        endpoint: &str,
        tls: &mut watch::Receiver<Arc<rustls::ClientConfig>>,
    ) -> anyhow::Result<()> {
        let config = tls.borrow_and_update().clone();
        // The certificate may have been re-issued (new identity): re-read it.
        let (agent_id, pop) = own_identity(&self.config.tls)?;
        let channel = connect(endpoint, config).await?;
        let mut client = pb::agent_control_client::AgentControlClient::new(channel)
            .max_decoding_message_size(16 << 20)
            .max_encoding_message_size(16 << 20);
        let (out_tx, out_rx) = mpsc::channel::<pb::AgentMessage>(64);
        let interfaces: Vec<String> = self.config.capture.interfaces.clone();
        let hello = pb::Hello {
            agent_id: agent_id.clone(),
            pop: pop.clone(),
            interfaces,
            version: VERSION.to_string(),
            sample_rate: self.config.lookback.sample_rate,
            lookback_snaplen: self.config.lookback.snaplen,
        };
        out_tx.send(pb::AgentMessage { msg: Some(pb::agent_message::Msg::Hello(hello)) }).await?;
        let response = client
            .control(tokio_stream::wrappers::ReceiverStream::new(out_rx))
            .await
            .context("open the control stream")?;
        let mut inbound = response.into_inner();
        tracing::info!(%endpoint, %agent_id, %pop, "connected to coordinator");
        let mut heartbeat = tokio::time::interval(self.config.heartbeat);
        let mut progress = tokio::time::interval(Duration::from_secs(1));
        let mut first_progress = true;
        // Shards are delivered while this stream is up.
        let uploads = self.jobs.clone().map(|jobs| AbortOnDrop(tokio::spawn(jobs.upload_loop(out_tx.clone()))));
        let _uploads = uploads;
        loop {
            tokio::select! {
                message = inbound.message() => {
                    let Some(message) = message.context("control stream")? else { return Ok(()) };
                    match message.msg {
                        Some(pb::coordinator_message::Msg::Welcome(w)) => {
                            tracing::debug!(coordinator = %w.coordinator_id, "welcomed");
                        }
                        Some(pb::coordinator_message::Msg::SampleQuery(query)) => {
                            let lookback = self.lookback.clone();
                            let out_tx = out_tx.clone();
                            tokio::spawn(async move {
                                let chunks = tokio::task::spawn_blocking(move || answer_sample(&lookback, query))
                                    .await
                                    .unwrap_or_default();
                                for chunk in chunks {
                                    let msg = pb::AgentMessage { msg: Some(pb::agent_message::Msg::SampleChunk(chunk)) };
                                    if out_tx.send(msg).await.is_err() {
                                        return;
                                    }
                                }
                            });
                        }
                        Some(pb::coordinator_message::Msg::StartCapture(start)) => match &self.jobs {
                            Some(jobs) => {
                                let jobs = jobs.clone();
                                tokio::task::spawn_blocking(move || jobs.start(start));
                            }
                            None => {
                                let report = pb::CaptureReport {
                                    capture_id: start.capture_id,
                                    state: "failed".into(),
                                    error: "this agent is not configured for full captures (no --spool-dir)".into(),
                                    ..Default::default()
                                };
                                out_tx.send(pb::AgentMessage { msg: Some(pb::agent_message::Msg::CaptureReport(report)) }).await?;
                            }
                        },
                        Some(pb::coordinator_message::Msg::StopCapture(stop)) => {
                            if let Some(jobs) = &self.jobs {
                                jobs.stop(&stop.capture_id);
                            }
                        }
                        Some(pb::coordinator_message::Msg::UploadGrant(grant)) => {
                            if let Some(jobs) = &self.jobs {
                                let id = grant.request_id.clone();
                                jobs.deliver(&id, pb::coordinator_message::Msg::UploadGrant(grant));
                            }
                        }
                        Some(pb::coordinator_message::Msg::ShardCommitted(committed)) => {
                            if let Some(jobs) = &self.jobs {
                                let id = committed.request_id.clone();
                                jobs.deliver(&id, pb::coordinator_message::Msg::ShardCommitted(committed));
                            }
                        }
                        None => {}
                    }
                }
                _ = progress.tick() => {
                    if let Some(jobs) = &self.jobs {
                        let all = std::mem::take(&mut first_progress);
                        let jobs = jobs.clone();
                        let reports = tokio::task::spawn_blocking(move || jobs.reports(all)).await.unwrap_or_default();
                        for report in reports {
                            out_tx.send(pb::AgentMessage { msg: Some(pb::agent_message::Msg::CaptureReport(report)) }).await?;
                        }
                    }
                }
                _ = heartbeat.tick() => {
                    let stats = lookback_stats(&self.lookback);
                    let msg = pb::AgentMessage { msg: Some(pb::agent_message::Msg::Heartbeat(pb::Heartbeat { lookback: Some(stats) })) };
                    out_tx.send(msg).await.context("send heartbeat")?;
                }
                changed = tls.changed() => {
                    changed.context("tls watcher ended")?;
                    tracing::info!("tls files changed; reconnecting with the new certificate");
                    return Ok(());
                }
            }
        }
    }
}

/// Aborts a task when dropped (the upload loop ends with its session).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn parse_endpoint(endpoint: &str) -> anyhow::Result<(String, u16)> {
    let uri: tonic::codegen::http::Uri =
        endpoint.parse().with_context(|| format!("coordinator endpoint {endpoint:?}"))?;
    anyhow::ensure!(uri.scheme_str() == Some("https"), "coordinator endpoint {endpoint:?}: must be https://host:port");
    let host = uri.host().with_context(|| format!("coordinator endpoint {endpoint:?}: no host"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']').to_string();
    Ok((host, uri.port_u16().unwrap_or(7443)))
}

/// Dials `https://host:port` with our own rustls client (mutual TLS).
pub async fn connect(endpoint: &str, config: Arc<rustls::ClientConfig>) -> anyhow::Result<tonic::transport::Channel> {
    let (host, port) = parse_endpoint(endpoint)?;
    let server_name = rustls_pki_types::ServerName::try_from(host.clone())
        .with_context(|| format!("{host:?} is not a valid server name"))?;
    let connector = tower::service_fn(move |_: tonic::codegen::http::Uri| {
        let host = host.clone();
        let server_name = server_name.clone();
        let config = config.clone();
        async move {
            let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
            tcp.set_nodelay(true)?;
            let tls = tokio_rustls::TlsConnector::from(config).connect(server_name, tcp).await?;
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
        }
    });
    // The scheme is http because TLS is ours, below tonic.
    tonic::transport::Endpoint::from_shared(format!("http://edgecap-coordinator:{port}"))?
        .connect_timeout(Duration::from_secs(10))
        .http2_keep_alive_interval(Duration::from_secs(20))
        .keep_alive_timeout(Duration::from_secs(10))
        .connect_with_connector(connector)
        .await
        .with_context(|| format!("connect to {endpoint}"))
}

fn lock(l: &Mutex<Lookback>) -> std::sync::MutexGuard<'_, Lookback> {
    l.lock().unwrap_or_else(|p| p.into_inner())
}

fn lookback_stats(lookback: &Mutex<Lookback>) -> pb::LookbackStats {
    let l = lock(lookback);
    let s = l.stats();
    pb::LookbackStats {
        packets_seen: s.packets_seen,
        packets_sampled: s.packets_sampled,
        packets_held: l.len() as u64,
        bytes_held: l.bytes() as u64,
        packets_evicted: s.packets_evicted,
        kernel_dropped: s.kernel_dropped,
        oldest_ns: l.oldest_ns().unwrap_or(0),
    }
}

/// Rebuilds a typed filter from the wire; the agent re-validates rather than trusting it.
pub fn filter_from_pb(f: &pb::FilterV1) -> Result<FilterV1, String> {
    let port = |name: &str, v: Option<u32>| -> Result<Option<u16>, String> {
        v.map(|p| u16::try_from(p).map_err(|_| format!("{name}: {p} is not a port"))).transpose()
    };
    let filter = FilterV1 {
        source_address: f
            .source_address
            .as_deref()
            .map(|a| IpPrefix::parse("source_address", a))
            .transpose()
            .map_err(|e| e.to_string())?,
        destination_address: f
            .destination_address
            .as_deref()
            .map(|a| IpPrefix::parse("destination_address", a))
            .transpose()
            .map_err(|e| e.to_string())?,
        source_port: port("source_port", f.source_port)?,
        destination_port: port("destination_port", f.destination_port)?,
        protocol: f
            .protocol
            .map(|p| u8::try_from(p).map_err(|_| format!("protocol: {p} is out of range")))
            .transpose()?,
    };
    filter.check_satisfiable().map_err(|e| e.to_string())?;
    Ok(filter)
}

/// Answers a sample query from the lookback, in chunks; the last chunk has `done`.
#[tracing::instrument(name = "lookback_query", skip_all, fields(request = %query.request_id))]
pub fn answer_sample(lookback: &Mutex<Lookback>, query: pb::SampleQuery) -> Vec<pb::SampleChunk> {
    // Packets reach the lookback in batches, up to VISIBILITY_DELAY after they were on the
    // wire: a window that ends that recently is answered once they are all in.
    let now =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0);
    let settled = query.to_ns.saturating_add(edgecap_capture::live::VISIBILITY_DELAY.as_nanos() as u64);
    if settled > now {
        std::thread::sleep(Duration::from_nanos(
            (settled - now).min(edgecap_capture::live::VISIBILITY_DELAY.as_nanos() as u64),
        ));
    }
    let fail = |error: String| vec![pb::SampleChunk::failure(&query.request_id, error)];
    let filter = match query.filter.as_ref().map(filter_from_pb).transpose() {
        Ok(f) => f.unwrap_or_default(),
        Err(e) => return fail(format!("filter refused: {e}")),
    };
    let interfaces: Vec<(String, i32)> = lock(lookback).interfaces().to_vec();
    let snaplen = lock(lookback).config().snaplen as i32;
    if !query.filter_bpf.is_empty() {
        // The coordinator vouched for this program compiled for Ethernet; on an Ethernet
        // interface ours must be the same program (another libpcap could compile it
        // differently). Other link types compile to other programs by nature.
        for (name, linktype) in &interfaces {
            let checked = if *linktype == 1 {
                edgecap_capture::bpf::verify(&query.filter_bpf, 1, 262_144, &query.filter_bpf_hash)
            } else {
                edgecap_capture::bpf::check(&query.filter_bpf, *linktype, snaplen)
            };
            if let Err(e) = checked {
                return fail(format!("interface {name}: {e}"));
            }
        }
    }
    let expr = match (filter.to_bpf(), query.filter_bpf.as_str()) {
        (v1, "") => v1,
        (v1, bpf) if v1.is_empty() => bpf.to_string(),
        (v1, bpf) => format!("({v1}) and ({bpf})"),
    };
    // One program per interface link type, compiled like a live filter would be.
    let mut programs = Vec::new();
    if !expr.is_empty() {
        for (_, linktype) in &interfaces {
            match edgecap_capture::compile_offline(*linktype, snaplen, &expr) {
                Ok(p) => programs.push(p),
                Err(e) => return fail(e.to_string()),
            }
        }
    }
    // Judged on the wire length, not the stored (truncated) length: a filter means the same
    // here as on a live capture.
    let result = lock(lookback).query(query.from_ns, query.to_ns, query.packet_limit as usize, |packet, data| {
        programs
            .get(usize::from(packet.iface))
            .is_none_or(|p| edgecap_capture::offline::matches(p, data, packet.orig_len))
    });
    let stats = lookback_stats(lookback);
    let packets: Vec<pb::Packet> = result
        .packets
        .into_iter()
        .map(|p| {
            let (name, linktype) = interfaces.get(p.iface as usize).cloned().unwrap_or_default();
            pb::Packet {
                ts_ns: p.ts_ns,
                orig_len: p.orig_len,
                data: p.data,
                interface: name,
                linktype: linktype as u32,
            }
        })
        .collect();
    pb::SampleChunk::split(&query.request_id, packets, result.matched, stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        assert_eq!(parse_endpoint("https://10.0.0.1:7443").unwrap(), ("10.0.0.1".into(), 7443));
        assert_eq!(parse_endpoint("https://[::1]:9").unwrap(), ("::1".into(), 9));
        assert_eq!(parse_endpoint("https://coord.example").unwrap(), ("coord.example".into(), 7443));
        assert!(parse_endpoint("http://x:1").is_err());
        assert!(parse_endpoint("not a url").is_err());
    }

    #[test]
    fn wire_filters_are_revalidated() {
        let ok = pb::FilterV1 { protocol: Some(17), destination_port: Some(53), ..Default::default() };
        assert_eq!(filter_from_pb(&ok).unwrap().to_bpf(), "dst port 53 and (ip proto 17 or ip6 proto 17)");
        for bad in [
            pb::FilterV1 { source_port: Some(70000), ..Default::default() },
            pb::FilterV1 { protocol: Some(300), ..Default::default() },
            pb::FilterV1 { source_address: Some("1.2.3.4 or tcp".into()), ..Default::default() },
        ] {
            assert!(filter_from_pb(&bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn sample_answers_are_chunked_filtered_and_limited() {
        let lookback = Mutex::new(Lookback::new(LookbackConfig::default()));
        let iface = lock(&lookback).add_interface("veth", 1);
        // Ethernet + IPv4 + UDP to port 53 (even i) or 54 (odd i).
        for i in 0..2500u64 {
            let mut frame = vec![0u8; 42];
            frame[12] = 0x08; // ethertype IPv4
            frame[14] = 0x45;
            frame[23] = 17; // UDP
            frame[36..38].copy_from_slice(&(53 + (i % 2) as u16).to_be_bytes());
            lock(&lookback).insert(1_000 + i, 42, iface, &frame);
        }
        let query = pb::SampleQuery {
            request_id: "r".into(),
            from_ns: 0,
            to_ns: u64::MAX,
            filter: Some(pb::FilterV1 { destination_port: Some(53), ..Default::default() }),
            packet_limit: 1200,
            ..Default::default()
        };
        let chunks = answer_sample(&lookback, query);
        assert_eq!(chunks.len(), 2);
        let last = chunks.last().unwrap();
        assert!(last.done && last.error.is_empty());
        assert_eq!(last.matched, 1250);
        let packets: Vec<&pb::Packet> = chunks.iter().flat_map(|c| &c.packets).collect();
        assert_eq!(packets.len(), 1200);
        assert!(packets.windows(2).all(|w| w[0].ts_ns < w[1].ts_ns));
        assert_eq!(packets.last().unwrap().ts_ns, 1_000 + 2498, "newest matching packet kept");
        let bad = pb::SampleQuery {
            filter: Some(pb::FilterV1 { protocol: Some(999), ..Default::default() }),
            ..Default::default()
        };
        assert!(answer_sample(&lookback, bad)[0].error.contains("protocol"));
        // filter_bpf: ANDed with filter_v1, and refused when its bytecode is not the one the
        // coordinator validated.
        let hash = edgecap_capture::bpf::check("udp dst port 54", 1, 262_144).unwrap().hash;
        let both = pb::SampleQuery {
            request_id: "b".into(),
            to_ns: u64::MAX,
            filter: Some(pb::FilterV1 { protocol: Some(17), ..Default::default() }),
            filter_bpf: "udp dst port 54".into(),
            filter_bpf_hash: hash.clone(),
            packet_limit: 10_000,
            ..Default::default()
        };
        assert_eq!(answer_sample(&lookback, both.clone()).last().unwrap().matched, 1250);
        let forged = pb::SampleQuery { filter_bpf: "udp".into(), filter_bpf_hash: hash, ..both };
        let err = &answer_sample(&lookback, forged)[0].error;
        assert!(err.contains("filter_bpf") && err.contains("hash"), "{err}");
    }
}
