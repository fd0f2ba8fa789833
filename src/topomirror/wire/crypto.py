"""Keys and AEAD sealing for wire protocol v1 (AES-256-GCM from `cryptography`).

Each pair of nodes shares one 32-byte key. Every (sender, epoch) derives its own traffic key
from it with HKDF-SHA256, so a restarted sender (new epoch) never reuses a nonce even though its
sequence numbers start again at 0. The 12-byte nonce is sender (2) | epoch (2) | path id (1) |
low 7 bytes of the session sequence: the standard and the mirror copy of a packet share a
sequence number but not a path id, so they never share a nonce.
"""

from __future__ import annotations

import base64
import os
import struct
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from topomirror.wire.header import HEADER_SIZE, TAG_SIZE, Header

KEY_SIZE = 32
# sender (2) | epoch (2) | path id (1) | low 7 bytes of the sequence: the last 8 bytes packed as
# one u64 so the data plane builds a nonce with a single struct call.
NONCE = struct.Struct("!HHQ")
SEQ_MASK = 2**56 - 1  # a sender rekeys (new epoch) long before 2^56 packets


class KeyError_(ValueError):
    """A key that cannot be used (wrong length, not base64, unreadable file)."""


class AuthenticationFailed(ValueError):
    """The tag did not verify: wrong key, forged or corrupted datagram."""


def generate_key() -> str:
    return base64.b64encode(os.urandom(KEY_SIZE)).decode()


def decode_key(text: str, where: str = "key") -> bytes:
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except ValueError:
        raise KeyError_(f"{where}: not base64 (generate one with 'topomirror keys gen')") from None
    if len(raw) != KEY_SIZE:
        raise KeyError_(f"{where}: a key is {KEY_SIZE} bytes, this one is {len(raw)}")
    return raw


def load_key_file(path: str | Path) -> bytes:
    try:
        return decode_key(Path(path).read_text(), str(path))
    except OSError as exc:
        raise KeyError_(f"{path}: cannot read key file: {exc.strerror}") from None


def derive_key(pair_key: bytes, sender: int, epoch: int) -> bytes:
    """The traffic key of (sender, epoch): HKDF-SHA256 of the pair key."""
    info = b"topomirror v1 traffic" + struct.pack("!HH", sender, epoch)
    return HKDF(algorithm=hashes.SHA256(), length=KEY_SIZE, salt=None, info=info).derive(pair_key)


def derive(pair_key: bytes, sender: int, epoch: int) -> AESGCM:
    return AESGCM(derive_key(pair_key, sender, epoch))


def pack_nonce(sender: int, epoch: int, path_id: int, seq: int) -> bytes:
    return NONCE.pack(sender, epoch, (path_id << 56) | (seq & SEQ_MASK))


def nonce(header: Header) -> bytes:
    return pack_nonce(header.sender, header.epoch, header.path_id, header.seq)


def seal(aead: AESGCM, header: Header, payload: bytes) -> bytes:
    """Header bytes + ciphertext + tag."""
    head = header.pack()
    return head + aead.encrypt(nonce(header), payload, head)


def open_sealed(aead: AESGCM, header: Header, datagram: bytes | memoryview) -> bytes:
    """Verify and decrypt; raise AuthenticationFailed on any mismatch."""
    if len(datagram) < HEADER_SIZE + TAG_SIZE:
        raise AuthenticationFailed("datagram too short to carry a tag")
    try:
        return aead.decrypt(nonce(header), bytes(datagram[HEADER_SIZE:]), bytes(datagram[:HEADER_SIZE]))
    except InvalidTag:
        raise AuthenticationFailed("tag mismatch") from None
