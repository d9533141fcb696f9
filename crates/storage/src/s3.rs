//! S3 and S3-compatible stores through `aws-sdk-s3`.
//!
//! One [`S3Store`] is one bucket and key prefix (a full capture's `destination_conf`). Keys
//! given to the [`ObjectStore`] methods are relative to the prefix. Large files are uploaded
//! in parts ([`MULTIPART_THRESHOLD`], [`PART_SIZE`]); a failed multipart upload is aborted so
//! no half object is ever visible.
//!
//! Credentials: per bucket from the coordinator's configuration ([`StaticCredentials`]), or
//! else the standard AWS chain (environment, profiles, web identity, instance roles). They
//! are never formatted: `Debug` of [`StaticCredentials`] is redacted and SDK errors carry no
//! secrets.
//!
//! An object whose size is known before its first byte
//! ([`ObjectStore::put_stream_sized`], a merged classic pcap file) goes up as one streamed
//! `PutObject` of up to [`SINGLE_PUT_MAX`], its CRC32C sent as a trailer.
//!
//! The coordinator's own multipart uploads (merged files, large files) carry each part's
//! CRC32C, which the bucket verifies, and leave the payload out of the request signature when
//! the endpoint is HTTPS or on loopback ([`payload_signing`]): the transport already protects
//! the bytes there, and signing means a SHA-256 of every byte on both ends.
//!
//! Agents never hold credentials: the coordinator hands them presigned requests
//! ([`S3Store::presign_put`], [`S3Store::presign_part`]) for exactly the objects of one
//! capture, valid for minutes.

use std::fmt;
use std::path::Path;
use std::time::Duration;

use aws_sdk_s3::Client;
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{
    BehaviorVersion, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use bytes::Bytes;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::{ObjectMeta, ObjectReader, ObjectStore, Result, StorageError, validate_key};

/// Files larger than this are uploaded in parts.
pub const MULTIPART_THRESHOLD: u64 = 16 << 20;
/// Part size of multipart uploads (S3's minimum is 5 MiB for all but the last part).
pub const PART_SIZE: u64 = 8 << 20;
/// Parts of one [`ObjectStore::put_stream`] uploaded at the same time.
pub const PARTS_AT_ONCE: usize = 4;
/// The largest object [`ObjectStore::put_stream_sized`] sends as one `PutObject` (S3's own
/// limit for one request); larger ones go up in parts.
pub const SINGLE_PUT_MAX: u64 = 5 << 30;

/// Where: a bucket, a key prefix inside it, and how to reach it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct S3Location {
    /// The bucket's name.
    pub bucket: String,
    /// Without leading or trailing `/`; may be empty.
    pub prefix: String,
    /// The bucket's region; `None` means `us-east-1`.
    pub region: Option<String>,
    /// For S3-compatible stores (`http://127.0.0.1:9014`): path-style addressing is used.
    pub endpoint: Option<String>,
}

/// An access key for one bucket, from the coordinator's configuration.
#[derive(Clone, Deserialize)]
pub struct StaticCredentials {
    /// The access key id.
    pub access_key_id: String,
    /// The secret that goes with it; never formatted.
    pub secret_access_key: String,
    /// Session token of temporary (STS) credentials; absent for long-lived keys.
    #[serde(default)]
    pub session_token: Option<String>,
}

impl fmt::Debug for StaticCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StaticCredentials").field("access_key_id", &"<redacted>").finish_non_exhaustive()
    }
}

/// A presigned HTTP request: what an agent sends, with no credentials of its own.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Presigned {
    /// The HTTP method (`PUT` for everything this crate presigns).
    pub method: String,
    /// The full URL, signature in the query string. Whoever holds it can make the request
    /// until it expires: treat it as a secret.
    pub url: String,
    /// Headers that are part of the signature and must be sent as they are.
    pub headers: Vec<(String, String)>,
}

/// The S3 [`ObjectStore`]: one bucket and key prefix ([`S3Location`]). Clones share one
/// client.
///
/// Besides the trait, it drives the presigned path: presigned PUTs of whole objects and of
/// multipart parts for agents, and the multipart calls around them. Each request gets up to
/// three attempts (the SDK's standard retry), with a 5 s connect and 60 s read timeout.
/// Errors are classified: unreachable, timed out, throttled or 5xx is
/// [`StorageError::Unavailable`]; a missing object is [`StorageError::NotFound`]; any other
/// refusal is [`StorageError::Rejected`]. `Debug` shows only the location.
#[derive(Clone)]
pub struct S3Store {
    client: Client,
    location: S3Location,
    /// Whether upload bodies are part of the request signature ([`payload_signing`]).
    sign_payload: bool,
}

