#!/usr/bin/env python3
"""Scale benchmarks of issue #11: simulated agents (`edgecap-bench simulate`, the real agent
code, in their own processes) against coordinators on a real etcd, all on loopback, in a
temporary directory that is removed at the end (every process started here is stopped, also
on failure or Ctrl-C).

Scenarios (`python3 bench/scale.py SCENARIO --help` for each one's options):

  sample    sample captures create -> success, timed through the HTTP API (median, p99)
  full      full capture create -> every PoP `running`, timed through the HTTP API, with
            each process's CPU and etcd's requests in that time; and create -> every agent
            capturing, from the PoPs' `started_at` (no debug log needed);
            --timeline: where that time went (checked, record written, jobs written, job
            sent, start received, capture started, state written), from the binaries'
            `edgecap_timeline` debug events;
            --series: each start's latency and CPU, also in series.tsv in the work dir;
            --gap S: a pause before each POST (to tell a start's cost from what the previous
            capture's end leaves running);
            --perf-starts [--perf-starts-of NAME]: perf over those windows only
  idle      coordinator RSS and CPU with N connected idle agents (/proc/PID/stat, status)
  spread    N agents over R replicas: per-replica counts; kill -9 the busiest; time until
            a sample capture gets an answer from every PoP again
  etcd      etcd writes/s (revision delta) with P PoPs x C running full captures, then etcd's
            own put capacity with ../shared/bench/etcd.sh in the same run
  leader    the leader's CPU and etcd requests/s with ~0 finished captures stored, then with
            N (default 10 000) finished sample captures stored

Binaries come from --bin (default: target/release next to this script's repository).
Needs: etcd (etcd-server), s3s-fs for `full`/`etcd`, etcdctl for the etcd.sh anchor, perf
for --perf. Python 3 standard library only. Every figure is printed with the load average
(/proc/loadavg) before and after, since the machine may be shared.
"""

import argparse
import base64
import datetime
import http.client
import json
import math
import os
import random
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
TOKEN = "scale-bench-token-0123456789"
ACCOUNT = "acct"
BUCKET = "scale"
S3_KEY, S3_SECRET = "scalebenchkey", "scalebenchsecret"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def log(*a):
    print(time.strftime("%H:%M:%S"), *a, flush=True)


def loadavg():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def pct(values, p):
    """Nearest-rank percentile: the smallest value with at least p % of the values at or below
    it. (Until 2026-12-02 the rank was `round(p * n / 100 + 0.5)`, which Python rounds to even:
    where p * n / 100 was an odd whole number, as for p99 of 100 values, that was the next rank,
    and such a "p99" was the slowest of the 100.)

    >>> [pct(range(1, 101), p) for p in (50, 90, 99, 100)]
    [50, 90, 99, 100]
    >>> [pct(range(1, 301), p) for p in (50, 90, 99)]
    [150, 270, 297]
    >>> pct(range(1, 41), 99), pct([7], 99), pct([3, 1, 2], 50), pct([0.2, 0.1], 50)
    (40, 7, 2, 0.1)
    """
    v = sorted(values)
    if not v:
        return float("nan")
    # (Rounded first, so that 99 * 300 / 100 is 297 and not a hair above it.)
    rank = math.ceil(round(p * len(v) / 100.0, 9))
    return v[max(1, min(len(v), rank)) - 1]


def summary(ms):
    if not ms:
        return "no samples"
    return (f"n={len(ms)} median {statistics.median(ms):.1f} ms  p90 {pct(ms, 90):.1f}  p99 {pct(ms, 99):.1f}"
            f"  min {min(ms):.1f}  max {max(ms):.1f}")


def rfc3339(t):
    d = datetime.datetime.fromtimestamp(t, datetime.timezone.utc)
    return d.strftime("%Y-%m-%dT%H:%M:%S.") + f"{d.microsecond // 1000:03d}Z"


def free_port():
    while True:
        p = random.randrange(20000, 32000)
        s = socket.socket()
        try:
            s.bind(("127.0.0.1", p))
            return p
        except OSError:
            pass
        finally:
            s.close()


def etcd_compaction(spec):
    """`--etcd-compaction MODE:RETENTION` as etcd's flags.

    >>> etcd_compaction("periodic:1m")
    ['--auto-compaction-mode', 'periodic', '--auto-compaction-retention', '1m']
    >>> etcd_compaction("none")
    []
    >>> etcd_compaction("hourly")
    Traceback (most recent call last):
    argparse.ArgumentTypeError: 'hourly': expected periodic:DURATION or revision:COUNT
    """
    if spec == "none":
        return []
    mode, sep, retention = spec.partition(":")
    if mode not in ("periodic", "revision") or not sep or not retention:
        raise argparse.ArgumentTypeError(f"{spec!r}: expected periodic:DURATION or revision:COUNT")
    return ["--auto-compaction-mode", mode, "--auto-compaction-retention", retention]


def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 1 << 20
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


# --------------------------------------------------------------------------------------------
# processes


