#!/usr/bin/env python3
"""Independent verifier for a secureclaw ledger export (docs/ledger-format.md).

usage: verify_ledger_export.py EXPORT.jsonl KEY_FILE [HEAD.json]

Standard library only. Exit 0 if the export verifies, 1 with the first bad line otherwise.
"""
import hashlib, hmac, json, sys

def canonical(v):
    # Sorted keys, no whitespace, non-ASCII kept as UTF-8: the vault's canonical JSON.
    return json.dumps(v, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()

def fail(msg):
    print("INVALID: " + msg)
    sys.exit(1)

def main():
    export, key_file = sys.argv[1], sys.argv[2]
    key = bytes.fromhex(open(key_file).read().strip())
    head = json.load(open(sys.argv[3])) if len(sys.argv) > 3 else None
    if head is not None:
        body = {k: v for k, v in head.items() if k != "mac"}
        want = hmac.new(key, b"secureclaw/v1/export-head\0" + canonical(body), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(want, head["mac"]):
            fail("head MAC does not verify")
    full = head is not None and head["run"] is None
    prev_seq, prev_mac, count = None, None, 0
    with open(export, "rb") as f:
        for n, raw in enumerate(f, 1):
            if not raw.endswith(b"\n"):
                fail(f"line {n} is cut off")
            line = json.loads(raw)
            e, mac, prev = line["entry"], line["mac"], line["prev_mac"]
            calc = hmac.new(key, bytes.fromhex(prev) + canonical(e), hashlib.sha256).hexdigest()
            if not hmac.compare_digest(calc, mac):
                fail(f"line {n} (seq {e['seq']}): MAC mismatch")
            seq = e["seq"]
            if prev_seq is None and full and seq != 1:
                fail(f"line {n}: export must start at seq 1")
            if prev_seq is not None and (seq <= prev_seq or (full and seq != prev_seq + 1)):
                fail(f"line {n} (seq {seq}): out of order or missing entries")
            if (seq == 1 and prev != "00" * 32) or (prev_seq is not None and seq == prev_seq + 1 and prev != prev_mac):
                fail(f"line {n} (seq {seq}): prev_mac does not link")
            if head is not None and head["run"] is not None and e["run"] != head["run"]:
                fail(f"line {n} (seq {seq}): not part of run {head['run']}")
            prev_seq, prev_mac, count = seq, mac, count + 1
    if head is not None and (count != head["exported_count"] or prev_mac != head["exported_last_mac"]):
        fail(f"export has {count} entries, the signed head lists {head['exported_count']} (truncated?)")
    print(f"OK: {count} entries" + (", matches the signed head" if head else ", no head checked"))

if __name__ == "__main__":
    main()
