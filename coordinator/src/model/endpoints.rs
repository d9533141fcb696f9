//! Which S3 endpoints a `destination_conf` may name. The `endpoint=` parameter lets a user
//! point the coordinator (which writes the ownership challenge, presigns, completes uploads
//! and merges) at any URL, so by default it may not name a loopback, link-local (the cloud
//! metadata service at 169.254.169.254), private, shared or multicast address, whether
//! written as an address or as a name resolving to one. Operators can allow private
//! endpoints (`--allow-private-endpoints`; `edgecap up` does, it runs on one machine) or
//! configure an allow-list (`--s3-endpoint-allow URL`): then only the endpoints listed are
//! accepted.
//!
//! A name is resolved when it is checked; a name that resolves differently later (DNS
//! rebinding) is not caught here. Deployments that need that guarantee use the allow-list.

use std::net::IpAddr;
use std::time::Duration;

/// How long resolving an endpoint's name may take.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

/// The operator's rules for `destination_conf` endpoints.
#[derive(Clone, Debug, Default)]
pub struct EndpointPolicy {
    /// Accept endpoints on private, loopback and link-local addresses.
    pub allow_private: bool,
    /// When not empty, only these endpoints (as written in `destination_conf`, without a
    /// trailing `/`) are accepted, whatever their address.
    pub allowed: Vec<String>,
}

/// Whether `ip` is an address a user's endpoint must not reach by default.
pub(crate) fn is_internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || (a == 100 && (64..128).contains(&b)) // shared address space (CGNAT)
                || a == 0
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_internal(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00 // unique local
                || (first & 0xffc0) == 0xfe80 // link-local
        }
    }
}

impl EndpointPolicy {
    /// Accepts or refuses an endpoint URL (`http(s)://host[:port]`); the reason names
    /// `destination_conf` and says what the operator can do.
    pub(crate) async fn check(&self, endpoint: &str) -> Result<(), String> {
        let normalised = endpoint.trim_end_matches('/');
        if !self.allowed.is_empty() {
            if self.allowed.iter().any(|a| a.trim_end_matches('/') == normalised) {
                return Ok(());
            }
            return Err(format!(
                "destination_conf: endpoint {normalised:?} is not one this coordinator allows (ask its operator: --s3-endpoint-allow)"
            ));
        }
        if self.allow_private {
            return Ok(());
        }
        let uri: axum::http::Uri =
            normalised.parse().map_err(|_| format!("destination_conf: endpoint {normalised:?} is not a URL"))?;
        let host = uri.host().unwrap_or("").trim_start_matches('[').trim_end_matches(']').to_string();
        let port = uri.port_u16().unwrap_or(if uri.scheme_str() == Some("https") { 443 } else { 80 });
        let addresses: Vec<IpAddr> = match host.parse::<IpAddr>() {
            Ok(ip) => vec![ip],
            Err(_) => tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host((host.as_str(), port)))
                .await
                .map_err(|_| format!("destination_conf: endpoint host {host:?} did not resolve in time"))?
                .map_err(|_| format!("destination_conf: endpoint host {host:?} does not resolve"))?
                .map(|a| a.ip())
                .collect(),
        };
        if addresses.is_empty() {
            return Err(format!("destination_conf: endpoint host {host:?} does not resolve"));
        }
        if let Some(ip) = addresses.into_iter().find(|ip| is_internal(*ip)) {
            return Err(format!(
                "destination_conf: endpoint {normalised:?} is on an internal address ({ip}); this coordinator accepts only public endpoints (its operator can allow private ones: --allow-private-endpoints)"
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_addresses_are_recognised() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "224.0.0.1",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:169.254.169.254",
        ] {
            assert!(is_internal(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["8.8.8.8", "52.216.0.1", "2600:1f18::1", "100.128.0.1"] {
            assert!(!is_internal(ip.parse().unwrap()), "{ip}");
        }
    }

    #[tokio::test]
    async fn endpoints_are_checked_by_address_name_and_allow_list() {
        let strict = EndpointPolicy::default();
        for bad in ["http://169.254.169.254", "http://127.0.0.1:9000/", "http://[::1]:80", "http://localhost:9000"] {
            let e = strict.check(bad).await.unwrap_err();
            assert!(e.starts_with("destination_conf:") && e.contains("internal address"), "{bad}: {e}");
        }
        assert!(strict.check("http://203.0.113.9:9000").await.is_ok(), "a public address (by number)");
        let private = EndpointPolicy { allow_private: true, ..Default::default() };
        assert!(private.check("http://10.0.0.5:9000").await.is_ok());
        let listed = EndpointPolicy { allowed: vec!["http://10.0.0.5:9000/".into()], ..Default::default() };
        assert!(listed.check("http://10.0.0.5:9000").await.is_ok());
        let e = listed.check("http://203.0.113.9:9000").await.unwrap_err();
        assert!(e.contains("not one this coordinator allows"), "{e}");
    }
}
