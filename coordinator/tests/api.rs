//! The REST API through the real router (no sockets): validation of every field and body,
//! with the envelope, HTTP code, error code and the field named.

#![allow(clippy::unwrap_used, reason = "a test: a failed unwrap is a failed test")]

mod common;

use axum::http::StatusCode;
use common::*;
use edgecap_coordinator::{EndpointPolicy, FullSettings, RateLimits};
use serde_json::{Value, json};

/// (base, field, value or None to remove, status, code)
type Case = (&'static str, &'static str, Option<Value>, u16, u64);

fn cases() -> Vec<Case> {
    use edgecap_coordinator::code::*;
    let c = |base, field, value: Option<Value>, status, code| (base, field, value, status, code);
    let mut v = vec![
        // system
        c("simple", "system", None, 400, MISSING_FIELD as u64),
        c("simple", "system", Some(json!(1)), 400, WRONG_TYPE as u64),
        c("simple", "system", Some(json!("magic-wan")), 400, INVALID_VALUE as u64),
        c("simple", "system", Some(json!("magic-transit")), 200, 0),
        // type
        c("simple", "type", None, 400, MISSING_FIELD as u64),
        c("simple", "type", Some(json!(true)), 400, WRONG_TYPE as u64),
        c("simple", "type", Some(json!("sample")), 400, INVALID_VALUE as u64),
        // time_limit
        c("simple", "time_limit", None, 400, MISSING_FIELD as u64),
        c("simple", "time_limit", Some(json!("10")), 400, WRONG_TYPE as u64),
        c("simple", "time_limit", Some(json!(0)), 400, OUT_OF_RANGE as u64),
        c("simple", "time_limit", Some(json!(-5)), 400, OUT_OF_RANGE as u64),
        c("simple", "time_limit", Some(json!(301)), 400, OUT_OF_RANGE as u64),
        c("simple", "time_limit", Some(json!(10.5)), 400, INVALID_VALUE as u64),
        c("simple", "time_limit", Some(json!(300.0)), 200, 0),
        c("simple", "time_limit", Some(json!(1)), 200, 0),
        c("full", "time_limit", Some(json!(301)), 400, OUT_OF_RANGE as u64),
        // packet_limit
        c("simple", "packet_limit", None, 400, MISSING_FIELD as u64),
        c("simple", "packet_limit", Some(json!([1])), 400, WRONG_TYPE as u64),
        c("simple", "packet_limit", Some(json!(0)), 400, OUT_OF_RANGE as u64),
        c("simple", "packet_limit", Some(json!(10001)), 400, OUT_OF_RANGE as u64),
        c("simple", "packet_limit", Some(json!(10000)), 200, 0),
        c("simple", "packet_limit", Some(json!(1e4)), 200, 0),
        c("full", "packet_limit", Some(json!(10001)), 400, OUT_OF_RANGE as u64),
        // byte_limit
        c("simple", "byte_limit", Some(json!(100)), 400, NOT_APPLICABLE as u64),
        c("full", "byte_limit", Some(json!("1")), 400, WRONG_TYPE as u64),
        c("full", "byte_limit", Some(json!(0)), 400, OUT_OF_RANGE as u64),
        c("full", "byte_limit", Some(json!(1_000_000_001u64)), 400, OUT_OF_RANGE as u64),
        c("full", "byte_limit", Some(json!(1e6)), 403, BUCKET_NOT_VALIDATED as u64),
        // offset_time
        c("simple", "offset_time", Some(json!(5)), 400, WRONG_TYPE as u64),
        c("simple", "offset_time", Some(json!("yesterday")), 400, INVALID_VALUE as u64),
        c("simple", "offset_time", Some(json!("2001-01-01T00:00:00Z")), 400, OUT_OF_RANGE as u64),
        c("simple", "offset_time", Some(json!("2999-01-01T00:00:00Z")), 400, OUT_OF_RANGE as u64),
        c("full", "offset_time", Some(json!("2001-01-01T00:00:00Z")), 400, NOT_APPLICABLE as u64),
        // colo_name / destination_conf
        c("full", "colo_name", None, 400, MISSING_FIELD as u64),
        c("full", "colo_name", Some(json!(7)), 400, WRONG_TYPE as u64),
        c("full", "colo_name", Some(json!("ord 01; rm")), 400, INVALID_VALUE as u64),
        c("simple", "colo_name", Some(json!("ord01")), 400, NOT_APPLICABLE as u64),
        c("full", "destination_conf", None, 400, MISSING_FIELD as u64),
        c("full", "destination_conf", Some(json!({})), 400, WRONG_TYPE as u64),
        c("full", "destination_conf", Some(json!("gs://bucket")), 400, INVALID_VALUE as u64),
        c("full", "destination_conf", Some(json!("s3://b?secret=x")), 400, INVALID_VALUE as u64),
        c("simple", "destination_conf", Some(json!("s3://bucket")), 400, NOT_APPLICABLE as u64),
        // output_format (extension)
        c("full", "output_format", Some(json!(1)), 400, WRONG_TYPE as u64),
        c("full", "output_format", Some(json!("json")), 400, INVALID_VALUE as u64),
        c("simple", "output_format", Some(json!("pcapng")), 400, NOT_APPLICABLE as u64),
        c("full", "output_format", Some(json!("pcapng")), 403, BUCKET_NOT_VALIDATED as u64),
        // valid full captures still need a bucket validated for the account
        c("full", "colo_name", Some(json!("ord01")), 403, BUCKET_NOT_VALIDATED as u64),
        // filter_v1
        c("simple", "filter_v1", Some(json!("udp")), 400, WRONG_TYPE as u64),
        c("simple", "filter_v1", Some(json!({})), 200, 0),
        c("simple", "filter_v1", Some(Value::Null), 200, 0),
    ];
    let f = |field: &'static str, value: Value, status, code| {
        ("simple", field, Some(json!({ field.strip_prefix("filter_v1.").unwrap(): value })), status, code)
    };
    v.extend([
        f("filter_v1.source_address", json!(1), 400, WRONG_TYPE as u64),
        f("filter_v1.source_address", json!("10.0.0.300"), 400, INVALID_VALUE as u64),
        f("filter_v1.source_address", json!("1.2.3.4 or port 22"), 400, INVALID_VALUE as u64),
        f("filter_v1.source_address", json!("10.1.2.3/33"), 400, OUT_OF_RANGE as u64),
        f("filter_v1.source_address", json!("10.1.2.3/8"), 400, INVALID_VALUE as u64),
        f("filter_v1.source_address", json!("2001:db8::1"), 200, 0),
        f("filter_v1.destination_address", json!("$(reboot)"), 400, INVALID_VALUE as u64),
        f("filter_v1.destination_address", json!("10.0.0.0/8"), 200, 0),
        f("filter_v1.source_port", json!("80"), 400, WRONG_TYPE as u64),
        f("filter_v1.source_port", json!(-1), 400, OUT_OF_RANGE as u64),
        f("filter_v1.source_port", json!(70000), 400, OUT_OF_RANGE as u64),
        f("filter_v1.source_port", json!(0), 200, 0),
        f("filter_v1.destination_port", json!(65536), 400, OUT_OF_RANGE as u64),
        f("filter_v1.destination_port", json!(443.0), 200, 0),
        f("filter_v1.protocol", json!(300), 400, OUT_OF_RANGE as u64),
        f("filter_v1.protocol", json!(6.5), 400, INVALID_VALUE as u64),
        f("filter_v1.protocol", json!(null), 200, 0),
        f("filter_v1.protocol", json!(255), 200, 0),
        f("filter_v1.portz", json!(80), 400, UNKNOWN_FIELD as u64),
        // filter_bpf (extension): compiled by libpcap, bounded, never shell text
        c("simple", "filter_bpf", Some(json!(5)), 400, WRONG_TYPE as u64),
        c("simple", "filter_bpf", Some(json!("tcp port 80; rm -rf /")), 400, INVALID_VALUE as u64),
        c("simple", "filter_bpf", Some(json!("udp and (")), 400, INVALID_VALUE as u64),
        c("simple", "filter_bpf", Some(json!("x".repeat(5000))), 400, INVALID_VALUE as u64),
        c("simple", "filter_bpf", Some(json!("udp and dst port 53")), 200, 0),
    ]);
    v
}

