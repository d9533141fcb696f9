"""The web page in a real browser: Debian's headless Chromium, driven by Playwright.

Usage: python test_page.py [EDGECAP_BIN]
  EDGECAP_BIN       the `edgecap` binary (default: target/debug/edgecap of this workspace)
  EDGECAP_CHROMIUM  the browser (default: /usr/bin/chromium; never a downloaded one)
  EDGECAP_WEB_SCREENSHOTS  a directory to keep a screenshot of each step in (optional)

Starts s3s-fs and `edgecap up` (a coordinator and a local agent on `lo`, as root) on free
ports in a temporary directory, then, in the page: signs in with the keyboard (a wrong token
first: the API's message next to the token field); refuses time_limit 301 with the API's
message next to that field; creates a sample capture of UDP datagrams it sent, with the
keyboard only, sees it succeed in the detail view (per-PoP table), previews its packets (time,
PoP, source, destination, protocol, length) and downloads it (a pcap); sees the agents by PoP
with their lookback; proves bucket ownership (the challenge file's name shown, a wrong text
refused next to its field, the file's text validates it) and deletes a second one; refuses a
full capture into an unvalidated bucket next to destination_conf; a dry run of the full
capture: an unknown colo in colo_names refused next to that field, then the answer shown (the
PoP and its agent with their matching rate, the colos, no offline PoP, the end by time_limit)
with no capture created; runs the full capture (clock_correction on) into s3s-fs, seeing its
progress while it runs and its end (`success`, the merged object in the bucket, each PoP's
clock offset). Throughout: every form field has a label, every control is reachable with Tab, and
there is no console error except Chromium's own line for each error the test provoked.
Every process and the temporary directory are removed, whatever happens. Exit status 0: passed.
"""
import contextlib
import ctypes
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

from playwright.sync_api import expect, sync_playwright

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EDGECAP = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "target", "debug", "edgecap")
CHROMIUM = os.environ.get("EDGECAP_CHROMIUM", "/usr/bin/chromium")
SHOTS = os.environ.get("EDGECAP_WEB_SCREENSHOTS")
ACCOUNT = "webacct"
TOKEN = "web-page-token-0123456789abcdef"
ACCESS_KEY, SECRET_KEY = "edgecapwebkey", "edgecapwebsecret"
BUCKET = "webbucket"
FULL_SECONDS = 6  # the full capture's time_limit: long enough to see it running
PCAP_MAGICS = (b"\xa1\xb2\xc3\xd4", b"\xd4\xc3\xb2\xa1", b"\xa1\xb2\x3c\x4d", b"\x4d\x3c\xb2\xa1")
FIELD_TAGS = "input:not([type=hidden]), select, textarea"
CLOCK = re.compile(r"[+-][\d,.]+ ms ± [\d,.]+ ms")  # a clock offset as the page writes it
FOCUSABLE = "a[href], button:not([disabled]), input:not([type=hidden]):not([disabled]), select:not([disabled]), textarea"

expect.set_options(timeout=20_000)


def log(message):
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def die_with_parent():
    """In a child before exec: killed if this script dies without cleaning up (SIGKILL)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def wait_for(what, seconds, probe):
    deadline = time.monotonic() + seconds
    while True:
        got = probe()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {seconds} s waiting for {what}")
        time.sleep(0.1)


def api_get(port, path):
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(request, timeout=5) as r:
        return json.load(r)["result"]


def pcap_records(data):
    """The number of records of a classic pcap file (either byte order, either resolution)."""
    assert data[:4] in PCAP_MAGICS, data[:4]
    order = "little" if data[:4] in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else "big"
    at, count = 24, 0
    while at < len(data):
        assert at + 16 <= len(data), f"a record header cut at byte {at}"
        at += 16 + int.from_bytes(data[at + 8:at + 12], order)
        count += 1
    assert at == len(data), f"the last record is cut at byte {len(data)}"
    return count


def send_udp(port, count, gap=0.0, payload=b"edgecap-web-test"):
    """Datagrams to 127.0.0.1:port from one socket (a bound receiver keeps ICMP errors away)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
        for _ in range(count):
            tx.sendto(payload, ("127.0.0.1", port))
            if gap:
                time.sleep(gap)
        return tx.getsockname()[1]