/// Whether the coordinator's uploads to `endpoint` sign their payload (SigV4's SHA-256 of the
/// body). Not over HTTPS (AWS itself, when no endpoint is given), where TLS protects the
/// bytes, nor to a loopback address, which no network sits between: the AWS SDKs make the
/// same choice for HTTPS. Elsewhere (plain HTTP across a network) the signature is what keeps
/// a body from being changed on the way, and it stays. Either way each part carries a CRC32C
/// that the bucket checks.
pub fn payload_signing(endpoint: Option<&str>) -> bool {
    if over_https(endpoint) {
        return false;
    }
    // (An endpoint that is not a URL keeps the signature; the SDK will refuse it anyway.)
    let Some(Ok(uri)) = endpoint.map(str::parse::<http::Uri>) else { return true };
    let host = uri.host().unwrap_or("").trim_start_matches('[').trim_end_matches(']');
    let loopback =
        host.eq_ignore_ascii_case("localhost") || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
    !loopback
}

/// Whether requests to `endpoint` go over HTTPS (AWS itself when none is given).
fn over_https(endpoint: Option<&str>) -> bool {
    endpoint.is_none_or(|e| e.parse::<http::Uri>().is_ok_and(|uri| uri.scheme() == Some(&http::uri::Scheme::HTTPS)))
}

/// The CRC32C of `data`, in S3's form.
fn crc32c(data: &[u8]) -> String {
    edgecap_common::crc32c_text(crc_fast::checksum(crc_fast::CrcAlgorithm::Crc32Iscsi, data) as u32)
}

impl fmt::Debug for S3Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Store").field("location", &self.location).finish_non_exhaustive()
    }
}

/// Turns an SDK error into a storage error: unreachable, timed out, throttled or 5xx are
/// retryable (`Unavailable`); anything else the store refused (`Rejected`).
fn classify<E>(what: &str, error: SdkError<E, aws_sdk_s3::config::http::HttpResponse>) -> StorageError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    // The error and its causes, without the SDK's Debug dump (which repeats raw responses).
    let mut detail = error.to_string();
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        let text = cause.to_string();
        if !detail.contains(&text) {
            detail.push_str(": ");
            detail.push_str(&text);
        }
        source = cause.source();
    }
    match &error {
        SdkError::ServiceError(service) => {
            let status = service.raw().status().as_u16();
            let code = error.code().unwrap_or("").to_string();
            let message = error.message().unwrap_or("").to_string();
            if status >= 500 || status == 429 || code == "SlowDown" || code == "RequestTimeout" {
                StorageError::Unavailable(format!("{what}: HTTP {status} {code} {message}").trim_end().to_string())
            } else if code == "NoSuchKey" || (status == 404 && code != "NoSuchBucket" && code != "NoSuchUpload") {
                StorageError::NotFound(what.to_string())
            } else {
                StorageError::Rejected(format!("{what}: HTTP {status} {code} {message}").trim_end().to_string())
            }
        }
        SdkError::ConstructionFailure(_) => StorageError::Rejected(format!("{what}: {detail}")),
        _ => StorageError::Unavailable(format!("{what}: {detail}")),
    }
}

/// The AWS credential chain, in the SDK's default order, with the instance-metadata provider
/// only when asked for.
fn credential_chain(
    region: Region,
    instance_metadata: bool,
) -> aws_config::meta::credentials::CredentialsProviderChain {
    use aws_config::meta::credentials::CredentialsProviderChain;
    let config = aws_config::provider_config::ProviderConfig::default().with_region(Some(region));
    let chain = CredentialsProviderChain::first_try(
        "Environment",
        aws_config::environment::credentials::EnvironmentVariableCredentialsProvider::new(),
    )
    .or_else("Profile", aws_config::profile::ProfileFileCredentialsProvider::builder().configure(&config).build())
    .or_else(
        "WebIdentityToken",
        aws_config::web_identity_token::WebIdentityTokenCredentialsProvider::builder().configure(&config).build(),
    )
    .or_else("EcsContainer", aws_config::ecs::EcsCredentialsProvider::builder().configure(&config).build());
    if instance_metadata {
        chain.or_else(
            "Ec2InstanceMetadata",
            aws_config::imds::credentials::ImdsCredentialsProvider::builder().configure(&config).build(),
        )
    } else {
        chain
    }
}

