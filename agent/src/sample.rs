//! Answers to sample queries: the lookback's packets in a window that match a filter, the
//! newest `packet_limit` of them, in chunks. Runs on a blocking thread (it may wait for the
//! lookback to settle, and filters every packet of the window).

use std::sync::Mutex;
use std::time::Duration;

use edgecap_capture::Lookback;
use edgecap_capture::live::VISIBILITY_DELAY;
use edgecap_common::lock;
use edgecap_proto::agent::v1 as pb;

use crate::convert::filter_from_pb;

/// How often a query waiting for its window's packets looks whether they are in.
const SETTLE_POLL: Duration = Duration::from_millis(2);

/// The lookback's counters, as heartbeats and answers carry them.
pub(crate) fn lookback_stats(lookback: &Mutex<Lookback>) -> pb::LookbackStats {
    let l = lock(lookback);
    let s = l.stats();
    pb::LookbackStats {
        packets_seen: s.packets_seen,
        packets_sampled: s.packets_sampled,
        packets_held: l.len() as u64,
        bytes_held: l.bytes() as u64,
        packets_evicted: s.packets_evicted,
        kernel_dropped: s.kernel_dropped,
        oldest_ns: l.oldest_ns().unwrap_or(0),
    }
}

/// Answers a sample query from the lookback, in chunks; the last chunk has `done`. Its span
/// joins the capture's trace (the query's `traceparent`).
pub fn answer_sample(lookback: &Mutex<Lookback>, query: pb::SampleQuery) -> Vec<pb::SampleChunk> {
    let span = tracing::info_span!("lookback_query", request = %query.request_id);
    edgecap_telemetry::continue_trace(&span, &query.traceparent);
    span.in_scope(|| answer(lookback, query))
}