#[tokio::test]
async fn every_field_is_validated_with_a_clear_error() {
    let api = api().await;
    let mut checked = 0;
    for (base, field, value, status, code) in cases() {
        let mut body = if base == "simple" { simple() } else { full() };
        let key = field.split('.').next().unwrap();
        match &value {
            None => {
                body.as_object_mut().unwrap().remove(key);
            }
            Some(v) => body[key] = v.clone(),
        }
        let case = format!("{base} {field}={value:?}");
        let (got_status, v) = api.create(&body).await;
        if status == 200 {
            assert_eq!(got_status, StatusCode::OK, "{case}: {v}");
            assert_eq!(v["success"], json!(true), "{case}");
            assert_eq!(v["errors"], json!([]), "{case}");
            let id = v["result"]["id"].as_str().unwrap();
            assert!(id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()), "{case}: id {id}");
            assert_eq!(v["result"]["status"], json!("pending"), "{case}");
        } else if status == 403 {
            // Valid, but the bucket has not been validated for this account.
            assert_error(got_status, &v, status, code, "destination_conf", &case);
        } else {
            assert_error(got_status, &v, status, code, field, &case);
        }
        checked += 1;
    }
    assert!(checked > 60, "the table covers every field ({checked} cases)");
}

#[tokio::test]
async fn mixed_address_families_and_portless_protocols_are_refused() {
    let api = api().await;
    let mut body = simple();
    body["filter_v1"] = json!({"source_address": "10.0.0.1", "destination_address": "::1"});
    let (s, v) = api.create(&body).await;
    assert_error(s, &v, 400, 1005, "source_address", "mixed families");
    body["filter_v1"] = json!({"protocol": 1, "destination_port": 53});
    let (s, v) = api.create(&body).await;
    assert_error(s, &v, 400, 1005, "protocol", "icmp with ports");
}

