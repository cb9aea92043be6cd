"""Test vectors of the file service (docs/ICD.md §5.9, §7): the ``files`` section of
docs/icd-vectors.json.  Deterministic: fixed keys, fixed bytes (Ed25519 signs
deterministically), so another implementation can check itself byte for byte.
"""

from __future__ import annotations

import hashlib
from typing import Any

import blake3

from node.files import bundle as bundles
from node.files.pdu import Ack, AnyPdu, Cancel, Data, Eof, Fin, Meta, envelope_tag, seal

#: Keys for the vectors only: never use them for anything else.
TC_KEY = bytes(range(32))
BUNDLE_PRIVATE = hashlib.sha256(b"umbra-vectors-bundle-key").digest()
NODE = "node-1"
CONTENT = b"umbra file vector\n" * 4  # 72 bytes


def _json(value: Any) -> Any:
    if isinstance(value, bytes):
        return {"hex": value.hex()}
    if isinstance(value, dict):
        return {k: _json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json(v) for v in value]
    return value


def _pdus() -> list[tuple[str, str, AnyPdu]]:
    digest = hashlib.sha256(CONTENT).hexdigest()
    meta = Meta(node_id=NODE, xfer="d-0123456789abcdef", direction="down", name="train-ckpt-0000000042.data",
                size=len(CONTENT), chunk=1024, hash="sha256", digest=digest, kind="checkpoint", priority=7,
                info={"job": "train", "seq": 42})
    return [
        ("meta_checkpoint", "a downlink announced: a checkpoint of 72 bytes in chunks of 1 KiB", meta),
        ("data_first", "the first (and only) chunk, with its CRC-32", Data.of(NODE, meta.xfer, 0, CONTENT)),
        ("eof", "every byte sent once", Eof(node_id=NODE, xfer=meta.xfer, size=len(CONTENT), digest=digest)),
        ("ack_missing", "the receiver holds [0, 40) and [56, 72): it needs [40, 56)",
         Ack(node_id=NODE, xfer=meta.xfer, received=56, contiguous=40, missing=((40, 56),), high=72)),
        ("ack_probe_need_meta", "an answer to a chunk of a transfer the receiver never heard of",
         Ack(node_id=NODE, xfer=meta.xfer, received=0, contiguous=0, need_meta=True, probe=True)),
        ("fin_ok", "every byte held, the hash matched", Fin(node_id=NODE, xfer=meta.xfer, status="ok",
                                                           info={"stored": "train-ckpt-0000000042.data"})),
        ("fin_refused", "a bundle refused before a byte was stored",
         Fin(node_id=NODE, xfer="u-0000000000000001", status="refused", reason="unsigned",
             text="the bundle carries no signature")),
        ("cancel", "the sender gives up", Cancel(node_id=NODE, xfer=meta.xfer, reason="cancelled by ground")),
    ]


def build() -> dict[str, Any]:
    pdus = _pdus()
    ack = pdus[3][2]
    body = ack.to_wire()
    bundle_digest = blake3.blake3(CONTENT).hexdigest()
    public = bundles.public_key(BUNDLE_PRIVATE)
    name, size = "train-v1.tar", len(CONTENT)
    return {
        "pdus": [{"name": n, "description": d, "pdu": _json(p.to_map()), "wire_hex": p.to_wire().hex()}
                 for n, d, p in pdus],
        "envelope": {
            "description": "ground → node on file/tc: {pdu: bin, tag: bin}, tag = HMAC-SHA256(key, "
                           "'umbra-file-v1' 0x00 node_id 0x00 pdu)",
            "key_hex": TC_KEY.hex(),
            "node_id": NODE,
            "pdu_hex": body.hex(),
            "tag_hex": envelope_tag(TC_KEY, NODE, body).hex(),
            "wire_hex": seal(TC_KEY, ack).hex(),
            "reject_other_node_hex": seal(TC_KEY, Ack(node_id="node-2", xfer=ack.xfer, received=0,
                                                      contiguous=0)).hex(),
        },
        "bundle_signature": {
            "description": "Ed25519 over msgpack ['umbra-bundle-v1', name, size, hash, digest] (RFC 8032)",
            "private_key_hex": BUNDLE_PRIVATE.hex(),
            "public_key_hex": public.hex(),
            "key_id": bundles.key_id(public),
            "name": name,
            "size": size,
            "hash": "blake3",
            "digest": bundle_digest,
            "content_hex": CONTENT.hex(),
            "signed_hex": bundles.signed_bytes(name, size, "blake3", bundle_digest).hex(),
            "signature_hex": bundles.sign(BUNDLE_PRIVATE, name, size, "blake3", bundle_digest).hex(),
        },
    }


__all__ = ["build"]
