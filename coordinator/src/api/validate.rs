//! Field-by-field validation of API request bodies, from raw JSON, so that each problem is
//! reported with the field's name: missing, wrong type, out of range, not applicable to the
//! capture type, or unknown (inside `filter_v1`, where a misspelt field would silently widen
//! a capture). Numbers may be integral floats (`300.0`, as the SDKs send); other floats are
//! refused.

use edgecap_capture::{FilterError, FilterV1, IpPrefix};
use serde_json::{Map, Value};
use time::OffsetDateTime;

use super::error::{ApiError, code};
use crate::config::Limits;
use crate::model::{CaptureRequest, CaptureType, DestinationConf, DestinationError, OutputFormat};

fn destination(text: &str) -> Result<DestinationConf, ApiError> {
    DestinationConf::parse(text)
        .map_err(|e: DestinationError| ApiError::bad_request(code::INVALID_VALUE, e.to_string()))
}

fn bad(code: u32, message: String) -> ApiError {
    ApiError::bad_request(code, message)
}

/// Parses the body as a JSON object.
pub(crate) fn parse_object(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(bad(code::INVALID_JSON, "request body: a JSON object is required".into()));
    }
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| bad(code::INVALID_JSON, format!("request body: invalid JSON: {e}")))?;
    match value {
        Value::Object(map) => Ok(map),
        other => Err(bad(code::INVALID_JSON, format!("request body: must be a JSON object, not {}", kind(&other)))),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A present, non-null field.
fn field<'a>(map: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    map.get(name).filter(|v| !v.is_null())
}

fn required<'a>(map: &'a Map<String, Value>, name: &str) -> Result<&'a Value, ApiError> {
    field(map, name).ok_or_else(|| bad(code::MISSING_FIELD, format!("{name}: required")))
}

pub(crate) fn string<'a>(name: &str, v: &'a Value) -> Result<&'a str, ApiError> {
    v.as_str().ok_or_else(|| bad(code::WRONG_TYPE, format!("{name}: must be a string, not {}", kind(v))))
}

/// A whole number within `min..=max` (integral floats accepted).
pub(crate) fn integer(name: &str, v: &Value, min: u64, max: u64) -> Result<u64, ApiError> {
    let Value::Number(n) = v else {
        return Err(bad(code::WRONG_TYPE, format!("{name}: must be a number, not {}", kind(v))));
    };
    let range = || bad(code::OUT_OF_RANGE, format!("{name}: must be between {min} and {max}, got {n}"));
    if let Some(u) = n.as_u64() {
        return if (min..=max).contains(&u) { Ok(u) } else { Err(range()) };
    }
    if n.as_i64().is_some() {
        return Err(range()); // negative
    }
    let f = n.as_f64().unwrap_or(f64::NAN);
    if !f.is_finite() || f.fract() != 0.0 {
        return Err(bad(code::INVALID_VALUE, format!("{name}: must be a whole number, got {n}")));
    }
    if f < min as f64 || f > max as f64 {
        return Err(range());
    }
    Ok(f as u64)
}

fn not_applicable(map: &Map<String, Value>, name: &str, capture_type: &str) -> Result<(), ApiError> {
    if field(map, name).is_some() {
        return Err(bad(code::NOT_APPLICABLE, format!("{name}: does not apply to {capture_type} captures")));
    }
    Ok(())
}

fn filter_error(e: FilterError) -> ApiError {
    let code = match e {
        FilterError::PrefixRange { .. } => code::OUT_OF_RANGE,
        _ => code::INVALID_VALUE,
    };
    bad(code, format!("filter_v1.{e}"))
}

/// Parses `filter_v1` (absent or null: match everything).
pub(crate) fn parse_filter(v: Option<&Value>) -> Result<FilterV1, ApiError> {
    let Some(v) = v.filter(|v| !v.is_null()) else { return Ok(FilterV1::default()) };
    let Value::Object(map) = v else {
        return Err(bad(code::WRONG_TYPE, format!("filter_v1: must be an object, not {}", kind(v))));
    };
    let mut filter = FilterV1::default();
    for (key, value) in map {
        if value.is_null() {
            continue;
        }
        match key.as_str() {
            "source_address" => {
                let text = string("filter_v1.source_address", value)?;
                filter.source_address = Some(IpPrefix::parse("source_address", text).map_err(filter_error)?);
            }
            "destination_address" => {
                let text = string("filter_v1.destination_address", value)?;
                filter.destination_address = Some(IpPrefix::parse("destination_address", text).map_err(filter_error)?);
            }
            "source_port" => filter.source_port = Some(integer("filter_v1.source_port", value, 0, 65535)? as u16),
            "destination_port" => {
                filter.destination_port = Some(integer("filter_v1.destination_port", value, 0, 65535)? as u16)
            }
            "protocol" => filter.protocol = Some(integer("filter_v1.protocol", value, 0, 255)? as u8),
            other => {
                return Err(bad(
                    code::UNKNOWN_FIELD,
                    format!(
                        "filter_v1.{other}: unknown field (known: source_address, destination_address, source_port, destination_port, protocol)"
                    ),
                ));
            }
        }
    }
    filter.check_satisfiable().map_err(|e| match e {
        FilterError::MixedFamilies => bad(code::INVALID_VALUE, format!("filter_v1: {e}")),
        other => filter_error(other),
    })?;
    Ok(filter)
}