class Procs:
    """Every process this run started; each in its own session, stopped by its own id."""

    def __init__(self):
        self.procs = []
        self.lock = threading.Lock()

    def start(self, name, argv, logfile, env=None, cwd=None):
        out = open(logfile, "ab")
        e = dict(os.environ)
        e.update(env or {})
        p = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=e,
                             cwd=cwd, start_new_session=True)
        p.name, p.logfile = name, logfile
        with self.lock:
            self.procs.append(p)
        return p

    def stop(self, p, sig=signal.SIGTERM, wait=20):
        if p.poll() is None:
            try:
                os.killpg(p.pid, sig)
            except ProcessLookupError:
                pass
            try:
                p.wait(wait)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait()

    def stop_all(self):
        with self.lock:
            procs = list(reversed(self.procs))
        # Simulators and coordinators first (TERM), etcd and s3s-fs last.
        for p in procs:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.time() + 20
        for p in procs:
            try:
                p.wait(max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait()


def wait_line(path, needle, timeout, proc=None):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with open(path, "rb") as f:
                for line in f:
                    if needle in line:
                        return line.decode(errors="replace").strip()
        except FileNotFoundError:
            pass
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{proc.name} exited {proc.returncode}: {tail(path)}")
        time.sleep(0.05)
    raise RuntimeError(f"timeout waiting for {needle!r} in {path}: {tail(path)}")


def tail(path, n=2000):
    try:
        with open(path, "rb") as f:
            return f.read()[-n:].decode(errors="replace")
    except OSError:
        return ""


class ProcStat:
    """CPU (utime+stime) and memory of one process from /proc."""

    def __init__(self, pid):
        self.pid = pid

    def ticks(self):
        with open(f"/proc/{self.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)

    def status(self):
        out = {}
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                k, _, v = line.partition(":")
                if k in ("VmRSS", "VmHWM", "Threads"):
                    out[k] = int(v.split()[0])
        return out

    def fds(self):
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def watch(self, seconds, every=1.0):
        """Samples for `seconds`: CPU % of one core, RSS samples (KiB), peak."""
        t0, c0 = time.monotonic(), self.ticks()
        rss = []
        end = t0 + seconds
        while time.monotonic() < end:
            rss.append(self.status()["VmRSS"])
            time.sleep(min(every, max(0.0, end - time.monotonic())))
        t1, c1 = time.monotonic(), self.ticks()
        st = self.status()
        rss.append(st["VmRSS"])
        return {"cpu_pct": 100.0 * (c1 - c0) / CLK_TCK / (t1 - t0), "cpu_s": (c1 - c0) / CLK_TCK,
                "wall_s": t1 - t0, "rss_mib_median": statistics.median(rss) / 1024,
                "rss_mib_max": max(rss) / 1024, "hwm_mib": st["VmHWM"] / 1024, "threads": st["Threads"]}


# --------------------------------------------------------------------------------------------
# etcd, s3s-fs, coordinators, simulators


class Etcd:
    def __init__(self, env):
        self.port, self.peer = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        d = os.path.join(env.dir, "etcd")
        self.proc = env.procs.start("etcd", [
            "etcd", "--name", "s", "--data-dir", os.path.join(d, "data"),
            "--listen-client-urls", self.url, "--advertise-client-urls", self.url,
            "--listen-peer-urls", f"http://127.0.0.1:{self.peer}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{self.peer}",
            "--initial-cluster", f"s=http://127.0.0.1:{self.peer}", "--log-level", "error",
            "--quota-backend-bytes", str(8 << 30), *env.args.etcd_compaction], os.path.join(env.dir, "etcd.log"))
        deadline = time.time() + 30
        while True:
            try:
                self.revision()
                break
            except OSError:
                if time.time() > deadline or self.proc.poll() is not None:
                    raise RuntimeError("etcd did not start: " + tail(self.proc.logfile))
                time.sleep(0.1)

    def _post(self, path, body):
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            c.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
            return json.loads(c.getresponse().read())
        finally:
            c.close()

    def revision(self):
        r = self._post("/v3/kv/range", {"key": base64.b64encode(b"\0").decode()})
        return int(r["header"]["revision"])

    def count(self, prefix):
        key = prefix.encode()
        end = key[:-1] + bytes([key[-1] + 1])
        r = self._post("/v3/kv/range", {"key": base64.b64encode(key).decode(),
                                        "range_end": base64.b64encode(end).decode(), "count_only": True})
        return int(r.get("count", 0))

    def metrics(self):
        """Counters of interest: gRPC messages received per method, mvcc ops."""
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        c.request("GET", "/metrics")
        text = c.getresponse().read().decode()
        c.close()
        out = {}
        for line in text.splitlines():
            if line.startswith("grpc_server_msg_received_total{"):
                method = line.split('grpc_method="')[1].split('"')[0]
                out["grpc." + method] = out.get("grpc." + method, 0) + float(line.rsplit(" ", 1)[1])
            elif line.startswith("etcd_debugging_mvcc_") and line.split(" ")[0].endswith("_total"):
                name = line.split(" ")[0]
                if "{" not in name:
                    out[name.replace("etcd_debugging_mvcc_", "mvcc.")] = float(line.rsplit(" ", 1)[1])
            elif line.startswith("etcd_mvcc_db_total_size_in_bytes "):
                out["db_bytes"] = float(line.rsplit(" ", 1)[1])
        return out


class S3:
    def __init__(self, env):
        self.port = free_port()
        self.dir = os.path.join(env.dir, "s3")
        os.makedirs(os.path.join(self.dir, BUCKET))
        self.proc = env.procs.start("s3s-fs", [
            "s3s-fs", "--host", "127.0.0.1", "--port", str(self.port), "--access-key", S3_KEY,
            "--secret-key", S3_SECRET, self.dir], os.path.join(env.dir, "s3s-fs.log"))
        deadline = time.time() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), 1).close()
                break
            except OSError:
                if time.time() > deadline:
                    raise RuntimeError("s3s-fs did not start")
                time.sleep(0.05)
        self.creds = os.path.join(env.dir, "s3.json")
        with open(self.creds, "w") as f:
            json.dump({BUCKET: {"access_key_id": S3_KEY, "secret_access_key": S3_SECRET}}, f)

    def destination(self):
        return f"s3://{BUCKET}/edge?region=us-east-1&endpoint=http://127.0.0.1:{self.port}"


