//! Cloudflare's per-account rate limit on sample captures (one per minute by default).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use axum::http::StatusCode;
use edgecap_common::lock;
use tokio::time::Instant;

use super::error::{ApiError, code};

#[derive(Debug, Default)]
pub(crate) struct RateLimiter {
    last_sample: Mutex<HashMap<String, Instant>>,
}

impl RateLimiter {
    pub(crate) fn check_sample(&self, account: &str, interval: Option<Duration>) -> Result<(), ApiError> {
        let Some(interval) = interval else { return Ok(()) };
        let mut last = lock(&self.last_sample);
        let now = Instant::now();
        if let Some(prev) = last.get(account) {
            let next = *prev + interval;
            if next > now {
                let wait = (next - now).as_secs_f64().ceil() as u64;
                let mut e = ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    code::RATE_LIMITED,
                    format!("type: one sample capture per {} s per account; retry in {wait} s", interval.as_secs()),
                );
                e.retry_after = Some(wait.max(1));
                return Err(e);
            }
        }
        last.insert(account.to_string(), now);
        Ok(())
    }
}