impl S3Store {
    /// Builds a client for `location`. No request is sent: an unreachable store shows on
    /// first use, as `Unavailable`.
    ///
    /// Without `credentials`, the AWS chain is used: environment variables, the shared config
    /// and credentials files, web identity tokens, container (ECS) credentials, and, only
    /// when `instance_metadata` is true, the EC2 instance-metadata service (169.254.169.254).
    /// It is off by default so that nothing probes a link-local address on machines that are
    /// not cloud instances, or on instances where the coordinator should not use the role.
    pub async fn connect(
        location: S3Location,
        credentials: Option<StaticCredentials>,
        instance_metadata: bool,
    ) -> Result<Self> {
        let region = Region::new(location.region.clone().unwrap_or_else(|| "us-east-1".to_string()));
        let mut builder = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(region.clone())
            // No checksum is computed for a request unless the caller gives one: a presigned
            // request carries only the CRC32C the agent sent with its grant request (from the
            // shard's manifest), which the bucket then verifies.
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
            .retry_config(RetryConfig::standard().with_max_attempts(3))
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(5))
                    .read_timeout(Duration::from_secs(60))
                    .build(),
            );
        if let Some(endpoint) = &location.endpoint {
            builder = builder.endpoint_url(endpoint).force_path_style(true);
        }
        builder = match credentials {
            Some(c) => builder.credentials_provider(Credentials::new(
                c.access_key_id,
                c.secret_access_key,
                c.session_token,
                None,
                "edgecap-coordinator-config",
            )),
            None => builder.credentials_provider(credential_chain(region, instance_metadata)),
        };
        let sign_payload = payload_signing(location.endpoint.as_deref());
        Ok(Self { client: Client::from_conf(builder.build()), location, sign_payload })
    }

    /// Overrides the choice [`payload_signing`] made from the endpoint: `true` signs every
    /// upload's body, `false` none.
    pub fn with_payload_signing(mut self, sign: bool) -> Self {
        self.sign_payload = sign;
        self
    }

    /// The bucket, prefix, region and endpoint this store was built for.
    pub fn location(&self) -> &S3Location {
        &self.location
    }

    /// The object key in the bucket for a store-relative key.
    pub fn object_key(&self, key: &str) -> Result<String> {
        validate_key(key)?;
        Ok(if self.location.prefix.is_empty() { key.to_string() } else { format!("{}/{key}", self.location.prefix) })
    }

    fn what(&self, op: &str, key: &str) -> String {
        format!("{op} s3://{}/{key}", self.location.bucket)
    }

    /// A presigned PUT of one whole object. With `crc32c` (S3's base64 form) the request
    /// carries it as a signed `x-amz-checksum-crc32c` header, and the bucket refuses a body
    /// whose CRC32C differs (`BadDigest`).
    pub async fn presign_put(&self, key: &str, expires: Duration, crc32c: Option<&str>) -> Result<Presigned> {
        let object = self.object_key(key)?;
        let config = PresigningConfig::expires_in(expires).map_err(|e| StorageError::Rejected(e.to_string()))?;
        let request = self
            .client
            .put_object()
            .bucket(&self.location.bucket)
            .key(&object)
            .set_checksum_crc32_c(crc32c.map(str::to_string))
            .presigned(config)
            .await
            .map_err(|e| classify(&self.what("presign put", &object), e))?;
        Ok(presigned(&request))
    }

    /// Starts a multipart upload; returns its upload id. `crc32c`: every part will carry its
    /// CRC32C ([`Self::presign_part`], [`Self::complete_multipart`]), and the bucket keeps the
    /// object's composite checksum.
    pub async fn create_multipart(&self, key: &str, crc32c: bool) -> Result<String> {
        let object = self.object_key(key)?;
        let out = self
            .client
            .create_multipart_upload()
            .bucket(&self.location.bucket)
            .key(&object)
            .set_checksum_algorithm(crc32c.then_some(aws_sdk_s3::types::ChecksumAlgorithm::Crc32C))
            .send()
            .await
            .map_err(|e| classify(&self.what("create multipart upload", &object), e))?;
        out.upload_id.ok_or_else(|| {
            StorageError::Rejected(format!("{}: no upload id", self.what("create multipart upload", &object)))
        })
    }

    /// A presigned PUT of part `part` (1-based) of a multipart upload; with the part's
    /// `crc32c` as a signed header, as [`Self::presign_put`].
    pub async fn presign_part(
        &self,
        key: &str,
        upload_id: &str,
        part: i32,
        expires: Duration,
        crc32c: Option<&str>,
    ) -> Result<Presigned> {
        let object = self.object_key(key)?;
        let config = PresigningConfig::expires_in(expires).map_err(|e| StorageError::Rejected(e.to_string()))?;
        let request = self
            .client
            .upload_part()
            .bucket(&self.location.bucket)
            .key(&object)
            .upload_id(upload_id)
            .part_number(part)
            .set_checksum_crc32_c(crc32c.map(str::to_string))
            .presigned(config)
            .await
            .map_err(|e| classify(&self.what("presign upload part", &object), e))?;
        Ok(presigned(&request))
    }

    /// Completes a multipart upload from `(part number, ETag)` pairs, and each part's CRC32C
    /// when the upload was created with them (`part_crc32c`, in part order; else empty).
    pub async fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[(i32, String)],
        part_crc32c: &[String],
    ) -> Result<()> {
        let object = self.object_key(key)?;
        let parts = parts
            .iter()
            .enumerate()
            .map(|(i, (n, etag))| {
                CompletedPart::builder()
                    .part_number(*n)
                    .e_tag(etag)
                    .set_checksum_crc32_c(part_crc32c.get(i).cloned())
                    .build()
            })
            .collect::<Vec<_>>();
        self.client
            .complete_multipart_upload()
            .bucket(&self.location.bucket)
            .key(&object)
            .upload_id(upload_id)
            .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(parts)).build())
            .send()
            .await
            .map_err(|e| classify(&self.what("complete multipart upload", &object), e))?;
        Ok(())
    }

    /// Aborts a multipart upload: its parts are discarded and no object is created. An
    /// upload the bucket no longer knows (completed or already aborted: S3's `NoSuchUpload`)
    /// is `Ok`, as what the abort was for is done; a refusal (access denied) is
    /// [`StorageError::Rejected`].
    pub async fn abort_multipart(&self, key: &str, upload_id: &str) -> Result<()> {
        let object = self.object_key(key)?;
        let aborted = self
            .client
            .abort_multipart_upload()
            .bucket(&self.location.bucket)
            .key(&object)
            .upload_id(upload_id)
            .send()
            .await;
        match aborted {
            // Already completed or aborted: what an abort is for is done.
            Err(e) if e.code() == Some("NoSuchUpload") => Ok(()),
            Err(e) => Err(classify(&self.what("abort multipart upload", &object), e)),
            Ok(_) => Ok(()),
        }
    }

    /// Creates the bucket (for tests and `edgecap up` against a local S3-compatible server).
    pub async fn create_bucket(&self) -> Result<()> {
        match self.client.create_bucket().bucket(&self.location.bucket).send().await {
            Ok(_) => Ok(()),
            Err(e) if matches!(e.code(), Some("BucketAlreadyOwnedByYou" | "BucketAlreadyExists")) => Ok(()),
            Err(e) => Err(classify(&format!("create bucket {}", self.location.bucket), e)),
        }
    }

    /// Uploads part `number` of a multipart upload created with CRC32C, with the CRC32C of
    /// `body` (computed off the async workers), which the bucket checks. Returns the part's
    /// ETag and CRC32C.
    async fn upload_part(&self, object: &str, upload_id: &str, number: i32, body: Bytes) -> Result<(String, String)> {
        let (body, crc) = tokio::task::spawn_blocking(move || {
            let crc = crc32c(&body);
            (body, crc)
        })
        .await
        .map_err(|e| StorageError::Io(std::io::Error::other(e.to_string())))?;
        let request = self
            .client
            .upload_part()
            .bucket(&self.location.bucket)
            .key(object)
            .upload_id(upload_id)
            .part_number(number)
            .checksum_crc32_c(crc.clone())
            .body(ByteStream::from(body))
            .customize();
        let request = if self.sign_payload { request } else { request.disable_payload_signing() };
        let out = request.send().await.map_err(|e| classify(&self.what("upload part", object), e))?;
        Ok((out.e_tag.unwrap_or_default(), crc))
    }

    /// Uploads a file in parts through the same calls the presigned path uses (create,
    /// parts, complete); a failed upload is aborted.
    async fn put_multipart(&self, key: &str, path: &Path, size: u64, cancel: &CancellationToken) -> Result<()> {
        let object = self.object_key(key)?;
        let upload_id = self.create_multipart(key, true).await?;
        let upload = async {
            let mut parts = Vec::new();
            let mut crcs = Vec::new();
            let mut offset = 0u64;
            let mut number = 1i32;
            while offset < size {
                let length = PART_SIZE.min(size - offset);
                // Read once, into memory: the bytes checksummed are the bytes sent.
                let body = read_range(path, offset, length).await?;
                let (etag, crc) = self.upload_part(&object, &upload_id, number, body).await?;
                parts.push((number, etag));
                crcs.push(crc);
                offset += length;
                number += 1;
            }
            self.complete_multipart(key, &upload_id, &parts, &crcs).await
        };
        let result = tokio::select! {
            biased;
            _ = cancel.cancelled() => Err(StorageError::Cancelled),
            uploaded = upload => uploaded,
        };
        if result.is_err() {
            // Best effort: an abandoned upload holds storage until a lifecycle rule clears it.
            let _ = self.abort_multipart(key, &upload_id).await;
        }
        result
    }
}