#[tokio::test]
async fn malformed_bodies() {
    let api = api().await;
    for (body, what) in [("", "empty"), ("{", "truncated"), ("[1,2]", "array"), ("null", "null"), ("\"x\"", "string")] {
        let (s, v) = api.call("POST", "/client/v4/accounts/acct-a/pcaps", Some(TOKEN_A), Some(body)).await;
        assert_error(s, &v, 400, 1001, "request body", what);
    }
    let (s, v) = api.call("POST", "/client/v4/accounts/acct-a/pcaps/ownership", Some(TOKEN_A), Some("{}")).await;
    assert_error(s, &v, 400, 1002, "destination_conf", "ownership without destination");
    let (s, v) = api
        .call(
            "POST",
            "/client/v4/accounts/acct-a/pcaps/ownership/validate",
            Some(TOKEN_A),
            Some(r#"{"destination_conf":"s3://bucket-1"}"#),
        )
        .await;
    assert_error(s, &v, 400, 1002, "ownership_challenge", "validate without challenge");
    let (s, v) = api
        .call(
            "POST",
            "/client/v4/accounts/acct-a/pcaps/ownership/validate",
            Some(TOKEN_A),
            Some(r#"{"destination_conf":"s3://bucket-1","ownership_challenge":"abc"}"#),
        )
        .await;
    assert_error(s, &v, 404, 1101, "destination_conf", "validate before create");
    // A bucket that cannot be reached: 503 naming the field, never a 500 (on a coordinator
    // that allows private endpoints, as `edgecap up` does).
    let permissive =
        FullSettings { endpoints: EndpointPolicy { allow_private: true, allowed: vec![] }, ..Default::default() };
    let api = api_configured(RateLimits::off(), permissive).await;
    let (s, v) = api
        .call(
            "POST",
            "/client/v4/accounts/acct-a/pcaps/ownership",
            Some(TOKEN_A),
            Some(r#"{"destination_conf":"s3://bucket-1?endpoint=http://127.0.0.1:1"}"#),
        )
        .await;
    assert_error(s, &v, 503, 1501, "destination_conf", "unreachable bucket");
}

#[tokio::test]
async fn destinations_on_internal_addresses_are_refused_without_calling_them() {
    let api = api().await;
    for endpoint in ["http://169.254.169.254", "http://127.0.0.1:9000", "http://10.0.0.7:9000", "http://localhost:1"] {
        let body = json!({"destination_conf": format!("s3://bucket-1/x?region=us-east-1&endpoint={endpoint}")});
        let (s, v) = api
            .call("POST", "/client/v4/accounts/acct-a/pcaps/ownership", Some(TOKEN_A), Some(&body.to_string()))
            .await;
        assert_error(s, &v, 400, 1005, "destination_conf", endpoint);
        assert!(v["errors"][0]["message"].as_str().unwrap().contains("internal address"), "{v}");
        let mut full = full();
        full["destination_conf"] = body["destination_conf"].clone();
        let (s, v) = api.create(&full).await;
        assert_error(s, &v, 400, 1005, "destination_conf", endpoint);
    }
}

#[tokio::test]
async fn filter_bpf_names_are_refused_before_any_lookup() {
    let api = api().await;
    for expr in ["host example.com", "udp and dst port domain", "net corp-lan", "len-14 > 0"] {
        let mut body = simple();
        body["filter_bpf"] = json!(expr);
        let (s, v) = api.create(&body).await;
        assert_error(s, &v, 400, 1005, "filter_bpf", expr);
        assert!(v["errors"][0]["message"].as_str().unwrap().contains("use numbers"), "{v}");
    }
    let mut body = simple();
    body["filter_bpf"] = json!("udp and dst port 53 and host 10.0.0.1");
    let (s, v) = api.create(&body).await;
    assert_eq!(s, StatusCode::OK, "{v}");
}
