#!/usr/bin/env python3
"""Independent verifier for a secureclaw ledger export (docs/ledger-format.md).

usage: verify_ledger_export.py EXPORT.jsonl KEY_FILE [HEAD.json]

Standard library only. Exit 0 if the export verifies, 1 with the first bad line otherwise
(2 for a usage error or an unreadable file). Parsing is strict, with the same rules and the same
messages as `secureclaw ledger verify-export`: no duplicate keys at any depth, no unknown or
missing fields, integers only, every line byte-for-byte canonical JSON ending in a line feed,
no blank lines anywhere.
"""
import hashlib
import hmac
import json
import sys

MAX_DEPTH = 127  # serde_json refuses the 128th level of nesting
INT_MIN, INT_MAX = -(2**63), 2**64 - 1

LINE_SHAPE = [("entry", "object"), ("mac", ("hex", 32)), ("prev_mac", ("hex", 32))]
ENTRY_SHAPE = [
    ("seq", ("int", 1)), ("time", "str"), ("actor", "str"), ("run", "str?"), ("step", "str?"),
    ("kind", "str"), ("tier", "any"), ("enforcement", "any"), ("pre_manifest", "str?"),
    ("post_manifest", "str?"), ("inverse", "any"), ("result", "any"),
]
HEAD_SHAPE = [
    ("format", "str"), ("version", ("int", 0)), ("vault_id", ("hex", 16)), ("run", "str?"),
    ("ledger_count", ("int", 0)), ("ledger_last_mac", ("hex", 32)),
    ("exported_count", ("int", 0)), ("exported_last_mac", ("hex?", 32)),
    ("exported_at", "str"), ("mac", ("hex", 32)),
]


class Bad(Exception):
    pass


