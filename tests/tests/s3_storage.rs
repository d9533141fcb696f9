//! The S3 backend against a real S3-compatible server (s3s-fs, SigV4 verified) on loopback:
//! the object-store conformance suite, multipart uploads, presigned single and multipart
//! uploads sent by the agent's HTTP client (no credentials on the agent side), and clear
//! errors for a wrong secret, a missing bucket and a stopped server.

#![allow(clippy::unwrap_used, reason = "a test: a failed unwrap is a failed test")]

use std::sync::Arc;

use bytes::Bytes;
use edgecap_e2e::S3Server;
use edgecap_proto::agent::v1 as pb;
use edgecap_storage::s3::{PART_SIZE, S3Location, S3Store, StaticCredentials};
use edgecap_storage::{ObjectStore, StorageError};

fn creds(secret: &str) -> StaticCredentials {
    serde_json::from_value(serde_json::json!({"access_key_id": S3Server::ACCESS_KEY, "secret_access_key": secret}))
        .unwrap()
}

async fn store(s3: &S3Server, bucket: &str, prefix: &str, secret: &str) -> S3Store {
    let location = S3Location {
        bucket: bucket.into(),
        prefix: prefix.into(),
        region: Some("us-east-1".into()),
        endpoint: Some(s3.endpoint()),
    };
    S3Store::connect(location, Some(creds(secret)), false).await.unwrap()
}

