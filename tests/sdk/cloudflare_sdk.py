"""The official Cloudflare Python SDK against edgecap, with only base_url changed.

Usage: python cloudflare_sdk.py BASE_URL ACCOUNT TOKEN
Prints one JSON line with what it saw; exits non-zero on any mismatch.
"""
import json
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

print(json.dumps({
    "id": created.id,
    "status": got.status,
    "packets_captured": getattr(got, "packets_captured", None) or (got.model_extra or {}).get("packets_captured"),
    "listed": len(listed),
    "bytes": len(data),
    "bad_request_code": bad_request_code,
    "ownerships": len(owned),
}))