def canonical(v):
    # Sorted keys, no whitespace, non-ASCII kept as UTF-8: the vault's canonical JSON.
    return json.dumps(v, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def no_duplicates(pairs):
    out = {}
    for k, v in pairs:
        if k in out:
            raise Bad(f"duplicate key `{k}`")
        out[k] = v
    return out


def integer(text):
    if text == "-0":  # serde_json reads it as the float -0.0
        no_float(text)
    n = int(text)
    if not INT_MIN <= n <= INT_MAX:
        raise Bad("number out of range (only integers from -2^63 to 2^64-1 are allowed)")
    return n


def no_float(_text):
    raise Bad("number out of range (only integers from -2^63 to 2^64-1 are allowed)")


def no_constant(name):
    raise Bad(f"malformed JSON: {name} is not JSON")


def check_tree(v, depth=1):
    if isinstance(v, (dict, list)):
        if depth > MAX_DEPTH:
            raise Bad("malformed JSON: nesting deeper than 127 levels")
        for item in (v.values() if isinstance(v, dict) else v):
            check_tree(item, depth + 1)
        if isinstance(v, dict):
            for k in v:
                check_tree(k, depth)
    elif isinstance(v, str):
        try:
            v.encode("utf-8")
        except UnicodeEncodeError:
            raise Bad("malformed JSON: lone surrogate in a string escape")


def strict_loads(text):
    try:
        v = json.loads(text, object_pairs_hook=no_duplicates, parse_int=integer,
                       parse_float=no_float, parse_constant=no_constant)
    except RecursionError:
        raise Bad("malformed JSON: nesting deeper than 127 levels")
    except ValueError as e:
        raise Bad(f"malformed JSON: {e}")
    check_tree(v)
    return v


def is_hex(v, n):
    return isinstance(v, str) and len(v) == 2 * n and all(c in "0123456789abcdef" for c in v)


def shape_ok(v, shape):
    if shape == "any":
        return True
    if shape == "str":
        return isinstance(v, str)
    if shape == "str?":
        return v is None or isinstance(v, str)
    if shape == "object":
        return isinstance(v, dict)
    kind, n = shape
    if kind == "int":
        return isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= INT_MAX and v >= n
    if kind == "hex":
        return is_hex(v, n)
    return v is None or is_hex(v, n)  # "hex?"


def shape_message(path, shape):
    if isinstance(shape, tuple) and shape[0] in ("hex", "hex?"):
        return f"field `{path}` must be {2 * shape[1]} lowercase hex digits"
    if isinstance(shape, tuple) and shape[0] == "int":
        return f"field `{path}` must be an integer of at least {shape[1]}"
    return f"field `{path}` has the wrong type"


def check_fields(obj, prefix, shape):
    names = [f for f, _ in shape]
    for k in obj:
        if k not in names:
            raise Bad(f"unknown field `{prefix}{k}`")
    for f, s in shape:
        if f not in obj:
            raise Bad(f"missing field `{prefix}{f}`")
        if not shape_ok(obj[f], s):
            raise Bad(shape_message(prefix + f, s))


def parse_line(raw):
    """One line including its line feed -> the parsed object, or Bad."""
    if not raw.endswith(b"\n"):
        raise Bad("the last line is cut off (file truncated mid-entry)")
    text = raw[:-1]
    if not text:
        raise Bad("blank line (an export has no empty lines, not even at the end)")
    if text.endswith(b"\r"):
        raise Bad("carriage return before the line feed (CRLF line endings)")
    try:
        decoded = text.decode("utf-8")
    except UnicodeDecodeError:
        raise Bad("the line is not valid UTF-8")
    line = strict_loads(decoded)
    if not isinstance(line, dict):
        raise Bad("the line is not a JSON object")
    check_fields(line, "", LINE_SHAPE)
    check_fields(line["entry"], "entry.", ENTRY_SHAPE)
    if canonical(line) != text:
        raise Bad("the line is not in canonical form (keys sorted, no whitespace, minimal escapes)")
    return line


def fail(msg):
    print("INVALID: " + msg)
    sys.exit(1)


def load_head(path, key):
    with open(path, "rb") as f:
        raw = f.read()
    try:
        head = strict_loads(raw.decode("utf-8"))
        if not isinstance(head, dict):
            raise Bad("not a JSON object")
        check_fields(head, "", HEAD_SHAPE)
    except UnicodeDecodeError:
        fail("export head is not authentic with this key: not valid UTF-8")
    except Bad as e:
        fail(f"export head is not authentic with this key: {e}")
    if head["format"] != "secureclaw-ledger-head" or head["version"] != 1:
        fail(f"export head is not authentic with this key: unknown head format {head['format']} v{head['version']}")
    body = {k: v for k, v in head.items() if k != "mac"}
    want = hmac.new(key, b"secureclaw/v1/export-head\0" + canonical(body), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(want, head["mac"]):
        fail("export head is not authentic with this key: its MAC does not verify")
    return head


def main():
    if len(sys.argv) not in (3, 4):
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        sys.exit(2)
    try:
        verify(*sys.argv[1:])
    except (OSError, ValueError) as e:
        # An unreadable file or key is not a verdict on the export.
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


def verify(export, key_file, head_file=None):
    with open(key_file) as f:
        key = bytes.fromhex(f.read().strip())
    if len(key) != 32:
        raise ValueError("the key file must hold 64 hex digits")
    head = load_head(head_file, key) if head_file else None
    full = head is not None and head["run"] is None
    prev_seq, prev_mac, count, n = None, None, 0, 0
    with open(export, "rb") as f:
        for n, raw in enumerate(f, 1):
            try:
                line = parse_line(raw)
            except Bad as e:
                fail(f"line {n}: {e}")
            e, mac, prev = line["entry"], line["mac"], line["prev_mac"]
            seq = e["seq"]
            where = f"line {n} (seq {seq})"
            calc = hmac.new(key, bytes.fromhex(prev) + canonical(e), hashlib.sha256).hexdigest()
            if not hmac.compare_digest(calc, mac):
                fail(f"{where}: the HMAC does not match (entry modified, reordered, or from another vault)")
            if prev_seq is None and full and seq != 1:
                fail(f"{where}: entry is missing: expected seq 1, found seq {seq}")
            if prev_seq is not None and seq <= prev_seq:
                fail(f"{where}: entries are out of order (seq {seq} after seq {prev_seq})")
            if prev_seq is not None and full and seq != prev_seq + 1:
                fail(f"{where}: entry is missing: expected seq {prev_seq + 1}, found seq {seq}")
            if (seq == 1 and prev != "00" * 32) or (prev_seq is not None and seq == prev_seq + 1 and prev != prev_mac):
                fail(f"{where}: prev_mac does not link to the previous entry's mac")
            if head is not None and head["run"] is not None and e["run"] != head["run"]:
                fail(f"{where}: entry is not part of run {head['run']}, which the head names")
            prev_seq, prev_mac, count = seq, mac, count + 1
    if head is not None:
        if count < head["exported_count"]:
            fail(f"ledger export is truncated: the signed head lists {head['exported_count']} entries, the file has {count}")
        if count > head["exported_count"] or prev_mac != head["exported_last_mac"]:
            fail(f"line {n}: the entry exists but its mac differs from the exported head's")
        if head["run"] is None and (head["exported_count"] != head["ledger_count"]
                                    or (head["exported_last_mac"] or "00" * 32) != head["ledger_last_mac"]):
            fail("export head is not authentic with this key: a full export's counts disagree with the ledger's")
    print(f"OK: {count} entries" + (", matches the signed head" if head else ", no head checked"))


if __name__ == "__main__":
    main()
