"""Job bundles: code and data ground uplinks, signed by ground, checked by the node.

A bundle is a tar archive (plain, or compressed with gzip, bzip2 or xz).  Ground signs it
with an **Ed25519** private key; the node holds only public keys (``[files]
bundle_keys``).  Why Ed25519 and not the telecommand HMAC: a node that can check an HMAC
can also make one, so a node's key, read off one captured node, would let an attacker sign
bundles for it; with a signature the node holds nothing worth stealing, and one key pair
can sign for the whole fleet.  Ed25519 signatures are deterministic (no nonce to get wrong
on a flight computer), small (64 bytes) and quick to check.

What is signed (docs/ICD.md §5.9.5) is the msgpack array
``["umbra-bundle-v1", name, size, hash, digest]`` of the uplink's ``meta``: the node checks
the signature as soon as ``meta`` arrives — an unsigned or wrongly signed bundle is refused
before a byte of it is stored — and the received file's hash against ``digest`` once it is
complete.

Unpacking (:func:`unpack`) refuses the whole bundle, before writing anything, when any
member is not a regular file or a directory (links, devices, FIFOs), has an absolute name
or a ``..`` component, or the members' sizes add up to more than the limit; it unpacks
into a temporary directory beside the target and renames it into place, so a bundle is
installed whole or not at all.  Modes keep only the permission bits (no set-uid).

A bundle that holds ``umbra-job.toml`` names the job it runs::

    [job]
    id = "train-7"                      # a job id (docs/jobs.md)
    command = ["python3", "train.py"]   # run in the bundle's directory
    gpus = [0]
    priority = 1
    max_checkpoint_bytes = 0
    env = {STEPS = "400"}
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import tarfile
import tomllib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import msgpack

from node.errors import UmbraError

DOMAIN = "umbra-bundle-v1"
JOB_FILE = "umbra-job.toml"
MAX_MEMBERS = 10_000
#: An installed bundle's name (its directory under the bundles directory).
NAME_OK = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_SUFFIXES = (".tar.gz", ".tar.bz2", ".tar.xz", ".tgz", ".tar")


def stem(file_name: str) -> str:
    """The bundle's name: its file name without the archive suffix (train-v2.tar.gz → train-v2)."""
    for suffix in _SUFFIXES:
        if file_name.endswith(suffix) and len(file_name) > len(suffix):
            return file_name[: -len(suffix)]
    return file_name


class BundleRefused(UmbraError):
    """A bundle the node will not install; ``reason`` is the short code reported to ground."""

    def __init__(self, reason: str, text: str) -> None:
        super().__init__(text)
        self.reason = reason


def signed_bytes(name: str, size: int, hash_name: str, digest: str) -> bytes:
    data: bytes = msgpack.packb([DOMAIN, name, size, hash_name, digest], use_bin_type=True)
    return data


def key_id(public_raw: bytes) -> str:
    """A public key's id: the first 16 hex digits of its SHA-256."""
    return hashlib.sha256(public_raw).hexdigest()[:16]


def public_from_hex(text: str) -> bytes:
    raw = bytes.fromhex(text.strip())
    if len(raw) != 32:
        raise ValueError("an Ed25519 public key is 32 bytes (64 hex digits)")
    return raw


def new_private_key() -> bytes:
    """32 random bytes: an Ed25519 private key (its seed)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

    key = Ed25519PrivateKey.generate()
    return key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())


def public_key(private_raw: bytes) -> bytes:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    return Ed25519PrivateKey.from_private_bytes(private_raw).public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def sign(private_raw: bytes, name: str, size: int, hash_name: str, digest: str) -> bytes:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    return Ed25519PrivateKey.from_private_bytes(private_raw).sign(signed_bytes(name, size, hash_name, digest))


def verify(keys: dict[str, bytes], kid: str, signature: bytes, name: str, size: int, hash_name: str,
           digest: str) -> None:
    """BundleRefused unless ``signature`` is good under the trusted key ``kid``."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    if not signature:
        raise BundleRefused("unsigned", "the bundle carries no signature")
    public = keys.get(kid)
    if public is None:
        raise BundleRefused("unknown_key", f"the bundle is signed with key {kid!r}, which this node does not trust")
    try:
        Ed25519PublicKey.from_public_bytes(public).verify(signature, signed_bytes(name, size, hash_name, digest))
    except InvalidSignature:
        raise BundleRefused("bad_signature", "the bundle's signature does not match its name, size and hash") from None


