#!/usr/bin/env python3
"""Checks a Chronicle inclusion proof on its own, as a third party would.

    verify_proof.py PROOF.json PUBLIC_KEY

PROOF.json is what `chronicle-replay prove` prints; PUBLIC_KEY is base64 of the notary's
32-byte Ed25519 key (`GET /v1/audit/public-key`). Exit 0 when the proof holds, 1 with
the reason when it does not. Needs only the standard library and `cryptography` (for
Ed25519); the formats are in docs/audit.md, the tree is RFC 9162's.
"""
import base64
import hashlib
import json
import struct
import sys

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey


def fail(reason):
    print(f"INVALID: {reason}")
    sys.exit(1)


def signed_text(cp):
    return (
        f"chronicle checkpoint v1\n{cp['origin']}\n{cp['tree_size']}\n"
        f"{cp['root_hash']}\n{cp['signed_at']}\n"
    ).encode()


def node(left, right):
    return hashlib.sha256(b"\x01" + left + right).digest()


def root_from_inclusion(leaf, index, size, path):
    """RFC 9162, section 2.1.3.2; None when the path does not fit the tree."""
    if index >= size:
        return None
    fn, sn, r = index, size - 1, leaf
    for p in path:
        if sn == 0:
            return None
        if fn & 1 or fn == sn:
            r = node(p, r)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = node(r, p)
        fn >>= 1
        sn >>= 1
    return r if sn == 0 else None


def parse_entry(entry):
    """The event's identity from a leaf entry: length-prefixed text, big-endian ints."""
    at = 0

    def text():
        nonlocal at
        (n,) = struct.unpack_from(">I", entry, at)
        value = entry[at + 4 : at + 4 + n].decode()
        at += 4 + n
        return value

    def int8():
        nonlocal at
        (value,) = struct.unpack_from(">q", entry, at)
        at += 8
        return value

    aggregate_type, aggregate_id, sequence = text(), text(), int8()
    text(), text(), int8(), text(), text()  # event type, version, time, payload, metadata
    if len(entry) - at != 32:
        raise ValueError("the entry does not end in a 32-byte chain hash")
    return aggregate_type, aggregate_id, sequence


def main():
    if len(sys.argv) != 3:
        print(__doc__)
        sys.exit(2)
    with open(sys.argv[1]) as f:
        proof = json.load(f)
    public = base64.b64decode(sys.argv[2].strip())
    if proof.get("format") != "chronicle inclusion proof v1":
        fail(f"unknown format {proof.get('format')!r}")
    cp = proof["checkpoint"]
    if cp["key_id"] != hashlib.sha256(public).hexdigest()[:16]:
        fail("the checkpoint names another key")
    try:
        Ed25519PublicKey.from_public_bytes(public).verify(
            base64.b64decode(cp["signature"]), signed_text(cp)
        )
    except InvalidSignature:
        fail("the checkpoint's signature does not verify")
    if proof["tree_size"] != cp["tree_size"]:
        fail("the proof is for another tree size than its checkpoint")
    entry = base64.b64decode(proof["leaf_entry"])
    try:
        named = parse_entry(entry)
    except (ValueError, struct.error, UnicodeDecodeError) as e:
        fail(f"malformed leaf entry: {e}")
    claimed = (proof["aggregate_type"], proof["aggregate_id"], proof["sequence"])
    if named != claimed:
        fail(f"the entry is {named}, the proof claims {claimed}")
    leaf = hashlib.sha256(b"\x00" + entry).digest()
    path = [bytes.fromhex(h) for h in proof["inclusion_path"]]
    root = root_from_inclusion(leaf, proof["leaf_index"], proof["tree_size"], path)
    if root is None or root.hex() != cp["root_hash"]:
        fail("the event is not in the tree the checkpoint signed")
    print(
        f"VALID: {claimed[0]} {claimed[1]} event {claimed[2]} is leaf "
        f"{proof['leaf_index']} of the {cp['tree_size']} signed at {cp['signed_at']}"
    )


if __name__ == "__main__":
    main()