class Stack:
    """s3s-fs and `edgecap up` in a temporary directory; stop() ends both and removes it."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="edgecap-web-")
        self.procs = []
        self.s3_dir = os.path.join(self.dir, "s3")
        os.makedirs(os.path.join(self.s3_dir, BUCKET))
        self.s3_port, self.port = free_port(), free_port()
        self.log_path = os.path.join(self.dir, "up.log")

    def start(self):
        s3_log = open(os.path.join(self.dir, "s3s-fs.log"), "wb")
        self.procs.append(subprocess.Popen(
            ["s3s-fs", "--host", "127.0.0.1", "--port", str(self.s3_port), "--access-key", ACCESS_KEY,
             "--secret-key", SECRET_KEY, self.s3_dir], stdout=s3_log, stderr=subprocess.STDOUT, preexec_fn=die_with_parent))
        credentials = os.path.join(self.dir, "s3-credentials.json")
        with open(credentials, "w") as f:
            json.dump({BUCKET: {"access_key_id": ACCESS_KEY, "secret_access_key": SECRET_KEY},
                       "otherbucket": {"access_key_id": ACCESS_KEY, "secret_access_key": SECRET_KEY}}, f)
        up_log = open(self.log_path, "wb")
        self.up = subprocess.Popen(
            [EDGECAP, "up", "--data-dir", os.path.join(self.dir, "data"), "--listen", f"127.0.0.1:{self.port}",
             "--account", ACCOUNT, "--token", TOKEN, "--s3-credentials", credentials],
            stdout=up_log, stderr=subprocess.STDOUT, preexec_fn=die_with_parent)
        self.procs.append(self.up)
        for name, port in (("s3s-fs", self.s3_port), ("edgecap up", self.port)):
            def listening(port=port):
                for p in self.procs:
                    assert p.poll() is None, f"{p.args[0]} exited with {p.returncode}:\n{self.log_tail()}"
                with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                    return True
                return False
            wait_for(f"{name} to listen on {port}", 30, listening)

        def agent():
            with contextlib.suppress(urllib.error.URLError, OSError):
                return [a for a in api_get(self.port, "/edgecap/v1/agents") if a.get("lookback")]
            return None
        self.agents = wait_for("the local agent", 30, agent)

    def destination(self, bucket=BUCKET, prefix="pcaps"):
        return f"s3://{bucket}/{prefix}?region=us-east-1&endpoint=http://127.0.0.1:{self.s3_port}"

    def object_path(self, key, bucket=BUCKET):
        return os.path.join(self.s3_dir, bucket, *key.split("/"))

    def log_tail(self, lines=60):
        with contextlib.suppress(OSError), open(self.log_path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])
        return ""

    def stop(self):
        for p in reversed(self.procs):
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


class Page:
    """The page under test, with what the browser reported."""

    def __init__(self, page, base):
        self.page, self.base = page, base
        self.console_errors, self.page_errors, self.error_responses = [], [], []
        self.provoked = []  # (method, path, status) of error answers the test asked for
        page.on("console", lambda m: m.type == "error" and self.console_errors.append((m.text, m.location.get("url", ""))))
        page.on("pageerror", lambda e: self.page_errors.append(str(e)))
        page.on("response", self._response)
        self.shots = 0

    def _response(self, response):
        if response.status >= 400:
            path = urllib.parse.urlparse(response.url).path
            self.error_responses.append((response.request.method, path, response.status))

    def provoke(self, method, path, status):
        self.provoked.append((method, path, status))

    def shot(self, name):
        if SHOTS:
            os.makedirs(SHOTS, exist_ok=True)
            self.shots += 1
            self.page.screenshot(path=os.path.join(SHOTS, f"{self.shots:02d}-{name}.png"), full_page=True)

    def focused(self):
        return self.page.evaluate("document.activeElement && (document.activeElement.id || document.activeElement.dataset.key || document.activeElement.tagName)")

    def tab_to(self, element_id, most=80):
        """Presses Tab until the element with this id has the focus (keyboard only)."""
        for _ in range(most):
            if self.focused() == element_id:
                return
            self.page.keyboard.press("Tab")
        raise AssertionError(f"#{element_id} was not reached with {most} Tabs (focus on {self.focused()})")

    def type_into(self, element_id, text):
        self.tab_to(element_id)
        self.page.keyboard.press("Control+A")
        self.page.keyboard.press("Delete")
        self.page.keyboard.type(text)

    def check_labels(self, view):
        """Every visible form field has a <label> naming it (and so an accessible name)."""
        offenders = self.page.evaluate(
            """(sel) => [...document.querySelectorAll(sel)].filter((e) => e.getClientRects().length > 0)
                 .filter((e) => !e.labels || e.labels.length === 0 || ![...e.labels].some((l) => l.textContent.trim()))
                 .map((e) => e.outerHTML.slice(0, 120))""", FIELD_TAGS)
        assert not offenders, f"{view}: fields without a label: {offenders}"
        count = self.page.evaluate("(sel) => [...document.querySelectorAll(sel)].filter((e) => e.getClientRects().length > 0).length", FIELD_TAGS)
        for i in range(count):
            field = self.page.locator(FIELD_TAGS).locator("visible=true").nth(i)
            name = field.evaluate("(e) => e.labels[0].textContent.replace(/\\s+/g, ' ').trim()")
            # The label is the field's accessible name: it is found by it.
            assert self.page.get_by_label(name, exact=True).count() >= 1, f"{view}: no field found by the label {name!r}"

    def check_tab_reaches_everything(self, view):
        """Every visible control of the view gets the focus by Tab alone."""
        wanted = self.page.evaluate(
            """(sel) => { document.querySelectorAll("[data-tabcheck]").forEach((e) => { delete e.dataset.tabcheck; });
                 const all = [...document.querySelectorAll(sel)].filter((e) => e.getClientRects().length > 0);
                 all.forEach((e, i) => { e.dataset.tabcheck = String(i); }); return all.length; }""", FOCUSABLE)
        seen = set()
        for _ in range(2 * wanted + 6):
            self.page.keyboard.press("Tab")
            mark = self.page.evaluate("document.activeElement && document.activeElement.dataset.tabcheck")
            if mark is not None:
                seen.add(int(mark))
            if len(seen) == wanted:
                break
        missing = self.page.evaluate(
            """([sel, seen]) => [...document.querySelectorAll(sel)].filter((e) => e.dataset.tabcheck && !seen.includes(+e.dataset.tabcheck))
                 .map((e) => e.outerHTML.slice(0, 100))""", [FOCUSABLE, sorted(seen)])
        assert len(seen) == wanted and not missing, f"{view}: not reachable with Tab: {missing}"
        log(f"{view}: {wanted} controls reachable with Tab, fields labelled")


def field_error(page, input_id, message):
    """The API's message is next to the field it names, tied to it for assistive technology."""
    error = page.locator(f"#{input_id}-error")
    expect(error).to_have_text(message)
    field = page.locator(f"#{input_id}")
    expect(field).to_have_attribute("aria-invalid", "true")
    described = field.get_attribute("aria-describedby") or ""
    assert f"{input_id}-error" in described.split(), f"#{input_id} aria-describedby={described!r}"
    assert field.evaluate("(e) => e.nextElementSibling && e.nextElementSibling.id") == f"{input_id}-error"