class Api:
    """The REST API of one replica, one keep-alive connection per thread."""

    def __init__(self, host, port):
        self.host, self.port = host, port
        self.local = threading.local()

    def call(self, method, path, body=None, timeout=60):
        for attempt in range(3):
            c = getattr(self.local, "c", None)
            if c is None:
                c = self.local.c = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
            try:
                data = None if body is None else json.dumps(body)
                c.request(method, path, data, {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
                r = c.getresponse()
                return r.status, r.read()
            except (OSError, http.client.HTTPException):
                c.close()
                self.local.c = None
                if attempt == 2:
                    raise
        raise AssertionError

    def pcaps(self, suffix=""):
        return f"/client/v4/accounts/{ACCOUNT}/pcaps{suffix}"

    def metric(self, name):
        st, raw = self.call("GET", "/metrics")
        total = 0.0
        for line in raw.decode().splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                total += float(line.rsplit(" ", 1)[1])
        return total


class Coordinator:
    def __init__(self, env, name, extra=()):
        self.name = name
        d = os.path.join(env.dir, name)
        os.makedirs(d, exist_ok=True)
        argv = [env.bin("edgecap-coordinator"), "--data-dir", d, "--state", f"etcd://127.0.0.1:{env.etcd.port}/scale",
                "--api-listen", "127.0.0.1:0", "--grpc-listen", "127.0.0.1:0", "--pki-dir", env.pki,
                "--name", name, "--unscoped-accounts", "unrestricted", "--no-rate-limits",
                "--max-running-samples", "10000", "--max-captures-per-pop", "1000"]
        if env.s3:
            argv += ["--s3-credentials", env.s3.creds, "--allow-private-endpoints"]
        argv += list(extra)
        self.logfile = os.path.join(env.dir, f"{name}.log")
        self.proc = env.procs.start(name, argv, self.logfile, env={"EDGECAP_TOKENS": f"{ACCOUNT}:{TOKEN}",
                                                                    "RUST_LOG": os.environ.get("RUST_LOG", "warn")})
        line = wait_line(self.logfile, b"edgecap-coordinator: API ", 60, self.proc)
        # edgecap-coordinator: API http://127.0.0.1:X/client/v4, agents 127.0.0.1:Y
        api = line.split("API ", 1)[1].split("/client")[0].split("://", 1)[1]
        self.grpc = line.rsplit("agents ", 1)[1].strip()
        host, port = api.rsplit(":", 1)
        self.api = Api(host, int(port))
        self.endpoint = f"https://{self.grpc}"
        self.pid = self.proc.pid
        self.stat = ProcStat(self.pid)

    def connected(self):
        try:
            return int(self.api.metric("edgecap_agents_connected"))
        except OSError:
            return -1


class Env:
    def __init__(self, args):
        self.args = args
        self.procs = Procs()
        self.dir = tempfile.mkdtemp(prefix="edgecap-scale-", dir=args.tmp)
        self.bindir = args.bin
        self.etcd = None
        self.s3 = None
        self.coordinators = []
        self.sims = []
        raise_nofile()
        self.pki = os.path.join(self.dir, "pki")
        subprocess.run([self.bin("edgecap"), "pki", "init", "--dir", self.pki, "--name", "scale"], check=True,
                       stdout=subprocess.DEVNULL)
        subprocess.run([self.bin("edgecap"), "pki", "issue", "--dir", self.pki, "--coordinator", "127.0.0.1"],
                       check=True, stdout=subprocess.DEVNULL)
        log(f"work dir {self.dir}")

    def bin(self, name):
        p = os.path.join(self.bindir, name)
        if not os.access(p, os.X_OK):
            raise SystemExit(f"missing binary {p} (build with cargo build --workspace --release)")
        return p

    def start_etcd(self):
        self.etcd = Etcd(self)
        return self.etcd

    def start_s3(self):
        self.s3 = S3(self)
        return self.s3

    def start_coordinators(self, n, extra=()):
        for i in range(n):
            self.coordinators.append(Coordinator(self, f"c{len(self.coordinators) + 1}", extra))
        return self.coordinators

    def start_agents(self, agents, pops, colos, rate, procs, endpoints=None, lookback_kib=512, timeout=600):
        """`agents` simulated agents in `procs` simulator processes; waits until every one is
        connected to some replica. Returns the seconds that took."""
        endpoints = endpoints or [c.endpoint for c in self.coordinators]
        t0 = time.monotonic()
        per = [agents // procs + (1 if i < agents % procs else 0) for i in range(procs)]
        first = 0
        for i, n in enumerate(per):
            logf = os.path.join(self.dir, f"sim{i}.log")
            p = self.procs.start(f"sim{i}", [
                self.bin("edgecap-bench"), "simulate", "--agents", str(n), "--first", str(first),
                "--coordinator", ",".join(endpoints), "--pki", self.pki, "--pops", str(pops),
                "--colos", ",".join(colos), "--rate", str(rate), "--lookback-kib", str(lookback_kib),
                "--spool-dir", os.path.join(self.dir, "spool")], logf,
                env={"RUST_LOG": os.environ.get("EDGECAP_SIM_LOG", "warn"),
                     # A capture runs two threads. An agent alone on its machine finds their
                     # stacks in glibc's cache (40 MiB) when it starts the next; a hundred
                     # agents in one process would not (200 stacks of 2 MiB), and would map and
                     # protect new stacks under one address-space lock for every start
                     # (docs/benchmarks.md). So each simulator caches what its agents use.
                     "GLIBC_TUNABLES": f"glibc.pthread.stack_cache_size={self.args.sim_stack_cache_mib << 20}"})
            p.logfile = logf
            self.sims.append(p)
            first += n
        for p in self.sims:
            wait_line(p.logfile, b"ready ", timeout, p)
        deadline = time.monotonic() + timeout
        last = -1
        while True:
            n = sum(max(0, c.connected()) for c in self.coordinators if c.proc.poll() is None)
            if n >= agents:
                break
            for p in self.sims:
                if p.poll() is not None:
                    raise RuntimeError(f"{p.name} exited {p.returncode}: {tail(p.logfile)}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {n} of {agents} agents connected")
            if n != last:
                last = n
            time.sleep(0.5)
        took = time.monotonic() - t0
        log(f"{agents} agents ({pops} PoPs, {procs} simulator process(es), rate {rate} pps) connected in {took:.1f} s")
        return took

    def close(self):
        self.procs.stop_all()
        if self.args.keep:
            log(f"kept {self.dir}")
        else:
            shutil.rmtree(self.dir, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# measuring helpers


def sample_body(args, offset):
    body = {"system": "magic-transit", "type": "simple", "time_limit": args.time_limit,
            "packet_limit": args.packet_limit}
    if offset is not None:
        body["offset_time"] = rfc3339(time.time() - offset)
    return body


def wait_final(api, cid, poll_s, timeout=120, done=None):
    """Polls GET /pcaps/{id} until `done(raw)` (default: status success/failed); returns the
    parsed result and the perf_counter time the answer arrived."""
    deadline = time.monotonic() + timeout
    path = api.pcaps("/" + cid)
    while True:
        st, raw = api.call("GET", path)
        now = time.perf_counter()
        if st == 200:
            if done is not None:
                r = done(raw)
                if r is not None:
                    return r, now
            elif b'"success"' in raw or b'"failed"' in raw:
                res = json.loads(raw)["result"]
                if res["status"] in ("success", "failed"):
                    return res, now
        if time.monotonic() > deadline:
            try:
                res = json.loads(raw)["result"]
                counts = {}
                for pop in res.get("pops", []):
                    counts[pop["status"]] = counts.get(pop["status"], 0) + 1
                raise RuntimeError(f"capture {cid} not there after {timeout} s: status {res.get('status')}, "
                                   f"PoPs {counts}, error {str(res.get('error_message'))[:300]}")
            except (ValueError, KeyError, TypeError):
                raise RuntimeError(f"capture {cid} not there after {timeout} s: {raw[:400]!r}") from None
        time.sleep(poll_s)


def time_sample(api, body, poll_s, expect_pops):
    t0 = time.perf_counter()
    st, raw = api.call("POST", api.pcaps(), body)
    if st != 200:
        return None, f"create {st}: {raw[:300]!r}"
    cid = json.loads(raw)["result"]["id"]
    res, t1 = wait_final(api, cid, poll_s)
    pops = res.get("pops", [])
    ok = res["status"] == "success" and len(pops) >= expect_pops and all(p["status"] == "done" for p in pops)
    if not ok:
        bad = [p for p in pops if p["status"] != "done"][:3]
        return (t1 - t0) * 1000, (f"{res['status']} with {len(pops)} PoPs: {res.get('error_message', '')[:300]} "
                                 f"{json.dumps(bad)[:300]}")
    return (t1 - t0) * 1000, None


class Perf:
    """`perf record --call-graph dwarf -p PID` for a while (the release build has no frame
    pointers; DWARF unwinding through .eh_frame names the callers), then `perf report --stdio` into the work dir."""

    def __init__(self, env, pid, seconds, tag):
        self.data = os.path.join(env.dir, f"perf-{tag}.data")
        self.report = os.path.join(env.args.perf_out or env.dir, f"perf-{tag}.txt")
        self.proc = env.procs.start("perf", ["perf", "record", "-F", "199", "--call-graph", "dwarf,32768", "-p", str(pid), "-o", self.data,
                                             "--", "sleep", str(seconds)], os.path.join(env.dir, f"perf-{tag}.log"))

    def finish(self):
        self.proc.wait()
        with open(self.report, "w") as f:
            subprocess.run(["perf", "report", "-i", self.data, "--stdio", "--no-children", "--percent-limit", "0.5",
                            "-g", "none"], stdout=f, stderr=subprocess.DEVNULL)
        with open(self.report + ".callers", "w") as f:
            subprocess.run(["perf", "report", "-i", self.data, "--stdio", "--children", "--percent-limit", "3",
                            "-g", "caller,0.5,callee,function,percent", "--max-stack", "40"],
                           stdout=f, stderr=subprocess.DEVNULL)
        log(f"perf report: {self.report} (+ .callers)")
        with open(self.report) as f:
            lines = [ln.rstrip() for ln in f if ln.strip() and not ln.startswith("#")]
        for ln in lines[:25]:
            print("   ", ln)


# --------------------------------------------------------------------------------------------
# scenarios


def scenario_sample(env, a):
    env.start_etcd()
    env.start_coordinators(a.replicas)
    env.start_agents(a.agents, a.pops or a.agents, ["pop"], a.rate, a.sim_procs)
    api = env.coordinators[0].api
    time.sleep(a.settle)
    offset = None if a.offset < 0 else a.offset
    # warm-up
    for _ in range(a.warmup):
        time_sample(api, sample_body(a, offset), a.poll_ms / 1000, a.pops or a.agents)
    perf = None
    if a.perf:
        perf = Perf(env, env.coordinators[0].pid, a.perf, "sample")
    la0 = loadavg()
    ms, errors = [], []
    t0 = time.monotonic()
    for i in range(a.samples):
        m, err = time_sample(api, sample_body(a, offset), a.poll_ms / 1000, a.pops or a.agents)
        if err:
            errors.append(err)
        if m is not None and not err:
            ms.append(m)
        if a.gap_ms:
            time.sleep(a.gap_ms / 1000)
    la1 = loadavg()
    if perf:
        perf.finish()
    hist = env.coordinators[0].api.metric("edgecap_sample_fanout_duration_seconds_sum")
    cnt = env.coordinators[0].api.metric("edgecap_sample_fanout_duration_seconds_count")
    print(f"\nRESULT sample: {a.agents} agents / {a.pops or a.agents} PoPs, {a.replicas} replica(s) on one etcd, "
          f"{a.sim_procs} simulator process(es), rate {a.rate} pps/agent, window "
          f"{'ending now (default)' if offset is None else f'ending {offset} s ago'}, time_limit {a.time_limit} s, "
          f"packet_limit {a.packet_limit}, poll {a.poll_ms} ms, created on c1")
    print(f"  create -> success: {summary(ms)}")
    print(f"  errors: {len(errors)} {errors[:3]}")
    if cnt:
        print(f"  coordinator's own fan-out histogram mean: {1000 * hist / cnt:.1f} ms over {cnt:.0f}")
    print(f"  {time.monotonic() - t0:.0f} s; loadavg before {la0} / after {la1}")


def ownership(env, api):
    dest = env.s3.destination()
    st, raw = api.call("POST", api.pcaps("/ownership"), {"destination_conf": dest})
    if st != 200:
        raise RuntimeError(f"ownership: {st} {raw[:300]!r}")
    fn = json.loads(raw)["result"]["filename"]
    with open(os.path.join(env.s3.dir, BUCKET, "edge", fn)) as f:
        challenge = f.read().strip()
    st, raw = api.call("POST", api.pcaps("/ownership/validate"), {"destination_conf": dest,
                                                                  "ownership_challenge": challenge})
    if st != 200:
        raise RuntimeError(f"ownership validate: {st} {raw[:300]!r}")
    return dest


def full_body(a, dest, time_limit):
    return {"system": "magic-transit", "type": "full", "time_limit": time_limit, "colo_name": a.colo,
            "destination_conf": dest}


def all_capturing(expect):
    def check(raw):
        res = json.loads(raw)["result"]
        pops = res.get("pops", [])
        if res["status"] in ("failed",):
            raise RuntimeError(f"full capture failed: {res.get('error_message', '')[:400]}")
        if len(pops) >= expect and all(p["status"] in ("running", "uploading", "done") for p in pops):
            return res
        return None
    return check


def last_started(capture):
    """The wall-clock time (s) the last of a capture's PoPs began capturing (its `started_at`,
    on the agents' clocks: this machine's); None if a PoP does not say."""
    stamps = [p.get("started_at") for p in capture.get("pops", [])]
    if not stamps or None in stamps:
        return None
    return max(datetime.datetime.strptime(s, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=datetime.timezone.utc).timestamp()
               for s in stamps)


def start_full_setup(env, a):
    """etcd, s3s-fs, the coordinators and the agents (colo a.colo) for full captures, and a
    validated bucket; waits a.settle. Returns the first coordinator's API and the bucket's
    destination_conf."""
    env.start_etcd()
    env.start_s3()
    env.start_coordinators(a.replicas)
    env.start_agents(a.agents, a.agents, [a.colo], a.rate, a.sim_procs)
    api = env.coordinators[0].api
    dest = ownership(env, api)
    time.sleep(a.settle)
    return api, dest


TIMELINE = "edgecap_timeline=debug"


def log_time(line):
    """The wall-clock time (s) of a log line that starts with tracing's RFC 3339 UTC stamp."""
    stamp = line[:27].rstrip("Z ")
    return datetime.datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%f").replace(tzinfo=datetime.timezone.utc).timestamp()


def timeline(env, windows):
    """Where each capture's start went, from the `edgecap_timeline` debug events of the
    coordinators' and simulators' logs: for each step, the time from the POST to the last PoP
    that reached it (each PoP's first event, before the capture was stopped).
    `windows`: {capture id: (POST wall time, stop wall time or None)}."""
    steps = [("checked", "coordinator: the request checked (bucket, agents, limits)"),
             ("record written", "coordinator: the capture's record and index entries written"),
             ("jobs written", "coordinator: every job's transaction committed"),
             ("job sent", "coordinator: StartCapture handed to the agent's stream"),
             ("start received", "agent: StartCapture read from the stream"),
             ("capture started", "agent: its capture running"),
             ("PoP state written", "coordinator: `running` written to the PoP's key")]
    firsts = {cid: {s: {} for s, _ in steps} for cid in windows}
    logs = [c.logfile for c in env.coordinators] + [p.logfile for p in env.sims]
    for path in logs:
        with open(path, errors="replace") as f:
            for line in f:
                # `<time> DEBUG [spans: ]edgecap_timeline: <step> capture=<id> agent|pop=<name> ...`
                _, sep, event = line.partition("edgecap_timeline: ")
                m = re.match(r"(.+?) capture=(\w+) (?:agent|pop)=(\S+)", event)
                if not sep or not m or m.group(2) not in windows:
                    continue
                step, cid, pop = m.groups()
                if step not in firsts[cid] or (step == "PoP state written" and "Running" not in event):
                    continue
                t = log_time(line)
                t_stop = windows[cid][1]
                if t_stop is not None and t > t_stop:
                    continue
                seen = firsts[cid][step]
                seen[pop] = min(seen.get(pop, t), t)
    print("  timeline (POST -> the last PoP at each step; each PoP's first event; wall clocks of this machine):")
    for step, what in steps:
        lasts = [(max(firsts[cid][step].values()) - windows[cid][0]) * 1000 for cid in windows if firsts[cid][step]]
        counts = sorted({len(firsts[cid][step]) for cid in windows})
        print(f"    {step:18s} {summary(lasts)}   ({what}; PoPs seen per capture {counts[0]}-{counts[-1]})"
              if lasts else f"    {step:18s} no events (were the binaries built with the timeline events?)")


def scenario_full(env, a):
    if a.timeline:
        os.environ["RUST_LOG"] = os.environ.get("RUST_LOG", "warn") + "," + TIMELINE
        os.environ["EDGECAP_SIM_LOG"] = os.environ.get("EDGECAP_SIM_LOG", "warn") + "," + TIMELINE
    api, dest = start_full_setup(env, a)
    perf = Perf(env, env.coordinators[0].pid, a.perf, "full") if a.perf else None
    starts_perf, start_windows = None, []
    if a.perf_starts:
        starts_perf = os.path.join(env.dir, "perf-starts.data")
        # Sample times on CLOCK_MONOTONIC, so that they compare with time.monotonic() here.
        which = ["-a", "-F", "999"]
        if a.perf_starts_of:
            pid = next(p.pid for p in env.procs.procs if p.name == a.perf_starts_of)
            which = ["-p", str(pid), "-F", str(a.perf_hz), "--call-graph", "dwarf,32768"]
        starts_proc = env.procs.start("perf", ["perf", "record", *which, "-k", "CLOCK_MONOTONIC",
                                               "-o", starts_perf], os.path.join(env.dir, "perf-starts.log"))
        time.sleep(1)
    la0 = loadavg()
    ms, final_ms, create_ms, errors = [], [], [], []
    capturing_each = []  # POST -> the last PoP's `started_at`, per start (None: not reported)
    windows = {}
    cpu_series = []  # per start: {process: ticks}
    # CPU each process spent from POST to every PoP running (ticks of /proc/PID/stat).
    stats = [(p.name, ProcStat(p.pid)) for p in env.procs.procs if p.poll() is None]
    start_cpu = {name: 0 for name, _ in stats}
    start_etcd = {}
    t_start = time.monotonic()
    for i in range(a.warmup + a.samples):
        if a.gap:
            time.sleep(a.gap)
        c0 = {name: s.ticks() for name, s in stats}
        m0 = env.etcd.metrics()
        w0 = time.monotonic()
        t0 = time.perf_counter()
        t_post = time.time()
        st, raw = api.call("POST", api.pcaps(), full_body(a, dest, a.time_limit))
        if st != 200:
            errors.append(f"create {st}: {raw[:300]!r}")
            time.sleep(1)
            continue
        cid = json.loads(raw)["result"]["id"]
        if i >= a.warmup:
            create_ms.append((time.perf_counter() - t0) * 1000)
        try:
            running, t1 = wait_final(api, cid, a.poll_ms / 1000, timeout=60, done=all_capturing(a.agents))
            if i >= a.warmup:
                ms.append((t1 - t0) * 1000)
                last = last_started(running)
                capturing_each.append(None if last is None else (last - t_post) * 1000)
                per = {name: s.ticks() - c0[name] for name, s in stats}
                for name, t in per.items():
                    start_cpu[name] += t
                cpu_series.append(per)
                for k, v in env.etcd.metrics().items():
                    start_etcd[k] = start_etcd.get(k, 0) + v - m0.get(k, 0)
                start_windows.append((w0, w0 + (t1 - t0)))
        except RuntimeError as e:
            errors.append(str(e)[:400])
        if i >= a.warmup:
            windows[cid] = (t_post, time.time() if a.stop else None)
        if a.stop:
            api.call("PUT", api.pcaps(f"/{cid}/stop"))
        t2 = time.perf_counter()
        res, t3 = wait_final(api, cid, 0.05, timeout=a.time_limit + 300)
        if res["status"] != "success":
            errors.append(f"{cid} ended {res['status']}: {res.get('error_message', '')[:300]}")
        final_ms.append((t3 - t2) * 1000)
    la1 = loadavg()
    if perf:
        perf.finish()
    if starts_perf:
        env.procs.stop(starts_proc, signal.SIGINT)
        report = os.path.join(a.perf_out or env.dir, "perf-starts.txt")
        times = " ".join(f"{s:.6f},{e:.6f}" for s, e in start_windows)
        with open(report, "w") as f:
            subprocess.run(["perf", "report", "-i", starts_perf, "--stdio", "--time", times, "--sort", "comm,dso,sym",
                            "--percent-limit", "0.3"], stdout=f, stderr=subprocess.DEVNULL)
        with open(report + ".comm", "w") as f:
            subprocess.run(["perf", "report", "-i", starts_perf, "--stdio", "--time", times, "--sort", "comm"],
                           stdout=f, stderr=subprocess.DEVNULL)
        if a.perf_starts_of:
            with open(report + ".callers", "w") as f:
                subprocess.run(["perf", "report", "-i", starts_perf, "--stdio", "--time", times, "--children",
                                "--percent-limit", "2", "-g", "caller,0.5,callee,function,percent", "--max-stack", "40"],
                               stdout=f, stderr=subprocess.DEVNULL)
        log(f"perf over the starts: {report} (+ .comm)")
    print(f"\nRESULT full: {a.agents} PoPs in colo {a.colo}, {a.replicas} replica(s), rate {a.rate} pps/agent, "
          f"poll {a.poll_ms} ms, time_limit {a.time_limit} s{', stopped once capturing' if a.stop else ''}")
    capturing_ms = [c for c in capturing_each if c is not None]
    print(f"  POST answered (record and jobs written): {summary(create_ms)}")
    print(f"  create -> every PoP running: {summary(ms)}")
    print(f"  create -> every agent capturing (the last PoP's started_at): "
          f"{summary(capturing_ms) if capturing_ms else 'not reported (agents older than started_at)'}")
    if ms:
        cpu = ", ".join(f"{name} {1000 * t / CLK_TCK / len(ms):.0f}" for name, t in start_cpu.items())
        print(f"  CPU from POST to every PoP running, ms per capture (mean of {len(ms)}): {cpu}")
        rates = {k: v / len(ms) for k, v in start_etcd.items() if not k.startswith("db_") and v}
        print(f"  etcd requests in that time, per capture: {fmt_rates(rates, '')}")
    if a.series and ms:
        series(ms, cpu_series)
        # Each start on a line, for lining up slow starts with what else ran.
        with open(os.path.join(env.dir, "series.tsv"), "w") as f:
            names = list(cpu_series[0])
            f.write("\t".join(["start", "ms", "capturing_ms", "window_start", *[f"{n}_cpu_ms" for n in names]]) + "\n")
            for i, (x, c, (w, _), per) in enumerate(zip(ms, capturing_each, start_windows, cpu_series)):
                f.write("\t".join([str(i), f"{x:.1f}", "" if c is None else f"{c:.1f}", f"{w:.3f}",
                                    *[f"{1000 * per[n] / CLK_TCK:.0f}" for n in names]]) + "\n")
    # The start windows on CLOCK_MONOTONIC, for `perf report --time` over any of them.
    with open(os.path.join(env.dir, "windows.txt"), "w") as f:
        f.write(" ".join(f"{s:.6f},{e:.6f}" for s, e in start_windows))
    if a.timeline:
        timeline(env, windows)
    print(f"  stop/end -> success (merge of every PoP's shards): {summary(final_ms)}")
    print(f"  errors: {len(errors)} {errors[:3]}")
    print(f"  {time.monotonic() - t_start:.0f} s; loadavg before {la0} / after {la1}")


def series(ms, cpu_series):
    """Each start's latency in order, and each process's CPU per start: what grows over a run
    (the first and the last tenth compared)."""
    tenth = max(1, len(ms) // 10)
    mean = lambda xs: sum(xs) / len(xs)
    print("  series, create -> every PoP running, ms:", " ".join(f"{x:.0f}" for x in ms))
    print(f"    first {tenth} / last {tenth}: {mean(ms[:tenth]):.1f} / {mean(ms[-tenth:]):.1f} ms")
    for name in cpu_series[0]:
        per = [1000 * p[name] / CLK_TCK for p in cpu_series]
        if any(per):
            print(f"    {name} CPU per start, first {tenth} / last {tenth}: {mean(per[:tenth]):.1f} / "
                  f"{mean(per[-tenth:]):.1f} ms")


def scenario_idle(env, a):
    env.start_etcd()
    env.start_coordinators(1)
    c = env.coordinators[0]
    base = c.stat.watch(5)
    env.start_agents(a.agents, a.agents, ["pop"], a.rate, a.sim_procs)
    time.sleep(a.settle)
    perf = Perf(env, c.pid, min(a.perf, a.seconds), "idle") if a.perf else None
    la0 = loadavg()
    m0, t0 = env.etcd.metrics(), time.monotonic()
    sims = [(p.name, ProcStat(p.pid)) for p in env.procs.procs if p.name.startswith("sim")]
    s0 = {name: s.ticks() for name, s in sims}
    w = c.stat.watch(a.seconds)
    m1, t1 = env.etcd.metrics(), time.monotonic()
    sim_pct = {name: 100 * (s.ticks() - s0[name]) / CLK_TCK / (t1 - t0) for name, s in sims}
    la1 = loadavg()
    if perf:
        perf.finish()
    rates = {k: (m1.get(k, 0) - m0.get(k, 0)) / (t1 - t0) for k in m1 if not k.startswith("db_")}
    print(f"\nRESULT idle: one coordinator, {c.connected()} connected idle agents (rate {a.rate} pps), "
          f"{a.sim_procs} simulator process(es), measured {w['wall_s']:.0f} s after {a.settle} s settle")
    print(f"  before agents: RSS {base['rss_mib_max']:.1f} MiB, CPU {base['cpu_pct']:.2f} %")
    print(f"  RSS median {w['rss_mib_median']:.1f} MiB, max {w['rss_mib_max']:.1f} MiB (VmHWM {w['hwm_mib']:.1f} MiB "
          f"incl. connection burst), CPU {w['cpu_pct']:.2f} % of one core ({w['cpu_s']:.2f} s CPU), "
          f"threads {w['threads']}, fds {c.stat.fds()}")
    print(f"  etcd ops while idle: {fmt_rates(rates)}")
    print("  simulated agents' CPU: " + ", ".join(f"{name} {pct:.1f} %" for name, pct in sim_pct.items())
          + f" of one core ({a.agents} agents)")
    print(f"  loadavg before {la0} / after {la1}")


def scenario_spread(env, a):
    env.start_etcd()
    env.start_coordinators(a.replicas)
    env.start_agents(a.agents, a.agents, ["pop"], a.rate, a.sim_procs)
    time.sleep(a.settle)
    counts = {c.name: c.connected() for c in env.coordinators}
    st, raw = env.coordinators[0].api.call("GET", "/edgecap/v1/agents")
    by = {}
    for ag in json.loads(raw)["result"]:
        by[ag.get("coordinator")] = by.get(ag.get("coordinator"), 0) + 1
    print(f"\nRESULT spread: {a.agents} agents over {a.replicas} replicas: connected per replica {counts}; "
          f"presence keys per replica {by}")
    n = a.agents / a.replicas
    print(f"  max/mean {max(counts.values()) / n:.3f}, min/mean {min(counts.values()) / n:.3f}")
    if a.no_kill:
        return
    busiest = max(env.coordinators, key=lambda c: counts[c.name])
    survivors = [c for c in env.coordinators if c is not busiest]
    api = survivors[0].api
    # one good capture first, so the measure starts from a working fleet
    m, err = time_sample(api, sample_body(a, a.offset), 0.01, a.agents)
    print(f"  before the kill: sample over every PoP {m:.0f} ms {err or 'ok'}")
    la0 = loadavg()
    attempts = []
    lock = threading.Lock()
    stop = threading.Event()
    reconnected = {}

    def attempt(k, t_kill):
        tc = time.monotonic() - t_kill
        try:
            st, raw = api.call("POST", api.pcaps(), sample_body(a, a.offset))
            if st != 200:
                with lock:
                    attempts.append((tc, None, False, f"create {st}"))
                return
            cid = json.loads(raw)["result"]["id"]
            res, _ = wait_final(api, cid, 0.05, timeout=60)
            td = time.monotonic() - t_kill
            pops = res.get("pops", [])
            done = sum(1 for p in pops if p["status"] == "done")
            ok = res["status"] == "success" and done == a.agents
            with lock:
                attempts.append((tc, td, ok, f"{res['status']} {done}/{len(pops)} done"))
            if ok:
                stop.set()
        except Exception as e:  # noqa: BLE001 - reported
            with lock:
                attempts.append((tc, None, False, f"error {e}"))

    log(f"kill -9 {busiest.name} (pid {busiest.pid}, {counts[busiest.name]} agents)")
    t_kill = time.monotonic()
    os.kill(busiest.pid, signal.SIGKILL)
    pool = ThreadPoolExecutor(max_workers=64)
    k = 0
    while not stop.is_set() and time.monotonic() - t_kill < a.max_wait:
        pool.submit(attempt, k, t_kill)
        k += 1
        # reconnection progress, beside
        total = sum(max(0, c.connected()) for c in survivors)
        if total >= a.agents and "all" not in reconnected:
            reconnected["all"] = time.monotonic() - t_kill
        stop.wait(a.every)
    while "all" not in reconnected and time.monotonic() - t_kill < a.max_wait:
        if sum(max(0, c.connected()) for c in survivors) >= a.agents:
            reconnected["all"] = time.monotonic() - t_kill
        time.sleep(0.1)
    pool.shutdown(wait=True)
    la1 = loadavg()
    attempts.sort()
    good = [x for x in attempts if x[2]]
    print(f"  every agent connected to a survivor again after {reconnected.get('all', float('nan')):.2f} s")
    if good:
        g = good[0]
        print(f"  first sample capture answered by every PoP: created {g[0]:.2f} s after the kill, "
              f"success {g[1]:.2f} s after the kill")
    else:
        print(f"  no capture answered by every PoP within {a.max_wait} s")
    for x in attempts[:: max(1, len(attempts) // 12)]:
        print(f"    attempt created +{x[0]:.2f} s: ended +{x[1] if x[1] is not None else float('nan'):.2f} s, {x[3]}")
    print(f"  loadavg before {la0} / after {la1}")


def etcd_window(env, seconds, pids):
    e = env.etcd
    stats = {p: ProcStat(p) for p in pids}
    r0, m0, t0 = e.revision(), e.metrics(), time.monotonic()
    c0 = {p: s.ticks() for p, s in stats.items()}
    time.sleep(seconds)
    r1, m1, t1 = e.revision(), e.metrics(), time.monotonic()
    c1 = {p: s.ticks() for p, s in stats.items()}
    dt = t1 - t0
    rates = {k: (m1.get(k, 0) - m0.get(k, 0)) / dt for k in m1 if not k.startswith("db_")}
    cpu = {p: 100.0 * (c1[p] - c0[p]) / CLK_TCK / dt for p in pids}
    return {"writes_per_s": (r1 - r0) / dt, "rates": rates, "cpu": cpu, "db_mib": m1.get("db_bytes", 0) / 2**20,
            "seconds": dt}


def fmt_rates(rates, unit="/s"):
    keep = {k: v for k, v in rates.items() if v >= 0.05}
    return ", ".join(f"{k} {v:.1f}{unit}" for k, v in sorted(keep.items()))


def run_anchor(a):
    script = os.path.join(REPO, "..", "shared", "bench", "etcd.sh")
    script = os.path.normpath(script)
    if not os.path.exists(script):
        script = "/work/shared/bench/etcd.sh"
    cmd = ["bash", script, "-n", str(a.anchor_reps), "-d", str(a.anchor_seconds), "-c", a.anchor_clients, "-e", "0"]
    if a.check_perf:
        cmd += ["-C", a.check_perf]
    log("anchor: " + " ".join(cmd))
    out = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True).stdout
    return out


def scenario_etcd(env, a):
    api, dest = start_full_setup(env, a)
    pids = [c.pid for c in env.coordinators] + [env.etcd.proc.pid] + [p.pid for p in env.sims]
    la0 = loadavg()
    idle = etcd_window(env, a.seconds, pids)
    la1 = loadavg()
    tl = a.seconds + 240
    creates = []
    for i in range(a.captures):
        t0 = time.perf_counter()
        st, raw = api.call("POST", api.pcaps(), full_body(a, dest, tl), timeout=120)
        creates.append(((time.perf_counter() - t0) * 1000, st))
        log(f"full capture {i + 1}/{a.captures}: {st} in {creates[-1][0]:.0f} ms"
            + ("" if st == 200 else f": {raw[:200]!r}"))
    # Every full capture that exists (a create answered 503 may still have been made); the
    # list itself may fail while etcd is overwhelmed: ask again for a while.
    ids = None
    for _ in range(30):
        st, raw = api.call("GET", api.pcaps(), timeout=60)
        if st == 200:
            ids = [r["id"] for r in json.loads(raw)["result"] if r.get("type") == "full"]
            break
        log(f"capture list: {st}: {raw[:200]!r}; asking again")
        time.sleep(2)
    if ids is None:
        raise RuntimeError("the captures could not be listed: the state store stayed unavailable")
    for cid in ids:
        try:
            wait_final(api, cid, 0.5, timeout=a.wait, done=all_capturing(a.agents))
        except RuntimeError as e:
            log(f"  {e}")
    running = 0
    for cid in ids:
        st, raw = api.call("GET", api.pcaps("/" + cid))
        running += sum(1 for pop in (json.loads(raw).get("result") or {}).get("pops", []) if pop["status"] == "running")
    log(f"{len(ids)} full captures, {running} PoP-captures running")
    time.sleep(5)
    la2 = loadavg()
    busy = etcd_window(env, a.seconds, pids)
    la3 = loadavg()
    running_after = 0
    for cid in ids:
        st, raw = api.call("GET", api.pcaps("/" + cid))
        running_after += sum(1 for pop in (json.loads(raw).get("result") or {}).get("pops", [])
                             if pop["status"] == "running")
    print(f"\nRESULT etcd: {a.agents} PoPs, {a.replicas} replica(s), rate {a.rate} pps/agent; windows of {a.seconds} s")
    print(f"  idle (agents connected, no capture): {idle['writes_per_s']:.1f} writes/s (revision delta); "
          f"CPU {idle['cpu']}; loadavg {la0} / {la1}")
    print(f"    etcd ops: {fmt_rates(idle['rates'])}")
    print(f"  creates: " + ", ".join(f"{ms:.0f} ms ({st})" for ms, st in creates))
    print(f"  {len(ids)} full captures, {running} / {running_after} PoP-captures running at the window's start / end")
    print(f"  {len(ids)} full captures x {a.agents} PoPs running: {busy['writes_per_s']:.1f} writes/s "
          f"(revision delta); CPU {busy['cpu']}; db {busy['db_mib']:.1f} MiB; loadavg {la2} / {la3}")
    print(f"    etcd ops: {fmt_rates(busy['rates'])}")
    for cid in ids:
        api.call("PUT", api.pcaps(f"/{cid}/stop"), timeout=120)
    if a.no_anchor:
        return
    # The anchor in the same run, with this setup stopped (so it has the machine to itself).
    env.procs.stop_all()
    out = run_anchor(a)
    print("\n--- etcd.sh anchor ---")
    print(out)
    anchor = None
    for line in out.splitlines():
        parts = line.split()
        # summary: "anchor  32  3  1,386 [657..2,114] ..." (tool, clients, n, puts/s median): the
        # last one is the widest client count
        if line.startswith("anchor") and len(parts) >= 4 and parts[1].isdigit():
            try:
                anchor = (int(parts[1]), float(parts[3].replace(",", "")))
            except ValueError:
                pass
    if anchor:
        print(f"RESULT etcd ratio: {busy['writes_per_s']:.1f} writes/s / anchor {anchor[1]:.0f} puts/s "
              f"at {anchor[0]} clients = {100 * busy['writes_per_s'] / anchor[1]:.1f} %")


def scenario_leader(env, a):
    env.start_etcd()
    env.start_coordinators(1)
    c = env.coordinators[0]
    env.start_agents(a.agents, a.agents, ["pop"], a.rate, 1)
    time.sleep(a.settle)
    pids = [c.pid]
    la0 = loadavg()
    w0 = etcd_window(env, a.seconds, pids)
    la1 = loadavg()
    stored0 = env.etcd.count("/scale/")
    print(f"\nRESULT leader, ~0 captures stored ({stored0} keys under /scale/): coordinator CPU {w0['cpu'][c.pid]:.2f} %,"
          f" etcd writes {w0['writes_per_s']:.2f}/s, db {w0['db_mib']:.1f} MiB, loadavg {la0} / {la1}")
    print(f"    etcd ops: {fmt_rates(w0['rates'])}")
    log(f"creating {a.captures} sample captures, {a.concurrency} at a time")
    api = c.api
    made = [0]
    errs = []
    lock = threading.Lock()
    t0 = time.monotonic()

    def one(_):
        body = {"system": "magic-transit", "type": "simple", "time_limit": 1, "packet_limit": 10,
                "offset_time": rfc3339(time.time() - 2)}
        st, raw = api.call("POST", api.pcaps(), body)
        if st != 200:
            with lock:
                errs.append(f"{st} {raw[:200]!r}")
            return
        cid = json.loads(raw)["result"]["id"]
        res, _ = wait_final(api, cid, 0.02, timeout=120)
        with lock:
            made[0] += 1
            if made[0] % 1000 == 0:
                log(f"  {made[0]} finished ({made[0] / (time.monotonic() - t0):.0f}/s)")

    with ThreadPoolExecutor(max_workers=a.concurrency) as pool:
        list(pool.map(one, range(a.captures)))
    log(f"{made[0]} captures finished in {time.monotonic() - t0:.0f} s, {len(errs)} refused {errs[:2]}")
    time.sleep(a.settle)
    perf = Perf(env, c.pid, min(a.perf, a.seconds), "leader") if a.perf else None
    la2 = loadavg()
    w1 = etcd_window(env, a.seconds, pids)
    la3 = loadavg()
    if perf:
        perf.finish()
    stored1 = env.etcd.count("/scale/")
    print(f"RESULT leader, {made[0]} finished captures stored ({stored1} keys under /scale/): coordinator CPU "
          f"{w1['cpu'][c.pid]:.2f} %, etcd writes {w1['writes_per_s']:.2f}/s, db {w1['db_mib']:.1f} MiB, "
          f"loadavg {la2} / {la3}")
    print(f"    etcd ops: {fmt_rates(w1['rates'])}")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bin", default=os.environ.get("EDGECAP_BIN", os.path.join(REPO, "target", "release")),
                   help="directory of edgecap, edgecap-coordinator, edgecap-bench (default: %(default)s)")
    p.add_argument("--tmp", default=None, help="parent of the temporary work dir (default: $TMPDIR or /tmp)")
    p.add_argument("--keep", action="store_true", help="keep the work dir (logs, perf data)")
    p.add_argument("--etcd-compaction", metavar="MODE:RETENTION", default=etcd_compaction("periodic:1m"),
                   type=etcd_compaction, help="etcd's auto-compaction, e.g. periodic:1m, revision:20000 or none "
                   "(default: periodic:1m, as deploy/kubernetes runs etcd; before 2026-12-02: none)")
    p.add_argument("--sim-stack-cache-mib", type=int, default=1024,
                   help="glibc's cache of thread stacks in each simulator process (40: glibc's default)")
    p.add_argument("--perf", type=int, default=0, metavar="S",
                   help="perf record -g the (first) coordinator for S seconds during the measure")
    p.add_argument("--perf-out", default=None, help="directory for the perf reports (default: the work dir)")
    sub = p.add_subparsers(dest="scenario", required=True)

    def common(sp, agents, rate, sim_procs=1, settle=3):
        sp.add_argument("--agents", type=int, default=agents, help="simulated agents (default %(default)s)")
        sp.add_argument("--rate", type=int, default=rate, help="packets/s each agent's source plays (default %(default)s)")
        sp.add_argument("--sim-procs", type=int, default=sim_procs, help="simulator processes (default %(default)s)")
        sp.add_argument("--settle", type=float, default=settle, help="seconds to wait once connected")

    s = sub.add_parser("sample", help="sample capture create -> success")
    common(s, 300, 5)
    s.add_argument("--pops", type=int, default=0, help="PoP names (default: one per agent)")
    s.add_argument("--replicas", type=int, default=1)
    s.add_argument("--samples", type=int, default=200)
    s.add_argument("--warmup", type=int, default=5)
    s.add_argument("--offset", type=float, default=2.0, help="window ends this many s ago; -1: default window (now)")
    s.add_argument("--time-limit", type=int, default=1, help="window length, s")
    s.add_argument("--packet-limit", type=int, default=10000)
    s.add_argument("--poll-ms", type=float, default=5)
    s.add_argument("--gap-ms", type=float, default=0)

    s = sub.add_parser("full", help="full capture create -> every PoP running")
    common(s, 300, 5)
    s.add_argument("--replicas", type=int, default=1)
    s.add_argument("--colo", default="fc")
    s.add_argument("--samples", type=int, default=50)
    s.add_argument("--warmup", type=int, default=2)
    s.add_argument("--time-limit", type=int, default=5)
    s.add_argument("--stop", action="store_true", help="stop each capture once every PoP runs")
    s.add_argument("--timeline", action="store_true",
                   help="log the steps of each start (edgecap_timeline=debug) and show where the time went")
    s.add_argument("--poll-ms", type=float, default=20)
    s.add_argument("--perf-starts", action="store_true",
                   help="perf record the whole machine (flat, 999 Hz) and report it over the starts only "
                        "(POST -> every PoP running), by process and symbol")
    s.add_argument("--perf-starts-of", metavar="NAME", default=None,
                   help="with --perf-starts: record only process NAME (c1, sim0, etcd...) with DWARF call graphs")
    s.add_argument("--perf-hz", type=int, default=299, help="sampling rate with --perf-starts-of")
    s.add_argument("--gap", type=float, default=0,
                   help="seconds to wait between a capture's end and the next POST")
    s.add_argument("--series", action="store_true",
                   help="print each start's latency and each process's CPU per start, first and last tenth")

    s = sub.add_parser("idle", help="coordinator RSS and CPU with N connected idle agents")
    common(s, 1000, 0, 2, 20)
    s.add_argument("--seconds", type=float, default=60)

    s = sub.add_parser("spread", help="agents over replicas; kill -9 the busiest; time to answering again")
    common(s, 1000, 5, 2, 5)
    s.add_argument("--replicas", type=int, default=3)
    s.add_argument("--offset", type=float, default=2.0)
    s.add_argument("--time-limit", type=int, default=1)
    s.add_argument("--packet-limit", type=int, default=10000)
    s.add_argument("--every", type=float, default=0.5, help="start a sample capture every S seconds after the kill")
    s.add_argument("--max-wait", type=float, default=90)
    s.add_argument("--no-kill", action="store_true")

    s = sub.add_parser("etcd", help="etcd writes/s with P PoPs x C running full captures, then the etcd.sh anchor")
    common(s, 300, 5, 1, 5)
    s.add_argument("--replicas", type=int, default=1)
    s.add_argument("--colo", default="fc")
    s.add_argument("--captures", type=int, default=10)
    s.add_argument("--seconds", type=float, default=30)
    s.add_argument("--wait", type=float, default=120, help="seconds to wait for each capture's PoPs to run")
    s.add_argument("--no-anchor", action="store_true")
    s.add_argument("--anchor-reps", type=int, default=3)
    s.add_argument("--anchor-seconds", type=int, default=10)
    s.add_argument("--anchor-clients", default="1 8 32")
    s.add_argument("--check-perf", default="", help="also etcdctl check perf --load X (etcd.sh -C)")

    s = sub.add_parser("leader", help="leader's work with ~0 vs N finished captures stored")
    common(s, 10, 5, 1, 5)
    s.add_argument("--captures", type=int, default=10000)
    s.add_argument("--concurrency", type=int, default=8)
    s.add_argument("--seconds", type=float, default=60)

    a = p.parse_args()
    env = Env(a)

    def on_signal(sig, _frame):
        raise SystemExit(128 + sig)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    log(f"scenario {a.scenario}; loadavg {loadavg()}; {os.cpu_count()} cores")
    try:
        {"sample": scenario_sample, "full": scenario_full, "idle": scenario_idle, "spread": scenario_spread,
         "etcd": scenario_etcd, "leader": scenario_leader}[a.scenario](env, a)
    finally:
        env.close()


if __name__ == "__main__":
    main()