def _check_member(m: tarfile.TarInfo) -> None:
    name = m.name
    path = PurePosixPath(name)
    if not name or name.startswith("/") or path.is_absolute() or "\\" in name:
        raise BundleRefused("unsafe_path", f"member {name!r} has an absolute name")
    if ".." in path.parts:
        raise BundleRefused("unsafe_path", f"member {name!r} leads out of the bundle ('..')")
    if m.issym() or m.islnk():
        raise BundleRefused("unsafe_member", f"member {name!r} is a link ({m.linkname!r})")
    if not (m.isreg() or m.isdir()):
        raise BundleRefused("unsafe_member", f"member {name!r} is not a file or a directory")


def check(archive: Path, *, max_unpacked: int) -> list[tarfile.TarInfo]:
    """The members of ``archive``, every one checked; BundleRefused at the first bad one."""
    try:
        with tarfile.open(archive, mode="r:*") as tar:
            members: list[tarfile.TarInfo] = []
            total = 0
            for m in tar:
                if len(members) >= MAX_MEMBERS:
                    raise BundleRefused("too_many_members", f"more than {MAX_MEMBERS} members")
                _check_member(m)
                total += m.size
                if total > max_unpacked:
                    raise BundleRefused("too_big", f"unpacks to more than {max_unpacked} bytes")
                members.append(m)
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise BundleRefused("not_a_bundle", f"not a readable tar archive: {exc}") from None
    return members


def unpack(archive: Path, target: Path, *, max_unpacked: int) -> list[str]:
    """Install ``archive`` at ``target`` (which must not exist), whole or not at all."""
    if target.exists():
        raise BundleRefused("exists", f"bundle {target.name} is installed already; uplink it under a new name")
    members = check(archive, max_unpacked=max_unpacked)
    tmp = target.with_name(f".tmp-{target.name}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        with tarfile.open(archive, mode="r:*") as tar:
            for m in members:
                dest = tmp / m.name
                if not dest.resolve().is_relative_to(tmp.resolve()):  # belt and braces
                    raise BundleRefused("unsafe_path", f"member {m.name!r} leads out of the bundle")
                if m.isdir():
                    dest.mkdir(parents=True, exist_ok=True)
                    continue
                dest.parent.mkdir(parents=True, exist_ok=True)
                src = tar.extractfile(m)
                assert src is not None
                with src, open(dest, "xb") as out:
                    shutil.copyfileobj(src, out)
                    out.flush()
                    os.fsync(out.fileno())
                os.chmod(dest, m.mode & 0o755)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    with contextlib.suppress(OSError):
        fd = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    return [m.name for m in members if m.isreg()]


@dataclass(frozen=True, slots=True)
class BundleJob:
    """What ``umbra-job.toml`` says to run."""

    id: str
    command: tuple[str, ...]
    gpus: tuple[int, ...] = ()
    priority: int = 0
    max_checkpoint_bytes: int = 0
    env: tuple[tuple[str, str], ...] = ()


def job_spec(bundle_dir: Path) -> BundleJob:
    path = bundle_dir / JOB_FILE
    try:
        with open(path, "rb") as f:
            raw: dict[str, Any] = tomllib.load(f).get("job", {})
    except FileNotFoundError:
        raise BundleRefused("no_job", f"bundle {bundle_dir.name} has no {JOB_FILE}") from None
    except tomllib.TOMLDecodeError as exc:
        raise BundleRefused("bad_job", f"{JOB_FILE}: {exc}") from None
    try:
        command = raw["command"]
        if not (isinstance(command, list) and command and all(isinstance(c, str) for c in command)):
            raise ValueError("command must be a non-empty array of strings")
        gpus = raw.get("gpus", [])
        if not (isinstance(gpus, list) and all(isinstance(g, int) and not isinstance(g, bool) for g in gpus)):
            raise ValueError("gpus must be an array of GPU indices")
        env = raw.get("env", {})
        if not (isinstance(env, dict) and all(isinstance(v, str) for v in env.values())):
            raise ValueError("env must be a table of strings")
        return BundleJob(id=str(raw["id"]), command=tuple(command), gpus=tuple(gpus),
                         priority=int(raw.get("priority", 0)),
                         max_checkpoint_bytes=int(raw.get("max_checkpoint_bytes", 0)),
                         env=tuple((str(k), v) for k, v in env.items()))
    except (KeyError, TypeError, ValueError) as exc:
        raise BundleRefused("bad_job", f"{JOB_FILE}: {exc}") from None


__all__ = ["DOMAIN", "JOB_FILE", "NAME_OK", "BundleJob", "BundleRefused", "check", "job_spec", "key_id", "new_private_key",
           "public_key", "sign", "signed_bytes", "stem", "unpack", "verify"]