def run(stack, browser):
    context = browser.new_context(accept_downloads=True, viewport={"width": 1280, "height": 900})
    t = Page(context.new_page(), f"http://127.0.0.1:{stack.port}")
    page = t.page
    pcaps = f"/client/v4/accounts/{ACCOUNT}/pcaps"
    try:
        page.goto(f"{t.base}/")
        expect(page.locator("#signin-heading")).to_be_visible()
        t.check_labels("sign in")
        t.check_tab_reaches_everything("sign in")

        # Sign in with the keyboard only; a wrong token first.
        t.type_into("signin-account", ACCOUNT)
        t.type_into("signin-token", "not-the-token-0123456789")
        t.provoke("GET", pcaps, 401)
        page.keyboard.press("Enter")
        expect(page.locator("#signin-token-error")).to_contain_text("token")
        assert page.evaluate("document.activeElement.id") == "signin-token", "the refused field gets the focus"
        field_error(page, "signin-token", page.locator("#signin-token-error").inner_text())
        t.shot("signin-refused")
        page.keyboard.press("Control+A")
        page.keyboard.type(TOKEN)
        page.keyboard.press("Enter")
        expect(page.locator("#captures-heading")).to_be_visible()
        assert page.evaluate("sessionStorage.getItem('edgecap.token')") == TOKEN
        assert page.evaluate("document.activeElement.id") == "captures-heading", "focus moves to the new view"
        log("signed in with the keyboard")
        t.check_labels("captures")
        t.check_tab_reaches_everything("captures")

        # Bad input: the API's message next to the field it names.
        page.get_by_label("time_limit (seconds back)").fill("301")
        t.provoke("POST", pcaps, 400)
        page.locator("#create-sample").click()
        field_error(page, "sample-time_limit", "time_limit: must be between 1 and 300, got 301")
        assert page.evaluate("document.activeElement.id") == "sample-time_limit"
        t.shot("time-limit-refused")
        log("time_limit 301: the API's message is next to the field")

        # A sample capture, keyboard only, of datagrams sent before it.
        sample_port = free_port()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx:
            rx.bind(("127.0.0.1", sample_port))
            sample_sport = send_udp(sample_port, 5, gap=0.02)
        time.sleep(0.6)  # the lookback holds a packet within ~150 ms
        page.locator("#captures-heading").focus()
        t.type_into("sample-time_limit", "60")
        t.type_into("sample-protocol", "17")
        t.type_into("sample-destination_port", str(sample_port))
        t.tab_to("create-sample")
        page.keyboard.press("Space")
        expect(page).to_have_url(re.compile(r"#/captures/[0-9a-f]{32}$"))
        sample_id = page.url.rsplit("/", 1)[1]
        expect(page.locator("#capture-status")).to_have_text("success")
        assert page.evaluate("document.activeElement.id") == "capture-heading"
        assert page.locator("#sample-time_limit-error").inner_text() == "", "the error is cleared"
        pop = page.locator("#pops-list tr[data-pop=local]")
        expect(pop.locator("td").nth(2)).to_have_text("done")
        expect(pop.locator("td").nth(3)).to_have_text("5")
        clock = pop.locator("td").nth(6).inner_text()
        assert CLOCK.fullmatch(clock), f"the PoP's clock offset: {clock!r}"
        log(f"sample capture {sample_id} created with the keyboard: success, PoP local done with 5 packets, clock {clock}")

        # Its first packets: time, PoP, source, destination, protocol, length.
        rows = page.locator("#preview-list tr")
        expect(rows).to_have_count(5)
        for i in range(5):
            cells = [c.strip() for c in rows.nth(i).locator("td").all_inner_texts()]
            assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6,9}", cells[1]), cells
            assert cells[2:] == ["local", f"127.0.0.1:{sample_sport}", f"127.0.0.1:{sample_port}", "UDP",
                                 str(14 + 20 + 8 + 16)], cells
        times = [rows.nth(i).locator("td").nth(1).inner_text() for i in range(5)]
        assert times == sorted(times), times
        expect(page.locator("#preview-note")).to_contain_text("5 packets")
        t.shot("sample-detail")
        log("preview: 5 UDP packets from PoP local, in time order")
        t.check_labels("capture")
        t.check_tab_reaches_everything("capture")

        # Download through the page (keyboard): a pcap of the 5 packets.
        page.locator("#capture-heading").focus()
        t.tab_to("download")
        with page.expect_download() as info:
            page.keyboard.press("Enter")
        download = info.value
        assert download.suggested_filename == f"pcap_{sample_id}.pcap", download.suggested_filename
        with open(download.path(), "rb") as f:
            data = f.read()
        assert pcap_records(data) == 5 and len(data) == 24 + 5 * (16 + 58), len(data)
        log(f"downloaded {download.suggested_filename}: a pcap of {len(data)} bytes")

        # Back to the list (keyboard): the capture is there.
        page.locator("#capture-heading").focus()
        page.keyboard.press("Shift+Tab")
        assert t.focused() == "back-to-captures", t.focused()
        page.keyboard.press("Enter")
        expect(page.locator(f"#captures-list tr[data-id='{sample_id}'] .status")).to_have_text("success")

        # Agents by PoP, with their lookback.
        page.get_by_role("link", name="Agents").click()
        group = page.locator("#view-agents tbody[data-pop=local]")
        expect(group.locator("th")).to_contain_text("PoP local: 1 agent")
        agent = group.locator("tr[data-agent=local-agent] td")
        expect(agent.nth(0)).to_have_text("local-agent")
        expect(agent.nth(1)).to_have_text("lo")
        expect(agent.nth(3)).not_to_have_text("0")  # counters come with the agent's heartbeats (every 5 s)
        depth = agent.nth(2).inner_text()
        assert re.fullmatch(r"(at most )?\d+ (s|min \d+ s)", depth), depth
        assert int(agent.nth(3).inner_text().replace(",", "")) > 0, "the lookback holds packets"
        # The offset comes with a heartbeat after the agent's clock was measured: wait for it
        # as for the counters (the page refreshes the list).
        expect(agent.nth(7)).to_have_text(CLOCK, timeout=15_000)
        t.shot("agents")
        log(f"agents: PoP local, local-agent on lo, lookback depth {depth}")

        # Bucket ownership: challenge, its file's name, a wrong text, the right text.
        page.get_by_role("link", name="Bucket ownership").click()
        expect(page.locator("#ownership-heading")).to_be_visible()
        t.check_labels("ownership")
        destination = stack.destination()
        page.locator("#ownership-destination_conf").fill(destination)
        page.locator("#create-ownership").click()
        row = page.locator("#ownerships-list tr").filter(has_text=destination)
        expect(row.locator(".status")).to_have_text("pending")
        filename = row.locator(".challenge-file").inner_text()
        assert re.fullmatch(r"ownership-challenge-[0-9a-f]{32}\.txt", filename), filename
        expect(page.locator("#challenge-note")).to_contain_text(filename)
        expect(page.locator("#message")).to_contain_text(filename)
        challenge_path = stack.object_path(f"pcaps/{filename}")
        with open(challenge_path) as f:
            challenge = f.read().strip()
        assert page.evaluate("document.activeElement.id") == "validate-ownership_challenge"
        assert page.locator("#validate-destination_conf").input_value() == destination
        t.provoke("POST", f"{pcaps}/ownership/validate", 400)
        page.keyboard.type("not-the-challenge")
        page.keyboard.press("Enter")
        field_error(page, "validate-ownership_challenge",
                    "ownership_challenge: does not match the text of the challenge file written into the bucket")
        page.keyboard.press("Control+A")
        page.keyboard.type(challenge)
        page.keyboard.press("Enter")
        expect(row.locator(".status")).to_have_text("success")
        expect(page.locator("#validate-ownership_challenge-error")).to_have_text("")
        t.shot("ownership")
        log(f"ownership: challenge file {filename} shown, wrong text refused next to its field, validated")

        # A second one, deleted.
        other = stack.destination(prefix="other")
        page.locator("#ownership-destination_conf").fill(other)
        page.locator("#create-ownership").click()
        other_row = page.locator("#ownerships-list tr").filter(has_text=other)
        expect(other_row.locator(".status")).to_have_text("pending")
        t.check_tab_reaches_everything("ownership")
        other_row.get_by_role("button", name=re.compile("^Delete")).click()
        expect(other_row).to_have_count(0)
        expect(page.locator("#ownerships-list tr")).to_have_count(1)
        assert [o["destination_conf"] for o in api_get(stack.port, f"{pcaps}/ownership")] == [destination]
        log("a second ownership created and deleted")

        # A full capture into a bucket never validated: refused next to destination_conf.
        page.get_by_role("link", name="Captures").click()
        expect(page.locator("#full-destination_conf")).to_have_value(destination)  # the validated one is offered
        page.get_by_label("colo_name", exact=True).fill("local")
        page.locator("#full-destination_conf").fill(stack.destination(bucket="otherbucket"))
        page.get_by_label("time_limit (seconds)", exact=True).fill(str(FULL_SECONDS))
        t.provoke("POST", pcaps, 403)
        page.locator("#create-full").click()
        expect(page.locator("#full-destination_conf-error")).to_contain_text("destination_conf: ")
        assert page.evaluate("document.activeElement.id") == "full-destination_conf"
        log(f"unvalidated bucket: {page.locator('#full-destination_conf-error').inner_text()}")

        # The full capture: a dry run first, then progress while it runs, success, the merged object.
        full_port = free_port()
        page.locator("#full-destination_conf").fill(destination)
        page.locator("#full-protocol").fill("17")
        page.locator("#full-destination_port").fill(str(full_port))
        stop_sending = threading.Event()

        def traffic():
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx:
                rx.bind(("127.0.0.1", full_port))
                while not stop_sending.is_set():
                    send_udp(full_port, 1)
                    time.sleep(0.05)
        sender = threading.Thread(target=traffic, daemon=True)
        sender.start()
        try:
            dry_run(t, pcaps, stack)
            page.locator("#full-clock_correction").check()
            page.locator("#create-full").click()
            expect(page).to_have_url(re.compile(r"#/captures/[0-9a-f]{32}$"))
            full_id = page.url.rsplit("/", 1)[1]
            expect(page.locator("#progress")).to_be_visible()
            expect(page.locator("#progress-steps li[aria-current=step]")).to_have_text("running")
            page.wait_for_function("document.getElementById('progress-time').value > 0")
            expect(page.locator("#progress-time-text")).to_contain_text(f"of {FULL_SECONDS} s")
            expect(page.locator("#stop-capture")).to_be_visible()
            t.shot("full-running")
            log(f"full capture {full_id}: progress shown while running ({page.locator('#progress-packets-text').inner_text()})")
            expect(page.locator("#capture-status")).to_have_text("success", timeout=90_000)
        finally:
            stop_sending.set()
            sender.join()
        expect(page.locator("#progress")).to_be_hidden()
        pop = page.locator("#pops-list tr[data-pop=local] td")
        expect(pop.nth(2)).to_have_text("done")
        expect(pop.nth(7)).to_have_text("time_limit")
        clock = pop.nth(6).inner_text()
        assert CLOCK.fullmatch(clock), f"the PoP's clock offset: {clock!r}"
        expect(page.locator("#capture-summary")).to_contain_text("clock correction")
        packets = int(pop.nth(3).inner_text().replace(",", ""))
        assert packets > 0, "the datagrams sent while it ran"
        assert pop.nth(4).inner_text() not in ("—", "0 B")
        summary = page.locator("#capture-summary").inner_text()
        merged = f"s3://{BUCKET}/pcaps/pcap_{full_id}.pcap"
        assert merged in summary, summary
        with open(stack.object_path(f"pcaps/pcap_{full_id}.pcap"), "rb") as f:
            merged_data = f.read()
        assert pcap_records(merged_data) == packets, f"{pcap_records(merged_data)} records in the merged file, {packets} on the page"
        assert page.locator("#sample-file").is_hidden(), "a full capture is in the bucket, not downloaded"
        t.shot("full-done")
        log(f"full capture {full_id}: success, {packets} packets, {merged} ({len(merged_data)} bytes) in s3s-fs")
        t.check_labels("full capture")

        # The page's parser on what a sample file is not: pcapng with per-PoP interfaces, IPv6.
        check_parser(page)

        # No console error but Chromium's own line for each error answer the test provoked.
        expected = sorted(t.provoked)
        assert sorted(t.error_responses) == expected, f"error answers {sorted(t.error_responses)}, provoked {expected}"
        allowed = re.compile(r"^Failed to load resource: the server responded with a status of (\d{3})")
        unexpected = [e for e in t.console_errors if not allowed.match(e[0])]
        assert not unexpected, f"console errors: {unexpected}"
        assert len(t.console_errors) <= len(expected), f"console errors: {t.console_errors}"
        assert not t.page_errors, f"page errors: {t.page_errors}"
        log(f"no console error (the {len(t.console_errors)} lines are Chromium's for the {len(expected)} provoked errors)")
    except BaseException:
        with contextlib.suppress(Exception):
            print("---- page text\n" + page.locator("body").inner_text()[:4000], flush=True)
        print(f"---- console errors {t.console_errors}\n---- page errors {t.page_errors}", flush=True)
        with contextlib.suppress(Exception):
            t.shot("failure")
        raise
    finally:
        context.close()