/// `length` bytes of the file at `path` from `offset`; a file that ends sooner is an error.
async fn read_range(path: &Path, offset: u64, length: u64) -> Result<Bytes> {
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    let mut file = tokio::fs::File::open(path).await?;
    file.seek(std::io::SeekFrom::Start(offset)).await?;
    let mut buf = vec![0u8; usize::try_from(length).map_err(std::io::Error::other)?];
    file.read_exact(&mut buf).await?;
    Ok(Bytes::from(buf))
}

fn presigned(request: &aws_sdk_s3::presigning::PresignedRequest) -> Presigned {
    Presigned {
        method: request.method().to_string(),
        url: request.uri().to_string(),
        headers: request.headers().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
    }
}

#[async_trait::async_trait]
impl ObjectStore for S3Store {
    async fn put_stream(
        &self,
        key: &str,
        mut pieces: tokio::sync::mpsc::Receiver<crate::Piece>,
        cancel: &CancellationToken,
    ) -> Result<u64> {
        let object = self.object_key(key)?;
        let upload_id = tokio::select! {
            biased;
            _ = cancel.cancelled() => return Err(StorageError::Cancelled),
            created = self.create_multipart(key, true) => created?,
        };
        // Some(size): completed; None: nothing came but the end (no part: an empty object).
        // Parts go up side by side, up to PARTS_AT_ONCE, while the next ones are produced.
        let upload = async {
            use futures::StreamExt as _;
            let mut parts = Vec::new();
            let mut sending = futures::stream::FuturesUnordered::new();
            let (mut size, mut number, mut ended) = (0u64, 0i32, false);
            while !ended || !sending.is_empty() {
                tokio::select! {
                    piece = pieces.recv(), if !ended && sending.len() < PARTS_AT_ONCE => {
                        match crate::piece_bytes(piece, &object)? {
                            Some(body) if body.is_empty() => {}
                            Some(body) => {
                                size += body.len() as u64;
                                number += 1;
                                let n = number;
                                let part = self.upload_part(&object, &upload_id, n, body);
                                sending.push(async move { part.await.map(|(etag, crc)| (n, etag, crc)) });
                            }
                            None => ended = true,
                        }
                    }
                    Some(sent) = sending.next(), if !sending.is_empty() => parts.push(sent?),
                }
            }
            if parts.is_empty() {
                return Ok(None);
            }
            parts.sort_unstable_by_key(|p: &(i32, String, String)| p.0);
            let (parts, crcs): (Vec<_>, Vec<_>) = parts.into_iter().map(|(n, etag, crc)| ((n, etag), crc)).unzip();
            self.complete_multipart(key, &upload_id, &parts, &crcs).await?;
            Ok(Some(size))
        };
        let result = tokio::select! {
            biased;
            _ = cancel.cancelled() => Err(StorageError::Cancelled),
            uploaded = upload => uploaded,
        };
        match result {
            Ok(Some(size)) => Ok(size),
            Ok(None) => {
                let _ = self.abort_multipart(key, &upload_id).await;
                tokio::select! {
                    biased;
                    _ = cancel.cancelled() => Err(StorageError::Cancelled),
                    put = self.put(key, Bytes::new()) => put.map(|()| 0),
                }
            }
            Err(e) => {
                // Best effort: an abandoned upload holds storage until a lifecycle rule clears it.
                let _ = self.abort_multipart(key, &upload_id).await;
                Err(e)
            }
        }
    }