fn to_pb(p: edgecap_storage::s3::Presigned) -> pb::PresignedRequest {
    pb::PresignedRequest {
        method: p.method,
        url: p.url,
        headers: p.headers.into_iter().map(|(name, value)| pb::HttpHeader { name, value }).collect(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_backend_conformance_multipart_presigned_and_errors() {
    let Some(mut s3) = S3Server::launch("s3_backend_conformance_multipart_presigned_and_errors") else { return };
    s3.create_bucket("conf-bucket");
    let store = store(&s3, "conf-bucket", "some/prefix", S3Server::SECRET_KEY).await;
    edgecap_storage::testsuite::run_conformance(Arc::new(store.clone())).await;

    // A file above the multipart threshold goes up in parts and comes back identical.
    let big: Vec<u8> = (0..(20u32 << 20)).map(|i| (i.wrapping_mul(2654435761) >> 24) as u8).collect();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.bin");
    std::fs::write(&path, &big).unwrap();
    assert_eq!(store.put_file("multi/big.bin", &path, &Default::default()).await.unwrap(), big.len() as u64);
    assert_eq!(std::fs::read(s3.object_path("conf-bucket", "some/prefix/multi/big.bin")).unwrap(), big);

    // The endpoint is on loopback, so uploads leave their body out of the signature; the same
    // uploads with it signed (as over plain HTTP across a network) arrive the same.
    let signed = store.clone().with_payload_signing(true);
    assert_eq!(signed.put_file("multi/signed.bin", &path, &Default::default()).await.unwrap(), big.len() as u64);
    assert_eq!(std::fs::read(s3.object_path("conf-bucket", "some/prefix/multi/signed.bin")).unwrap(), big);
    edgecap_storage::testsuite::run_conformance(Arc::new(signed)).await;

    // Presigned uploads, as an agent sends them: no credentials of its own.
    let http = edgecap_agent::http::HttpClient::new().unwrap();
    let put = store.presign_put("shards/one.pcap", std::time::Duration::from_secs(60), None).await.unwrap();
    assert!(put.url.contains("X-Amz-Signature"), "a presigned URL: {}", put.url.split('?').next().unwrap());
    http.send(&to_pb(put.clone()), Bytes::from_static(b"shard bytes")).await.unwrap();
    assert_eq!(std::fs::read(s3.object_path("conf-bucket", "some/prefix/shards/one.pcap")).unwrap(), b"shard bytes");

    // With the shard's CRC32C the bucket verifies the body: the right bytes are taken, other
    // bytes of the same length are refused (BadDigest; s3s-fs, unlike S3, may leave the
    // refused bytes in place, which the right upload below replaces).
    let body = b"shard bytes, checked";
    let dir_crc = tempfile::tempdir().unwrap();
    std::fs::write(dir_crc.path().join("f"), body).unwrap();
    let crc = edgecap_capture::shard::file_crc32c(&dir_crc.path().join("f")).unwrap();
    let checked = store.presign_put("shards/crc.pcap", std::time::Duration::from_secs(60), Some(&crc)).await.unwrap();
    assert!(
        checked.headers.iter().any(|(k, v)| k.eq_ignore_ascii_case("x-amz-checksum-crc32c") && *v == crc),
        "the agent is told to send the checksum: {:?}",
        checked.headers
    );
    let err =
        http.send(&to_pb(checked.clone()), Bytes::from_static(b"shard bytes, CHECKED")).await.unwrap_err().to_string();
    assert!(err.contains("BadDigest"), "{err}");
    // The header is signed: a request that drops or changes it is refused too.
    let mut stripped = to_pb(checked.clone());
    stripped.headers.retain(|h| !h.name.eq_ignore_ascii_case("x-amz-checksum-crc32c"));
    assert!(http.send(&stripped, Bytes::from_static(body)).await.is_err());
    http.send(&to_pb(checked), Bytes::from_static(body)).await.unwrap();
    assert_eq!(std::fs::read(s3.object_path("conf-bucket", "some/prefix/shards/crc.pcap")).unwrap(), body);
    // A tampered signature is refused by the server.
    let mut forged = put.clone();
    forged.url = forged.url.replace("shards/one.pcap", "shards/other.pcap");
    let err = http.send(&to_pb(forged), Bytes::from_static(b"x")).await.unwrap_err().to_string();
    assert!(err.contains("HTTP 403"), "{err}");

    // Multipart with each part's CRC32C (s3s-fs takes the checksums but does not verify
    // parts; S3 does). The manifest's part size is the grant's.
    assert_eq!(PART_SIZE, edgecap_capture::shard::CHECKSUM_PART_SIZE);
    let upload_id = store.create_multipart("shards/multi.pcap", true).await.unwrap();
    let mut etags = Vec::new();
    let mut crcs = Vec::new();
    for (i, chunk) in big.chunks(PART_SIZE as usize).enumerate() {
        let part_path = dir.path().join(format!("part{i}"));
        std::fs::write(&part_path, chunk).unwrap();
        let crc = edgecap_capture::shard::file_crc32c(&part_path).unwrap();
        let part = store
            .presign_part("shards/multi.pcap", &upload_id, i as i32 + 1, std::time::Duration::from_secs(60), Some(&crc))
            .await
            .unwrap();
        assert!(part.headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("x-amz-checksum-crc32c")));
        etags.push((i as i32 + 1, http.send(&to_pb(part), Bytes::copy_from_slice(chunk)).await.unwrap()));
        crcs.push(crc);
    }
    assert_eq!(etags.len(), 3);
    store.complete_multipart("shards/multi.pcap", &upload_id, &etags, &crcs).await.unwrap();
    assert_eq!(std::fs::read(s3.object_path("conf-bucket", "some/prefix/shards/multi.pcap")).unwrap(), big);

    // Clear errors: a wrong secret is a refusal; a stopped server is
    // "unavailable" (retryable), and nothing about the credentials is in the message.
    let wrong = store_for_errors(&s3, "conf-bucket", "wrong-secret").await;
    match wrong.put("x", Bytes::new()).await {
        Err(StorageError::Rejected(m)) => {
            assert!(m.contains("403") || m.contains("Signature"), "{m}");
            assert!(!m.contains("wrong-secret") && !m.contains(S3Server::SECRET_KEY), "{m}");
        }
        other => panic!("wrong secret: {other:?}"),
    }
    // (A missing bucket is not checked here: s3s-fs creates it on the first put.)
    s3.stop();
    match store.put("x", Bytes::new()).await {
        Err(e @ StorageError::Unavailable(_)) => assert!(e.is_retryable()),
        other => panic!("stopped server: {other:?}"),
    }
    s3.start();
    store.put("after-restart", Bytes::from_static(b"ok")).await.unwrap();
}

async fn store_for_errors(s3: &S3Server, bucket: &str, secret: &str) -> S3Store {
    store(s3, bucket, "", secret).await
}
