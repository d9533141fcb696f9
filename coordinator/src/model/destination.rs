//! `destination_conf`: where a full capture is delivered.
//!
//! `s3://bucket[/prefix][?region=R][&endpoint=http(s)://host:port]`. The `endpoint`
//! parameter is an extension for S3-compatible stores (path-style addressing is used when it
//! is given). Credentials never appear in it: they come from the coordinator's configuration.

/// Why a `destination_conf` is not acceptable; shown as `destination_conf: <why>`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("destination_conf: {0}")]
pub(crate) struct DestinationError(pub String);

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct DestinationConf {
    pub bucket: String,
    pub prefix: String,
    pub region: Option<String>,
    pub endpoint: Option<String>,
    /// The text as given, normalised (what is stored and returned).
    pub uri: String,
}

fn bad(message: String) -> DestinationError {
    DestinationError(message)
}

impl DestinationConf {
    /// The bucket and prefix to build a store for.
    pub(crate) fn location(&self) -> edgecap_storage::s3::S3Location {
        edgecap_storage::s3::S3Location {
            bucket: self.bucket.clone(),
            prefix: self.prefix.clone(),
            region: self.region.clone(),
            endpoint: self.endpoint.clone(),
        }
    }

    pub(crate) fn parse(text: &str) -> Result<Self, DestinationError> {
        let rest = text.strip_prefix("s3://").ok_or_else(|| {
            bad(format!("must be an s3://bucket/prefix URI (gs:// and r2:// are not supported here), got {text:?}"))
        })?;
        let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (bucket, prefix) = path.split_once('/').unwrap_or((path, ""));
        let bucket_ok = (3..=63).contains(&bucket.len())
            && bucket.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
            && bucket.as_bytes()[0].is_ascii_alphanumeric()
            && bucket.as_bytes()[bucket.len() - 1].is_ascii_alphanumeric();
        if !bucket_ok {
            return Err(bad(format!("bucket name {bucket:?} is not a valid S3 bucket name")));
        }
        let prefix = prefix.trim_end_matches('/');
        if prefix.len() > 512
            || prefix.split('/').any(|s| s == ".." || s == ".")
            || prefix.contains("//")
            || prefix.chars().any(|c| c.is_control())
        {
            return Err(bad(format!("prefix {prefix:?} is not a valid object key prefix")));
        }
        let mut region = None;
        let mut endpoint = None;
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            match k {
                "region" => {
                    if v.is_empty() || v.len() > 64 || !v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
                        return Err(bad(format!("region {v:?} is not a valid region name")));
                    }
                    region = Some(v.to_string());
                }
                "endpoint" => {
                    let ok = (v.starts_with("http://") || v.starts_with("https://"))
                        && v.len() <= 256
                        && !v.chars().any(|c| c.is_whitespace() || c.is_control());
                    if !ok {
                        return Err(bad(format!("endpoint {v:?} must be an http:// or https:// URL")));
                    }
                    endpoint = Some(v.to_string());
                }
                other => {
                    return Err(bad(format!(
                        "unknown parameter {other:?} (known: region, endpoint; credentials are configured on the coordinator, never in the URI)"
                    )));
                }
            }
        }
        let mut uri = format!("s3://{bucket}");
        if !prefix.is_empty() {
            uri.push('/');
            uri.push_str(prefix);
        }
        let params: Vec<String> = [("region", &region), ("endpoint", &endpoint)]
            .iter()
            .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={v}")))
            .collect();
        if !params.is_empty() {
            uri.push('?');
            uri.push_str(&params.join("&"));
        }
        Ok(Self { bucket: bucket.to_string(), prefix: prefix.to_string(), region, endpoint, uri })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_normalises() {
        let d = DestinationConf::parse("s3://my-bucket/some/prefix/?region=us-east-1&endpoint=http://127.0.0.1:9014")
            .unwrap();
        assert_eq!(d.bucket, "my-bucket");
        assert_eq!(d.prefix, "some/prefix");
        assert_eq!(d.region.as_deref(), Some("us-east-1"));
        assert_eq!(d.uri, "s3://my-bucket/some/prefix?region=us-east-1&endpoint=http://127.0.0.1:9014");
        assert_eq!(DestinationConf::parse("s3://abc").unwrap().uri, "s3://abc");
    }

    #[test]
    fn refuses_bad_uris() {
        for bad in [
            "",
            "http://bucket",
            "s3://",
            "s3://AB",
            "s3://Upper",
            "s3://ok-bucket/../x",
            "s3://ok-bucket?access_key=AKIA",
            "s3://ok-bucket?region=us east",
            "s3://ok-bucket?endpoint=ftp://x",
            "r2://bucket",
        ] {
            let e = DestinationConf::parse(bad).unwrap_err();
            assert!(e.to_string().starts_with("destination_conf:"), "{bad}: {e}");
        }
    }
}