def summary_of(locator):
    """A <dl class="summary"> as {term: description}."""
    terms = [x.strip() for x in locator.locator("dt").all_inner_texts()]
    return dict(zip(terms, [x.strip() for x in locator.locator("dd").all_inner_texts()]))


def dry_run(t, pcaps, stack):
    """The full capture form (colo_name local, a validated bucket, UDP to a port receiving
    datagrams) run dry: an unknown colo in colo_names refused next to that field; then, with
    the Dry run button pressed from the keyboard, the answer: PoP local and its agent with
    matching traffic, the colos, no offline PoP, the end by time_limit; no capture created."""
    page = t.page
    before = [c["id"] for c in api_get(stack.port, pcaps)]
    rows_before = page.locator("#captures-list tr").count()
    page.get_by_label(re.compile(r"^colo_names")).fill("local, nowhere")
    t.provoke("POST", pcaps, 422)
    page.locator("#dry-run-full").click()
    field_error(page, "full-colo_names", 'colo_names[1]: no PoP named "nowhere" or starting with it has ever connected')
    assert page.evaluate("document.activeElement.id") == "full-colo_names"
    expect(page.locator("#dry-run")).to_be_hidden()
    log(f"dry run with an unknown colo: {page.locator('#full-colo_names-error').inner_text()}")

    page.locator("#full-colo_names").fill("local")
    time.sleep(2.5)  # datagrams in the lookback's last ten seconds (up to a second ago)
    t.tab_to("dry-run-full")
    page.keyboard.press("Enter")
    expect(page.locator("#dry-run")).to_be_visible()
    expect(page.locator("#full-colo_names-error")).to_have_text("")
    assert page.evaluate("document.activeElement.id") == "dry-run-heading", "the answer gets the focus"
    expect(page.locator("#dry-run-heading")).to_have_text("Dry run: nothing was started")
    expect(page.locator("#message")).to_contain_text("nothing was started")
    row = page.locator("#dry-run-pops tr[data-pop=local] td")
    expect(row.nth(1)).to_have_text("local-agent")
    pps = float(row.nth(2).inner_text().replace(",", ""))
    assert pps > 0, f"matching packets/s at local: {pps}"
    assert re.fullmatch(r"[\d.]+ (B|KiB|MiB)/s", row.nth(3).inner_text()), row.nth(3).inner_text()
    assert row.nth(4).inner_text().strip() == "—", "no error"
    expect(page.locator("#dry-run-pops tr")).to_have_count(1)
    got = summary_of(page.locator("#dry-run-summary"))
    assert got["colos"] == "local", got
    assert got["offline PoPs"] == "none", got
    assert got["would end by"] == f"time_limit, after {FULL_SECONDS} s", got
    assert "17" in got["applied filter"] and str(got["total matching"]).endswith("/s"), got
    expect(page.locator("#dry-run-stale")).to_be_hidden()
    t.shot("dry-run")
    t.check_labels("captures with a dry run")
    t.check_tab_reaches_everything("captures with a dry run")
    # Nothing was created, in the API and in the page's list.
    assert [c["id"] for c in api_get(stack.port, pcaps)] == before
    expect(page.locator("#captures-list tr")).to_have_count(rows_before)
    # Editing the form says the answer is no longer the form's.
    page.locator("#full-time_limit").fill(str(FULL_SECONDS))
    expect(page.locator("#dry-run-stale")).to_be_visible()
    log(f"dry run: PoP local (local-agent) {pps} matching packets/s, ends by time_limit after {FULL_SECONDS} s; nothing created")


