#!/usr/bin/env bash
# steady-capture.sh - a capturer's CPU per packet once it has run for a while (the lookback
# full), beside ../shared/bench/capture.sh, which times whole processes of a few seconds.
#
# usage: bench/steady-capture.sh RATE tcpdump|EDGECAP_BENCH_BINARY [FROM TO]
#   Runs capture.sh -n 1 -r RATE -T (TO + 4) with one capturer (tcpdump, or
#   `EDGECAP_BENCH_BINARY capture ... --buffer-mib 64 --with-lookback`, the anchor's command),
#   reads the capturer's CPU (utime + stime, /proc/PID/stat, 10 ms ticks) FROM and TO seconds
#   (default 8 and 20) after it started, and the packets that reached the receiving veth in
#   between; prints ticks, packets and µs per packet. Run it in turn for each capturer.
set -euo pipefail
RATE=$1; WHO=$2; FROM=${3:-8}; TO=${4:-20}
HERE=$(cd "$(dirname "$0")" && pwd)
ANCHOR=${ANCHOR:-$HERE/../../shared/bench/capture.sh}
LOG=$(mktemp)
if [ "$WHO" = tcpdump ]; then
  NAME=tcpdump
  bash "$ANCHOR" -n 1 -c tcpdump -r "$RATE" -T $((TO + 4)) >"$LOG" 2>&1 &
else
  NAME=$(basename "$WHO" | cut -c1-15)
  bash "$ANCHOR" -n 1 -c "" -r "$RATE" -T $((TO + 4)) -R "capturing on" \
    "$WHO capture --iface {iface} --out {out} --filter {bpf} --buffer-mib 64 --with-lookback" >"$LOG" 2>&1 &
fi
RUN=$!
PID=""
for _ in $(seq 400); do PID=$(pgrep -x "$NAME" | head -1 || true); [ -n "$PID" ] && break; sleep 0.05; done
[ -n "$PID" ] || { echo "no $NAME process" >&2; cat "$LOG" >&2; exit 1; }
rx() { ip netns exec "$(ip netns list | grep -o 'cap-rx-[0-9]*' | head -1)" cat /sys/class/net/vrx/statistics/rx_packets; }
sleep "$FROM"; A=$(awk '{print $14 + $15}' "/proc/$PID/stat"); RX0=$(rx)
sleep $((TO - FROM)); B=$(awk '{print $14 + $15}' "/proc/$PID/stat"); RX1=$(rx)
wait "$RUN" || true
PK=$((RX1 - RX0))
echo "$WHO rate=$RATE window=${FROM}-${TO}s ticks=$((B - A)) packets=$PK us_per_pkt=$(python3 -c "print(round(($B - $A) * 10000 / $PK, 3))") $(grep -m1 -o 'zero loss [0-9]*/[0-9]*' "$LOG" || echo 'zero loss ?')"
rm -f "$LOG"
