//! Ids and times as Cloudflare shows them.

/// A new 32-hex id (a UUID v4 without dashes), as Cloudflare's ids are.
pub(crate) fn new_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// Whether `text` has the shape of an id (so malformed ids are plain 404s).
pub(crate) fn is_id(text: &str) -> bool {
    text.len() == 32 && text.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Unix seconds as [`rfc3339`].
pub(crate) fn rfc3339_secs(unix: i64) -> String {
    rfc3339(time::OffsetDateTime::from_unix_timestamp(unix).unwrap_or(time::OffsetDateTime::UNIX_EPOCH))
}

/// Nanoseconds since the Unix epoch as [`rfc3339`].
pub(crate) fn rfc3339_ns(unix_ns: u64) -> String {
    rfc3339(
        time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(unix_ns))
            .unwrap_or(time::OffsetDateTime::UNIX_EPOCH),
    )
}

/// RFC 3339 with microseconds and `Z`, as in Cloudflare's examples.
pub fn rfc3339(t: time::OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    let format =
        time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z");
    t.format(&format).unwrap_or_else(|_| t.unix_timestamp().to_string())
}