/// `filter_bpf` (extension): compiled by libpcap for Ethernet, at most 4096 instructions.
fn parse_filter_bpf(v: &Value) -> Result<edgecap_capture::bpf::CheckedFilter, ApiError> {
    use edgecap_capture::bpf::{BpfError, check};
    let text = string("filter_bpf", v)?;
    check(text, 1, edgecap_capture::source::MAX_SNAPLEN as i32).map_err(|e| {
        let code = if matches!(e, BpfError::TooLong(_)) { code::OUT_OF_RANGE } else { code::INVALID_VALUE };
        bad(code, e.to_string())
    })
}

fn parse_time(name: &str, v: &Value) -> Result<OffsetDateTime, ApiError> {
    let text = string(name, v)?;
    OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .map_err(|e| bad(code::INVALID_VALUE, format!("{name}: must be an RFC 3339 date-time ({e}), got {text:?}")))
}

/// Validates a create request against `limits` at time `now`.
pub(crate) fn parse_create(body: &[u8], limits: &Limits, now: OffsetDateTime) -> Result<CaptureRequest, ApiError> {
    let map = parse_object(body)?;

    let system = string("system", required(&map, "system")?)?;
    if system != "magic-transit" {
        return Err(bad(code::INVALID_VALUE, format!("system: must be \"magic-transit\", got {system:?}")));
    }
    let capture_type = match string("type", required(&map, "type")?)? {
        "simple" => CaptureType::Simple,
        "full" => CaptureType::Full,
        other => {
            return Err(bad(code::INVALID_VALUE, format!("type: must be \"simple\" or \"full\", got {other:?}")));
        }
    };
    let time_max = match capture_type {
        CaptureType::Simple => limits.time_limit_max,
        CaptureType::Full => limits.full_time_limit_max,
    };
    let time_limit = integer("time_limit", required(&map, "time_limit")?, 1, time_max)?;
    let packet_limit = match capture_type {
        CaptureType::Simple => Some(required(&map, "packet_limit")?),
        CaptureType::Full => field(&map, "packet_limit"),
    }
    .map(|v| integer("packet_limit", v, 1, limits.packet_limit_max))
    .transpose()?;
    let filter = parse_filter(map.get("filter_v1"))?;
    let filter_bpf = field(&map, "filter_bpf").map(parse_filter_bpf).transpose()?;
    let clock_correction = match field(&map, "clock_correction") {
        None => false,
        Some(Value::Bool(b)) => *b,
        Some(other) => {
            return Err(bad(code::WRONG_TYPE, format!("clock_correction: must be true or false, not {}", kind(other))));
        }
    };
    let dry_run = match field(&map, "dry_run") {
        None => false,
        Some(Value::Bool(b)) => *b,
        Some(other) => {
            return Err(bad(code::WRONG_TYPE, format!("dry_run: must be true or false, not {}", kind(other))));
        }
    };

    match capture_type {
        CaptureType::Simple => {
            not_applicable(&map, "byte_limit", "simple")?;
            not_applicable(&map, "colo_name", "simple")?;
            not_applicable(&map, "colo", "simple")?;
            not_applicable(&map, "colo_names", "simple")?;
            not_applicable(&map, "destination_conf", "simple")?;
            not_applicable(&map, "output_format", "simple")?;
            let offset_time = field(&map, "offset_time").map(|v| parse_time("offset_time", v)).transpose()?;
            if let Some(t) = offset_time {
                if t < now - time::Duration::seconds(limits.offset_max_age_secs) {
                    return Err(bad(
                        code::OUT_OF_RANGE,
                        format!("offset_time: must be within the last {} hours", limits.offset_max_age_secs / 3600),
                    ));
                }
                if t > now + time::Duration::seconds(limits.offset_future_skew_secs) {
                    return Err(bad(code::OUT_OF_RANGE, "offset_time: must not be in the future".into()));
                }
            }
            Ok(CaptureRequest {
                capture_type,
                time_limit,
                packet_limit,
                byte_limit: None,
                filter,
                filter_bpf,
                offset_time: Some(offset_time.unwrap_or(now)),
                colo_name: None,
                colo_names: Vec::new(),
                destination: None,
                output_format: OutputFormat::Pcap,
                dry_run,
                clock_correction,
            })
        }
        CaptureType::Full => {
            not_applicable(&map, "offset_time", "full")?;
            let byte_limit =
                field(&map, "byte_limit").map(|v| integer("byte_limit", v, 1, limits.byte_limit_max)).transpose()?;
            // Cloudflare's docs write `colo`; the schema and SDKs use `colo_name`.
            // Extension: `colo_names`, several colos in one capture (with or without colo_name).
            let mut colos: Vec<String> = Vec::new();
            if let Some(v) = field(&map, "colo_names") {
                let Value::Array(items) = v else {
                    return Err(bad(code::WRONG_TYPE, "colo_names: must be an array of colo names".into()));
                };
                if items.is_empty() || items.len() > 100 {
                    return Err(bad(code::INVALID_VALUE, "colo_names: name 1 to 100 colos".into()));
                }
                for (i, item) in items.iter().enumerate() {
                    let name = format!("colo_names[{i}]");
                    let colo =
                        item.as_str().ok_or_else(|| bad(code::WRONG_TYPE, format!("{name}: must be a string")))?;
                    edgecap_tls::validate_name(colo).map_err(|e| bad(code::INVALID_VALUE, format!("{name}: {e}")))?;
                    if !colos.iter().any(|c| c.eq_ignore_ascii_case(colo)) {
                        colos.push(colo.to_string());
                    }
                }
            }
            let (colo_field, colo_value) = match (field(&map, "colo_name"), field(&map, "colo")) {
                (None, None) if !colos.is_empty() => ("colo_names", &Value::Null),
                (Some(v), _) => ("colo_name", v),
                (None, Some(v)) => ("colo", v),
                (None, None) => return Err(bad(code::MISSING_FIELD, "colo_name: required".into())),
            };
            let colo = match colo_value {
                Value::Null => colos[0].clone(),
                v => {
                    let colo = string(colo_field, v)?;
                    edgecap_tls::validate_name(colo)
                        .map_err(|e| bad(code::INVALID_VALUE, format!("{colo_field}: {e}")))?;
                    if !colos.iter().any(|c| c.eq_ignore_ascii_case(colo)) {
                        colos.insert(0, colo.to_string());
                    }
                    colo.to_string()
                }
            };
            let destination = destination(string("destination_conf", required(&map, "destination_conf")?)?)?;
            let output_format = match field(&map, "output_format").map(|v| string("output_format", v)).transpose()? {
                None | Some("pcap") => OutputFormat::Pcap,
                Some("pcapng") => OutputFormat::Pcapng,
                Some(other) => {
                    return Err(bad(
                        code::INVALID_VALUE,
                        format!("output_format: must be \"pcap\" or \"pcapng\", got {other:?}"),
                    ));
                }
            };
            Ok(CaptureRequest {
                capture_type,
                time_limit,
                packet_limit,
                byte_limit,
                filter,
                filter_bpf,
                offset_time: None,
                colo_name: Some(colo),
                colo_names: colos,
                destination: Some(destination),
                output_format,
                dry_run,
                clock_correction,
            })
        }
    }
}

/// `{"destination_conf": ...}` (ownership create).
pub(crate) fn parse_ownership_create(body: &[u8]) -> Result<DestinationConf, ApiError> {
    let map = parse_object(body)?;
    destination(string("destination_conf", required(&map, "destination_conf")?)?)
}

/// `{"destination_conf": ..., "ownership_challenge": ...}` (ownership validate).
pub(crate) fn parse_ownership_validate(body: &[u8]) -> Result<(DestinationConf, String), ApiError> {
    let map = parse_object(body)?;
    let destination = destination(string("destination_conf", required(&map, "destination_conf")?)?)?;
    let challenge = string("ownership_challenge", required(&map, "ownership_challenge")?)?;
    if challenge.trim().is_empty() || challenge.len() > 4096 {
        return Err(bad(code::INVALID_VALUE, "ownership_challenge: must be 1 to 4096 characters".into()));
    }
    Ok((destination, challenge.trim().to_string()))
}
