//! Dialling a coordinator: endpoints, mutual TLS below tonic, and the backoff between
//! attempts.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;

/// Checks an endpoint (`https://host[:port]`, port 7443 by default); returns host and port.
pub(crate) fn parse_endpoint(endpoint: &str) -> anyhow::Result<(String, u16)> {
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

/// FNV-1a, 64 bits: stable across builds and platforms (an agent must pick the same
/// replica after an upgrade).
fn fnv1a(parts: &[&str]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for byte in part.bytes().chain(std::iter::once(0)) {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    hash
}

/// The endpoints in this agent's order of preference (rendezvous hashing): agents spread
/// evenly over the replicas, and when one replica goes, only its agents move (each to its
/// own second choice, so they spread over the others too).
pub(crate) fn preference(agent_id: &str, endpoints: &[String]) -> Vec<String> {
    let mut ranked: Vec<(u64, &String)> = endpoints.iter().map(|e| (fnv1a(&[agent_id, e]), e)).collect();
    ranked.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(b.1)));
    ranked.into_iter().map(|(_, e)| e.clone()).collect()
}

/// Whether something accepts TCP connections at the endpoint now (a replica that came back).
pub(crate) async fn reachable(endpoint: &str) -> bool {
    let Ok((host, port)) = parse_endpoint(endpoint) else { return false };
    matches!(
        tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect((host.as_str(), port))).await,
        Ok(Ok(_))
    )
}

/// Exponential backoff with jitter, reset by a session that lasted.
pub(crate) struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub(crate) fn new(min: Duration, max: Duration) -> Self {
        Self { min, max, next: min }
    }

    /// The wait before the next attempt, given how long the last session lasted: one that
    /// lasted a while starts the backoff over. Adds 0-50 % jitter.
    pub(crate) fn after(&mut self, session: Duration) -> Duration {
        if session > Duration::from_secs(30) {
            self.next = self.min;
        }
        let wait = self.next + self.next.mul_f64(fastrand::f64() * 0.5);
        self.next = (self.next * 2).min(self.max);
        wait
    }
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
    fn agents_spread_evenly_and_only_a_dead_replicas_agents_move() {
        let endpoints: Vec<String> = (1..=3).map(|i| format!("https://c{i}:7443")).collect();
        let agents: Vec<String> = (0..3000).map(|i| format!("agent-{i:04}")).collect();
        let first = |eps: &[String], a: &str| preference(a, eps)[0].clone();
        for e in &endpoints {
            let n = agents.iter().filter(|a| first(&endpoints, a) == *e).count();
            assert!((850..=1150).contains(&n), "{e}: {n} of 3000");
        }
        // c3 gone: its agents' second choices spread over c1 and c2; nobody else moves.
        let two = &endpoints[..2];
        let moved: Vec<&String> = agents.iter().filter(|a| first(&endpoints, a) != first(two, a)).collect();
        assert!(moved.iter().all(|a| first(&endpoints, a) == endpoints[2]));
        let to_c1 = moved.iter().filter(|a| first(two, a) == endpoints[0]).count();
        assert!(to_c1 * 3 > moved.len() && to_c1 * 3 < moved.len() * 2, "{to_c1} of {}", moved.len());
    }

    #[test]
    fn backoff_doubles_to_its_cap_and_resets_after_a_long_session() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(400));
        let waits: Vec<Duration> = (0..4).map(|_| b.after(Duration::ZERO)).collect();
        assert!(waits[0] >= Duration::from_millis(100) && waits[0] <= Duration::from_millis(150));
        assert!(waits[3] >= Duration::from_millis(400) && waits[3] <= Duration::from_millis(600));
        assert!(b.after(Duration::from_secs(60)) <= Duration::from_millis(150));
    }
}
