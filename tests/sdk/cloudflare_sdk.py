"""The official Cloudflare Python SDK against edgecap, with only base_url changed.

Usage: python cloudflare_sdk.py BASE_URL ACCOUNT TOKEN [DESTINATION_CONF BUCKET_DIR]
With a destination (an S3-compatible bucket whose files are visible at BUCKET_DIR), the
bucket ownership calls and a full capture (with a stop) are exercised too.
Prints one JSON line with what it saw; exits non-zero on any mismatch.
"""
import json
import os
import socket
import sys
import time

import cloudflare

base_url, account, token = sys.argv[1:4]
client = cloudflare.Cloudflare(api_token=token, base_url=base_url, max_retries=0)
pcaps = client.magic_transit.pcaps

created = pcaps.create(
    account_id=account,
    system="magic-transit",
    type="simple",
    time_limit=60,
    packet_limit=100,
    filter_v1={"protocol": 1},
)
assert len(created.id) == 32, created
assert created.status == "pending", created.status

deadline = time.time() + 30
while True:
    got = pcaps.get(created.id, account_id=account)
    if got.status in ("success", "failed"):
        break
    assert time.time() < deadline, "capture did not finish"
    time.sleep(0.2)
assert got.status == "success", got

listed = [p.id for p in pcaps.list(account_id=account)]
assert created.id in listed, listed

data = pcaps.download.get(created.id, account_id=account).read()
assert data[:4] in (b"\xa1\xb2\xc3\xd4", b"\xd4\xc3\xb2\xa1"), data[:4]

# Errors surface as the SDK's typed exceptions, with our codes.
try:
    pcaps.create(account_id=account, system="magic-transit", type="simple", time_limit=0, packet_limit=1)
    raise AssertionError("time_limit=0 was accepted")
except cloudflare.BadRequestError as e:
    assert e.status_code == 400
    bad_request_code = e.body["errors"][0]["code"] if isinstance(e.body, dict) else None
try:
    pcaps.get("0" * 32, account_id=account)
    raise AssertionError("unknown id was found")
except cloudflare.NotFoundError as e:
    assert e.status_code == 404
try:
    pcaps.stop(created.id, account_id=account)
    raise AssertionError("a sample capture was stopped")
except cloudflare.BadRequestError:
    pass
owned = list(pcaps.ownership.get(account_id=account))

full = {}
if len(sys.argv) > 5:
    destination, bucket_dir = sys.argv[4:6]
    own = pcaps.ownership.create(account_id=account, destination_conf=destination)
    assert own.status == "pending", own
    prefix = destination.split("://", 1)[1].split("?", 1)[0].split("/", 1)
    challenge_path = os.path.join(bucket_dir, *(prefix[1:] + [own.filename]))
    try:
        pcaps.ownership.validate(account_id=account, destination_conf=destination, ownership_challenge="wrong")
        raise AssertionError("a wrong challenge validated")
    except cloudflare.BadRequestError as e:
        full["wrong_challenge_code"] = e.body["errors"][0]["code"]
    with open(challenge_path) as f:
        text = f.read().strip()
    valid = pcaps.ownership.validate(account_id=account, destination_conf=destination, ownership_challenge=text)
    assert valid.status == "success", valid

    def wait(pcap_id, statuses):
        deadline = time.time() + 60
        while True:
            got = pcaps.get(pcap_id, account_id=account)
            if got.status in statuses:
                return got
            assert time.time() < deadline, f"capture still {got.status}"
            time.sleep(0.1)

    cap = pcaps.create(account_id=account, system="magic-transit", type="full", time_limit=3,
                       colo_name="local", destination_conf=destination, filter_v1={"protocol": 17,
                       "destination_port": 9999}, packet_limit=10000)
    assert cap.status == "pending", cap
    wait(cap.id, ("running",))
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for _ in range(50):
        udp.sendto(b"x" * 64, ("127.0.0.1", 9999))
        time.sleep(0.005)
    done = wait(cap.id, ("success", "failed"))
    full["status"] = done.status
    full["packets_captured"] = (done.model_extra or {}).get("packets_captured", getattr(done, "packets_captured", None))
    full["object_key"] = (done.model_extra or {}).get("object_key")
    full["merged_exists"] = os.path.exists(os.path.join(bucket_dir, *(prefix[1:] + [full["object_key"] or "none"])))

    long = pcaps.create(account_id=account, system="magic-transit", type="full", time_limit=120,
                        colo_name="local", destination_conf=destination, filter_v1={"protocol": 17})
    wait(long.id, ("running",))
    pcaps.stop(long.id, account_id=account)
    stopped = wait(long.id, ("success", "failed"))
    full["stopped_status"] = stopped.status
    full["stop_requested"] = stopped.stop_requested is not None
    pcaps.ownership.delete(valid.id, account_id=account)
    full["ownerships_after_delete"] = len(list(pcaps.ownership.get(account_id=account)))

print(json.dumps({
    "full": full,
    "id": created.id,
    "status": got.status,
    "packets_captured": getattr(got, "packets_captured", None) or (got.model_extra or {}).get("packets_captured"),
    "listed": len(listed),
    "bytes": len(data),
    "bad_request_code": bad_request_code,
    "ownerships": len(owned),
}))
