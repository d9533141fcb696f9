//! Waiting for a capture to end and downloading its file, with progress on a terminal's
//! stderr (indicatif): for a full capture one line per PoP (status, packets and bytes so far)
//! under the capture's time bar. Nothing is drawn when stderr is not a terminal.

use std::collections::HashMap;
use std::io::IsTerminal as _;
use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::Value;

use crate::client::Api;
use crate::failure::Refusal;
use crate::output::{bytes, count, seconds_since};

/// Statuses after which a capture changes no more.
pub fn is_final(status: &Value) -> bool {
    matches!(status.as_str(), Some("success" | "failed" | "complete"))
}

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_spinner())
}

/// A PoP's packets so far: while a full capture runs, `packets` counts what reached its
/// shards and `matched` what the filter took; the larger is the news.
fn so_far(pop: &Value) -> u64 {
    pop["packets"].as_u64().unwrap_or(0).max(pop["matched"].as_u64().unwrap_or(0))
}

/// The progress lines of one wait.
struct Progress {
    multi: MultiProgress,
    main: ProgressBar,
    pops: HashMap<String, ProgressBar>,
}

impl Progress {
    fn new(id: &str) -> Option<Self> {
        if !std::io::stderr().is_terminal() {
            return None;
        }
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
        let main = multi.add(ProgressBar::new_spinner());
        main.set_style(style("{spinner} {prefix} {msg}"));
        main.set_prefix(format!("capture {id}"));
        main.enable_steady_tick(Duration::from_millis(120));
        Some(Self { multi, main, pops: HashMap::new() })
    }

    fn update(&mut self, c: &Value) {
        let status = c["status"].as_str().unwrap_or("?");
        let pops = c["pops"].as_array().cloned().unwrap_or_default();
        let (packets, size) =
            pops.iter().fold((0, 0), |(p, b), pop| (p + so_far(pop), b + pop["bytes"].as_u64().unwrap_or(0)));
        if c["type"] == "full" {
            let limit = c["time_limit"].as_u64().unwrap_or(0);
            let elapsed = seconds_since(&c["submitted"]).min(limit);
            if self.main.length().is_none() && limit > 0 {
                self.main.set_length(limit);
                self.main.set_style(style("{spinner} {prefix} [{bar:24}] {pos}/{len} s  {msg}").progress_chars("=> "));
            }
            self.main.set_position(elapsed);
            let done =
                pops.iter().filter(|p| matches!(p["status"].as_str(), Some("done" | "failed" | "skipped"))).count();
            self.main.set_message(format!(
                "{status}, {} packets, {}, {done}/{} PoPs done",
                count(packets),
                bytes(size),
                pops.len()
            ));
            for pop in &pops {
                let key = format!("{}/{}", pop["pop"].as_str().unwrap_or(""), pop["agent_id"].as_str().unwrap_or(""));
                let line = self.pops.entry(key.clone()).or_insert_with(|| {
                    let bar = self.multi.add(ProgressBar::new_spinner());
                    bar.set_style(style("  {prefix:<24} {msg}"));
                    bar.set_prefix(key);
                    bar
                });
                let reason =
                    pop["stop_reason"].as_str().map(|r| format!(" ({})", r.replace('_', " "))).unwrap_or_default();
                let error = pop["error"].as_str().map(|e| format!(": {e}")).unwrap_or_default();
                line.set_message(format!(
                    "{:<10} {:>12} packets {:>10}{reason}{error}",
                    pop["status"].as_str().unwrap_or("?"),
                    count(so_far(pop)),
                    bytes(pop["bytes"].as_u64().unwrap_or(0)),
                ));
            }
        } else {
            let answered = if pops.is_empty() { String::new() } else { format!(", {} PoPs answered", pops.len()) };
            self.main.set_message(format!("{status}{answered}"));
        }
    }

    fn finish(self) {
        for bar in self.pops.values() {
            bar.finish();
        }
        self.main.finish();
        let _ = self.multi.clear();
    }
}

/// An answer that says "try again" (503 and the gateway errors in front of a coordinator).
fn unavailable(error: &anyhow::Error) -> bool {
    error.downcast_ref::<Refusal>().is_some_and(|r| matches!(r.status, 502..=504))
}

/// Polls capture `id` until it is final or `timeout` passes (an error, exit 5), showing
/// progress on a terminal.
pub async fn wait(api: &Api, id: &str, timeout: Duration) -> anyhow::Result<Value> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut progress = Progress::new(id);
    let result = async {
        loop {
            let c = match api.call("GET", &format!("/{id}"), None).await {
                Ok(c) => c,
                // The coordinator's state store is briefly unreachable (an etcd restart, a
                // leader election): the capture goes on, and so does the wait.
                Err(e) if unavailable(&e) && tokio::time::Instant::now() < deadline => {
                    if let Some(p) = progress.as_mut() {
                        p.main.set_message(format!("{e:#}; asking again"));
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
                Err(e) => return Err(e),
            };
            if let Some(p) = progress.as_mut() {
                p.update(&c);
            }
            if is_final(&c["status"]) {
                return Ok(c);
            }
            if tokio::time::Instant::now() >= deadline {
                anyhow::bail!(
                    "capture {id} still {} after {} s (--timeout); `edgecap capture wait {id}` waits again",
                    c["status"].as_str().unwrap_or("?"),
                    timeout.as_secs()
                );
            }
            let pause = if progress.is_some() { 500 } else { 200 };
            tokio::time::sleep(Duration::from_millis(pause)).await;
        }
    }
    .await;
    if let Some(p) = progress.take() {
        p.finish();
    }
    result
}

/// `capture download`: the file into `out`, with a byte bar on a terminal. Returns its size.
pub async fn download(api: &Api, id: &str, out: &Path) -> anyhow::Result<u64> {
    let bar = std::io::stderr().is_terminal().then(|| {
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
        bar.set_style(style("{spinner} {bytes} {bytes_per_sec}"));
        bar
    });
    let result = api
        .client
        .download_to(id, out, |done, total| {
            if let Some(bar) = &bar {
                if bar.length().is_none()
                    && let Some(total) = total
                {
                    bar.set_length(total);
                    bar.set_style(
                        style("[{bar:32}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}").progress_chars("=> "),
                    );
                }
                bar.set_position(done);
            }
        })
        .await;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    match result.with_context(|| format!("download capture {id} into {}", out.display()))? {
        edgecap_client::Download::Written(n) => Ok(n),
        edgecap_client::Download::Refused { status, body } => Err(Refusal::new(status, &body).into()),
    }
}

/// `capture stream`: the live stream of a running full capture into `out` until it ends.
pub async fn stream(api: &Api, id: &str, out: &Path) -> anyhow::Result<u64> {
    let result = api.client.stream_to(id, out, |_, _| {}).await;
    match result.with_context(|| format!("stream capture {id} into {}", out.display()))? {
        edgecap_client::Download::Written(n) => Ok(n),
        edgecap_client::Download::Refused { status, body } => Err(Refusal::new(status, &body).into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_try_again_answers_are_waited_through() {
        let refusal = |status| anyhow::Error::from(Refusal::new(status, b"{}"));
        for status in [502, 503, 504] {
            assert!(unavailable(&refusal(status)), "{status}");
        }
        for status in [400, 403, 404, 429, 500] {
            assert!(!unavailable(&refusal(status)), "{status}");
        }
        assert!(!unavailable(&anyhow::anyhow!("connection refused")));
    }
}