    /// One streamed `PutObject` of exactly `size` bytes. Over HTTPS it carries a CRC32C that
    /// the SDK computes as the bytes go and sends as a trailer, which the bucket checks; to a
    /// plain `http://` endpoint (unsigned only on loopback: the bytes never cross a network)
    /// none, as the SDK would sign every chunk of a trailer-carrying body there. No read
    /// timeout: the answer comes after the last byte, however long the merge takes; the SDK's
    /// stalled-upload protection (under 1 byte/s for 20 s) still ends a request nobody reads.
    /// Multipart (`put_stream`, checked) when the payload is signed (a signature needs the
    /// whole body first) or the object is larger than one request may be.
    async fn put_stream_sized(
        &self,
        key: &str,
        size: u64,
        pieces: tokio::sync::mpsc::Receiver<crate::Piece>,
        cancel: &CancellationToken,
    ) -> Result<u64> {
        if self.sign_payload || size > SINGLE_PUT_MAX {
            return crate::sized::through_put_stream(self, key, size, pieces, cancel).await;
        }
        let object = self.object_key(key)?;
        let (body, failure) = crate::sized::SizedBody::new(key, size, pieces);
        let https = over_https(self.location.endpoint.as_deref());
        // The client computes checksums only when asked for one: this request asks over HTTPS.
        let checksums =
            if https { RequestChecksumCalculation::WhenSupported } else { RequestChecksumCalculation::WhenRequired };
        let timeouts = TimeoutConfig::builder().connect_timeout(Duration::from_secs(5)).disable_read_timeout().build();
        let sent = self
            .client
            .put_object()
            .bucket(&self.location.bucket)
            .key(&object)
            .content_length(i64::try_from(size).unwrap_or(i64::MAX))
            .set_checksum_algorithm(https.then_some(aws_sdk_s3::types::ChecksumAlgorithm::Crc32C))
            .body(ByteStream::from_body_1_x(body))
            .customize()
            .config_override(
                aws_sdk_s3::Config::builder().request_checksum_calculation(checksums).timeout_config(timeouts),
            )
            .disable_payload_signing()
            .send();
        // Dropping the request on a cancel cuts it short of its length: nothing is committed.
        let result = tokio::select! {
            biased;
            _ = cancel.cancelled() => return Err(StorageError::Cancelled),
            sent = sent => sent,
        };
        // The body's own failure (the pieces) is the cause of whatever the request reports.
        if let Some(error) = edgecap_common::lock(&failure).take() {
            return Err(error);
        }
        result.map_err(|e| classify(&self.what("put", &object), e))?;
        Ok(size)
    }

