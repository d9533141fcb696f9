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
    fn backoff_doubles_to_its_cap_and_resets_after_a_long_session() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(400));
        let waits: Vec<Duration> = (0..4).map(|_| b.after(Duration::ZERO)).collect();
        assert!(waits[0] >= Duration::from_millis(100) && waits[0] <= Duration::from_millis(150));
        assert!(waits[3] >= Duration::from_millis(400) && waits[3] <= Duration::from_millis(600));
        assert!(b.after(Duration::from_secs(60)) <= Duration::from_millis(150));
    }
}