fn answer(lookback: &Mutex<Lookback>, query: pb::SampleQuery) -> Vec<pb::SampleChunk> {
    // Packets reach the lookback in batches, up to VISIBILITY_DELAY after they were on the
    // wire: a window that ends that recently is answered once they are all in, which the
    // lookback says as soon as each interface's source has run dry past the window's end. A
    // quiet source only looks again when woken (else after its idle wait), so it is woken.
    let now = edgecap_common::now_ns();
    let latest = query.to_ns.saturating_add(VISIBILITY_DELAY.as_nanos() as u64);
    if latest > now {
        {
            let l = lock(lookback);
            if l.settled_ns().is_none_or(|s| s <= query.to_ns) {
                l.wake_sources();
            }
        }
        let give_up =
            std::time::Instant::now() + Duration::from_nanos((latest - now).min(VISIBILITY_DELAY.as_nanos() as u64));
        while lock(lookback).settled_ns().is_none_or(|s| s <= query.to_ns) && std::time::Instant::now() < give_up {
            std::thread::sleep(SETTLE_POLL);
        }
    }
    let fail = |error: String| vec![pb::SampleChunk::failure(&query.request_id, error)];
    // The account's scope is applied here, whatever the coordinator did: no scope, no answer.
    let scope = match crate::convert::scope_from_pb(query.scope.as_ref()) {
        Ok(scope) => scope,
        Err(e) => return fail(e.to_string()),
    };
    let filter = match query.filter.as_ref().map(filter_from_pb).transpose() {
        Ok(f) => f.unwrap_or_default(),
        Err(e) => return fail(format!("filter refused: {e}")),
    };
    let (interfaces, snaplen) = {
        let l = lock(lookback);
        (l.interfaces().to_vec(), l.config().snaplen as i32)
    };
    if !query.filter_bpf.is_empty() {
        for (name, linktype) in &interfaces {
            let checked = edgecap_capture::bpf::verify_for_linktype(
                &query.filter_bpf,
                *linktype,
                snaplen,
                &query.filter_bpf_hash,
            );
            if let Err(e) = checked {
                return fail(format!("interface {name}: {e}"));
            }
        }
    }
    let expr = edgecap_capture::filter::combine(&filter.to_bpf(), &query.filter_bpf);
    // One program per interface link type, compiled like a live filter would be.
    let mut programs = Vec::new();
    if !expr.is_empty() {
        for (_, linktype) in &interfaces {
            match edgecap_capture::compile_offline(*linktype, snaplen, &expr) {
                Ok(p) => programs.push(p),
                Err(e) => return fail(e.to_string()),
            }
        }
    }
    let mut scopes = Vec::new();
    let scope_expr = scope.to_bpf();
    if !scope_expr.is_empty() {
        for (_, linktype) in &interfaces {
            match edgecap_capture::compile_offline(*linktype, snaplen, &scope_expr) {
                Ok(p) => scopes.push(p),
                Err(e) => return fail(format!("account scope: {e}")),
            }
        }
    }
    // Judged on the wire length, not the stored (truncated) length: a filter means the same
    // here as on a live capture. Packets the filter matches outside the scope are counted.
    let mut excluded = 0u64;
    // Packets whose headers rule out filter_v1 are passed over without reading their bytes.
    let prefilter = edgecap_capture::summary::Prefilter::new(&filter);
    let limit = query.packet_limit as usize;
    let result = lock(lookback).query_prefiltered(query.from_ns, query.to_ns, limit, &prefilter, |packet, data| {
        let iface = usize::from(packet.iface);
        let matched = programs.get(iface).is_none_or(|p| edgecap_capture::offline::matches(p, data, packet.orig_len));
        let in_scope = scopes.get(iface).is_none_or(|p| edgecap_capture::offline::matches(p, data, packet.orig_len));
        if matched && !in_scope {
            excluded += 1;
        }
        matched && in_scope
    });
    let stats = lookback_stats(lookback);
    let packets: Vec<pb::Packet> = result
        .packets
        .into_iter()
        .map(|p| {
            let (name, linktype) = interfaces.get(p.iface as usize).cloned().unwrap_or_default();
            pb::Packet {
                ts_ns: p.ts_ns,
                orig_len: p.orig_len,
                data: p.data,
                interface: name,
                linktype: linktype as u32,
            }
        })
        .collect();
    let mut chunks = pb::SampleChunk::split(&query.request_id, packets, result.matched, stats);
    if let Some(last) = chunks.last_mut() {
        last.excluded = excluded;
    }
    chunks
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgecap_capture::LookbackConfig;

    fn query_with_scope() -> pb::SampleQuery {
        pb::SampleQuery {
            to_ns: u64::MAX,
            packet_limit: 10,
            scope: Some(pb::AccountScope { unrestricted: true, prefixes: vec![] }),
            ..Default::default()
        }
    }

    #[test]
    fn sample_answers_are_chunked_filtered_and_limited() {
        let lookback = Mutex::new(Lookback::new(LookbackConfig::default()));
        let iface = lock(&lookback).add_interface("veth", 1);
        // Ethernet + IPv4 + UDP to port 53 (even i) or 54 (odd i).
        for i in 0..2500u64 {
            let mut frame = vec![0u8; 42];
            frame[12] = 0x08; // ethertype IPv4
            frame[14] = 0x45;
            frame[23] = 17; // UDP
            frame[36..38].copy_from_slice(&(53 + (i % 2) as u16).to_be_bytes());
            lock(&lookback).insert(1_000 + i, 42, iface, &frame);
        }
        let query = pb::SampleQuery {
            request_id: "r".into(),
            from_ns: 0,
            to_ns: u64::MAX,
            filter: Some(pb::FilterV1 { destination_port: Some(53), ..Default::default() }),
            packet_limit: 1200,
            scope: Some(pb::AccountScope { unrestricted: true, prefixes: vec![] }),
            ..Default::default()
        };
        let chunks = answer_sample(&lookback, query);
        // Cut by bytes (edgecap_proto::CHUNK_BYTES): 1200 small packets fit in one chunk.
        assert_eq!(chunks.len(), 1);
        let last = chunks.last().unwrap();
        assert!(last.done && last.error.is_empty());
        assert_eq!(last.matched, 1250);
        let packets: Vec<&pb::Packet> = chunks.iter().flat_map(|c| &c.packets).collect();
        assert_eq!(packets.len(), 1200);
        assert!(packets.windows(2).all(|w| w[0].ts_ns < w[1].ts_ns));
        assert_eq!(packets.last().unwrap().ts_ns, 1_000 + 2498, "newest matching packet kept");
        let unscoped = pb::SampleQuery { scope: None, ..query_with_scope() };
        let refused = answer_sample(&lookback, unscoped);
        assert!(refused[0].done && refused[0].error.contains("no account scope"), "{:?}", refused[0].error);
        let bad = pb::SampleQuery {
            filter: Some(pb::FilterV1 { protocol: Some(999), ..Default::default() }),
            ..query_with_scope()
        };
        assert!(answer_sample(&lookback, bad)[0].error.contains("protocol"));
        // filter_bpf: ANDed with filter_v1, and refused when its bytecode is not the one the
        // coordinator validated.
        let hash = edgecap_capture::bpf::check("udp dst port 54", 1, 262_144).unwrap().hash;
        let both = pb::SampleQuery {
            request_id: "b".into(),
            to_ns: u64::MAX,
            filter: Some(pb::FilterV1 { protocol: Some(17), ..Default::default() }),
            filter_bpf: "udp dst port 54".into(),
            filter_bpf_hash: hash.clone(),
            packet_limit: 10_000,
            ..query_with_scope()
        };
        assert_eq!(answer_sample(&lookback, both.clone()).last().unwrap().matched, 1250);
        let forged = pb::SampleQuery { filter_bpf: "udp".into(), filter_bpf_hash: hash, ..both };
        let err = &answer_sample(&lookback, forged)[0].error;
        assert!(err.contains("filter_bpf") && err.contains("hash"), "{err}");
    }
}