def check_parser(page):
    """pcapng (an interface named pop/agent/iface, nanosecond resolution) with IPv6/TCP over
    Ethernet and IPv4/ICMP over Linux cooked capture; classic pcap over raw IP."""
    def block(kind, body):
        body += b"\0" * (-len(body) % 4)
        n = 12 + len(body)
        return kind.to_bytes(4, "little") + n.to_bytes(4, "little") + body + n.to_bytes(4, "little")

    def option(code, value):
        return code.to_bytes(2, "little") + len(value).to_bytes(2, "little") + value + b"\0" * (-len(value) % 4)

    ipv6_tcp = (bytes(12) + b"\x86\xdd" + b"\x60\0\0\0\0\x14\x06\x40" + bytes.fromhex("20010db8000000000000000000000001")
                + bytes.fromhex("20010db8000100000000000000000000") + (443).to_bytes(2, "big") + (5555).to_bytes(2, "big") + bytes(16))
    sll_icmp = (bytes(14) + b"\x08\x00" + b"\x45\0\0\x1c\0\0\0\0\x40\x01\0\0" + bytes([10, 0, 0, 1]) + bytes([10, 0, 0, 2]) + bytes(8))
    shb = block(0x0A0D0D0A, (0x1A2B3C4D).to_bytes(4, "little") + b"\x01\0\0\0" + b"\xff" * 8)
    idb0 = block(1, (1).to_bytes(2, "little") + b"\0\0" + (160).to_bytes(4, "little")
                 + option(2, b"ams01/ams01-a/eth0") + option(9, b"\x09") + bytes(4))
    idb1 = block(1, (113).to_bytes(2, "little") + b"\0\0" + (160).to_bytes(4, "little") + option(2, b"fra02/fra02-a/any") + bytes(4))
    ts = 1_700_000_000_123_456_789

    def epb(iface, ts, data):
        return block(6, iface.to_bytes(4, "little") + (ts >> 32).to_bytes(4, "little") + (ts & 0xFFFFFFFF).to_bytes(4, "little")
                     + len(data).to_bytes(4, "little") + (len(data) + 100).to_bytes(4, "little") + data)
    ng = shb + idb0 + idb1 + epb(0, ts, ipv6_tcp) + epb(1, 1_700_000_000_123_457, sll_icmp)  # µs: the default
    raw = (b"\xd4\xc3\xb2\xa1\x02\0\x04\0" + bytes(8) + (65535).to_bytes(4, "little") + (101).to_bytes(4, "little")
           + (1_700_000_000).to_bytes(4, "little") + (42).to_bytes(4, "little") + len(sll_icmp[16:]).to_bytes(4, "little") * 2 + sll_icmp[16:])
    got = page.evaluate("""([ng, raw]) => [ng, raw].map((b) => EdgecapPcap.parse(new Uint8Array(b), 100))
        .map((r) => ({format: r.format, complete: r.complete, error: r.error,
                      packets: r.packets.map((p) => [p.time, p.iface, p.src, p.dst, p.protocol, p.length])}))""",
                        [list(ng), list(raw)])
    assert got[0] == {"format": "pcapng", "complete": True, "error": None, "packets": [
        ["2023-11-14 22:13:20.123456789", "ams01/ams01-a/eth0", "[2001:db8::1]:443", "[2001:db8:1::]:5555", "TCP", len(ipv6_tcp) + 100],
        ["2023-11-14 22:13:20.123457", "fra02/fra02-a/any", "10.0.0.1", "10.0.0.2", "ICMP", len(sll_icmp) + 100],
    ]}, got[0]
    assert got[1] == {"format": "pcap", "complete": True, "error": None, "packets": [
        ["2023-11-14 22:13:20.000042", None, "10.0.0.1", "10.0.0.2", "ICMP", len(sll_icmp) - 16]]}, got[1]
    damaged = page.evaluate("(b) => EdgecapPcap.parse(new Uint8Array(b), 100).error", list(raw[:24] + b"\0" * 8 + (1 << 30).to_bytes(4, "little") + bytes(4)))
    assert damaged and "captured length" in damaged, damaged
    log("parser: pcapng interfaces as PoPs, IPv6/TCP, Linux cooked, raw IP; damage reported")


def main():
    # A runner's SIGTERM (a timeout) unwinds like Ctrl-C: every process stopped, the directory removed.
    def interrupted(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGHUP, interrupted)
    assert os.path.exists(EDGECAP), f"{EDGECAP} is missing: cargo build --workspace first"
    assert os.path.exists(CHROMIUM), f"{CHROMIUM} is missing: scripts/setup.sh installs Debian's chromium"
    started = time.monotonic()
    stack = Stack()
    try:
        stack.start()
        log(f"edgecap up on 127.0.0.1:{stack.port}, s3s-fs on {stack.s3_port} (in {stack.dir})")
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
            try:
                run(stack, browser)
            finally:
                browser.close()
    except BaseException:
        print(f"---- edgecap up's log\n{stack.log_tail()}", flush=True)
        raise
    finally:
        stack.stop()
    log(f"passed in {time.monotonic() - started:.1f} s")


if __name__ == "__main__":
    main()