    async fn put(&self, key: &str, body: Bytes) -> Result<()> {
        let object = self.object_key(key)?;
        self.client
            .put_object()
            .bucket(&self.location.bucket)
            .key(&object)
            .body(ByteStream::from(body))
            .send()
            .await
            .map_err(|e| classify(&self.what("put", &object), e))?;
        Ok(())
    }

    async fn put_file(&self, key: &str, path: &Path, cancel: &CancellationToken) -> Result<u64> {
        let object = self.object_key(key)?;
        let size = tokio::fs::metadata(path).await?.len();
        if size > MULTIPART_THRESHOLD {
            self.put_multipart(key, path, size, cancel).await?;
        } else {
            let body = ByteStream::from_path(path)
                .await
                .map_err(|e| StorageError::Io(std::io::Error::other(e.to_string())))?;
            let put = self.client.put_object().bucket(&self.location.bucket).key(&object).body(body).send();
            // A single PUT either lands whole or not at all: nothing to clean up on cancel.
            tokio::select! {
                biased;
                _ = cancel.cancelled() => return Err(StorageError::Cancelled),
                put = put => { put.map_err(|e| classify(&self.what("put", &object), e))?; }
            }
        }
        Ok(size)
    }

    async fn get(&self, key: &str) -> Result<(ObjectMeta, ObjectReader)> {
        let object = self.object_key(key)?;
        let out =
            self.client.get_object().bucket(&self.location.bucket).key(&object).send().await.map_err(
                |e| match classify(&self.what("get", &object), e) {
                    StorageError::NotFound(_) => StorageError::NotFound(key.to_string()),
                    other => other,
                },
            )?;
        let size = out.content_length.unwrap_or(0).max(0) as u64;
        Ok((ObjectMeta { key: key.to_string(), size }, Box::pin(out.body.into_async_read())))
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>> {
        let object = self.object_key(key)?;
        match self.client.head_object().bucket(&self.location.bucket).key(&object).send().await {
            Ok(out) => {
                Ok(Some(ObjectMeta { key: key.to_string(), size: out.content_length.unwrap_or(0).max(0) as u64 }))
            }
            Err(e) => match classify(&self.what("head", &object), e) {
                StorageError::NotFound(_) => Ok(None),
                other => Err(other),
            },
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        let base = if self.location.prefix.is_empty() { String::new() } else { format!("{}/", self.location.prefix) };
        let full = format!("{base}{prefix}");
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = self
                .client
                .list_objects_v2()
                .bucket(&self.location.bucket)
                .prefix(&full)
                .set_continuation_token(token.take())
                .send()
                .await
                .map_err(|e| classify(&self.what("list", &full), e))?;
            for object in page.contents.unwrap_or_default() {
                let Some(key) = object.key else { continue };
                let Some(relative) = key.strip_prefix(&base) else { continue };
                out.push(ObjectMeta { key: relative.to_string(), size: object.size.unwrap_or(0).max(0) as u64 });
            }
            match page.next_continuation_token {
                Some(next) if page.is_truncated == Some(true) => token = Some(next),
                _ => break,
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    async fn delete(&self, key: &str) -> Result<()> {
        self.delete_object(&self.object_key(key)?).await
    }

    async fn delete_many(&self, keys: &[String]) -> Result<()> {
        let objects = keys.iter().map(|k| self.object_key(k)).collect::<Result<Vec<_>>>()?;
        // Every chunk is tried; the first failure is returned at the end.
        let mut first_error = None;
        for chunk in objects.chunks(DELETES_PER_REQUEST) {
            let outcome = match self.delete_objects(chunk).await {
                // Refused: a store without DeleteObjects (NotImplemented), one that wants
                // Content-MD5 where the SDK sends a CRC (MissingContentMD5, InvalidRequest),
                // or a key of the batch refused. One request per object, as before batches
                // (deleting an object already gone is not an error).
                Err(StorageError::Rejected(why)) => {
                    tracing::debug!(bucket = %self.location.bucket, %why, "DeleteObjects refused; deleting one by one");
                    self.delete_each(chunk).await
                }
                other => other,
            };
            if let Err(e) = outcome {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

impl S3Store {
    /// One `DeleteObjects` request (quiet: the answer lists only the keys not deleted).
    async fn delete_objects(&self, objects: &[String]) -> Result<()> {
        use aws_sdk_s3::types::{Delete, ObjectIdentifier};
        let rejected = |e: aws_sdk_s3::error::BuildError| StorageError::Rejected(format!("delete objects: {e}"));
        let ids = objects
            .iter()
            .map(|o| ObjectIdentifier::builder().key(o).build())
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(rejected)?;
        let delete = Delete::builder().set_objects(Some(ids)).quiet(true).build().map_err(rejected)?;
        let first = objects.first().map_or("", String::as_str);
        let what = format!("delete {} objects from s3://{} (first {first})", objects.len(), self.location.bucket);
        let answer =
            self.client.delete_objects().bucket(&self.location.bucket).delete(delete).send().await.map_err(|e| {
                // A store without the call answers 501 (`NotImplemented`, or a proxy's bare
                // 501), which is no outage: the caller deletes one by one.
                let status = e.raw_response().map(|r| r.status().as_u16());
                if e.code() == Some("NotImplemented") || status == Some(501) {
                    StorageError::Rejected(format!("{what}: HTTP 501 NotImplemented"))
                } else {
                    classify(&what, e)
                }
            })?;
        match answer.errors().first() {
            None => Ok(()),
            Some(error) => {
                let key = error.key().unwrap_or_default();
                let (code, message) = (error.code().unwrap_or_default(), error.message().unwrap_or_default());
                let detail = format!("{}: {code} {message}", self.what("delete", key));
                Err(match code {
                    "InternalError" | "SlowDown" | "ServiceUnavailable" => StorageError::Unavailable(detail),
                    _ => StorageError::Rejected(detail),
                })
            }
        }
    }

    /// One `DeleteObject` per object; every one is tried, the first failure returned.
    async fn delete_each(&self, objects: &[String]) -> Result<()> {
        let mut first_error = None;
        for object in objects {
            if let Err(e) = self.delete_object(object).await {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// One `DeleteObject` of `object` (already under the store's prefix).
    async fn delete_object(&self, object: &str) -> Result<()> {
        self.client
            .delete_object()
            .bucket(&self.location.bucket)
            .key(object)
            .send()
            .await
            .map_err(|e| classify(&self.what("delete", object), e))?;
        Ok(())
    }
}

/// Keys in one `DeleteObjects` request: S3's limit.
const DELETES_PER_REQUEST: usize = 1000;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_are_signed_only_over_plain_http_across_a_network() {
        for unsigned in [
            None,
            Some("https://s3.example.net"),
            Some("HTTPS://10.0.0.5:9000"),
            Some("http://127.0.0.1:9000"),
            Some("http://127.8.9.10"),
            Some("http://localhost:9000/"),
            Some("http://[::1]:9000"),
            Some("http://user@127.0.0.1:9000"),
        ] {
            assert!(!payload_signing(unsigned), "{unsigned:?}");
        }
        for signed in [
            "http://10.0.0.5:9000",
            "http://minio.internal:9000",
            "http://[2001:db8::1]:9000",
            "http://localhost.example.net",
            "http://127.0.0.1.example.net:80",
            // Not a URL: signed (the SDK refuses it anyway).
            "http://[::1",
        ] {
            assert!(payload_signing(Some(signed)), "{signed}");
        }
    }

    /// A store without `DeleteObjects` (it answers 501 `NotImplemented`, as S3 documents for
    /// calls a store lacks) gets one `DeleteObject` per key instead, and every key is deleted.
    /// The batch itself is checked against s3s-fs in tests/tests/s3_storage.rs; no server at
    /// hand lacks it, so this one is a few lines of HTTP/1.1.
    #[tokio::test]
    async fn a_store_without_batch_deletes_gets_one_delete_per_key() {
        use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel::<String>();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let seen_tx = seen_tx.clone();
                tokio::spawn(async move {
                    let mut socket = tokio::io::BufReader::new(socket);
                    loop {
                        let mut request = String::new();
                        if socket.read_line(&mut request).await.unwrap_or(0) == 0 {
                            return;
                        }
                        let mut length = 0usize;
                        loop {
                            let mut header = String::new();
                            socket.read_line(&mut header).await.unwrap();
                            if header.trim().is_empty() {
                                break;
                            }
                            if let Some((name, value)) = header.split_once(':')
                                && name.eq_ignore_ascii_case("content-length")
                            {
                                length = value.trim().parse().unwrap();
                            }
                        }
                        let mut body = vec![0; length];
                        socket.read_exact(&mut body).await.unwrap();
                        let line: Vec<&str> = request.split(' ').take(2).collect();
                        let line = line.join(" ");
                        let answer = if line.starts_with("POST /b-2/") {
                            // A proxy's bare 501, without S3's error document.
                            "HTTP/1.1 501 Not Implemented\r\ncontent-length: 0\r\n\r\n".to_string()
                        } else if line.starts_with("POST ") && line.contains("delete") {
                            let xml = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>NotImplemented</Code>\
                                       <Message>not here</Message></Error>";
                            format!(
                                "HTTP/1.1 501 Not Implemented\r\ncontent-type: application/xml\r\ncontent-length: {}\r\n\r\n{xml}",
                                xml.len()
                            )
                        } else if line.starts_with("DELETE ") {
                            "HTTP/1.1 204 No Content\r\n\r\n".to_string()
                        } else {
                            "HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n".to_string()
                        };
                        seen_tx.send(line).unwrap();
                        socket.get_mut().write_all(answer.as_bytes()).await.unwrap();
                    }
                });
            }
        });
        for bucket in ["b-1", "b-2"] {
            let location = S3Location {
                bucket: bucket.into(),
                prefix: "p".into(),
                region: Some("us-east-1".into()),
                endpoint: Some(endpoint.clone()),
            };
            let credentials =
                StaticCredentials { access_key_id: "k".into(), secret_access_key: "s".into(), session_token: None };
            let store = S3Store::connect(location, Some(credentials), false).await.unwrap();
            let keys: Vec<String> = ["a/1.pcap", "a/2.pcap", "b/3.pcap"].map(String::from).into();
            store.delete_many(&keys).await.unwrap();
            let mut requests = Vec::new();
            while let Ok(line) = seen.try_recv() {
                requests.push(line);
            }
            assert_eq!(requests.len(), 4, "{requests:?}");
            assert!(requests[0].starts_with(&format!("POST /{bucket}/?delete")), "{requests:?}");
            let each: Vec<String> = keys.iter().map(|k| format!("DELETE /{bucket}/p/{k}?x-id=DeleteObject")).collect();
            assert_eq!(requests[1..], each);
        }
    }

    #[test]
    fn crc32c_of_bytes_in_s3s_form() {
        assert_eq!(crc32c(b"Hello, World!"), "TVUQaA==");
    }

    /// Without credentials and without the instance-metadata opt-in, nothing asks
    /// 169.254.169.254: the chain ends in "no credentials", not in an IMDS error.
    #[tokio::test]
    async fn the_chain_does_not_ask_instance_metadata_unless_told_to() {
        if std::env::vars().any(|(k, _)| k.starts_with("AWS_")) {
            eprintln!("SKIP: AWS_* variables are set, the chain would use them");
            return;
        }
        let location = S3Location {
            bucket: "b-1".into(),
            prefix: String::new(),
            region: Some("us-east-1".into()),
            endpoint: Some("http://127.0.0.1:9".into()),
        };
        let store = S3Store::connect(location.clone(), None, false).await.unwrap();
        let error = store.presign_put("k", Duration::from_secs(60), None).await.unwrap_err().to_string();
        assert!(!error.contains("IMDS") && !error.to_lowercase().contains("instance"), "{error}");
        let with = S3Store::connect(location, None, true).await.unwrap();
        let error = with.presign_put("k", Duration::from_secs(60), None).await.unwrap_err().to_string();
        assert!(error.contains("IMDS") || error.contains("Ec2InstanceMetadata"), "the opt-in asks it: {error}");
    }
}
