"""Wire header and AEAD: round trips, truncation and corruption (property tests)."""

from __future__ import annotations

import contextlib
import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from topomirror.wire.crypto import (
    AuthenticationFailed,
    KeyError_,
    decode_key,
    derive,
    generate_key,
    nonce,
    open_sealed,
    seal,
)
from topomirror.wire.header import (
    HEADER_SIZE,
    Header,
    MalformedHeader,
    MessageType,
    peek_routing,
    time_diff_us,
    tun_mtu,
    unpack_header,
)

headers = st.builds(
    Header,
    type=st.sampled_from(list(MessageType)),
    path_id=st.integers(0, 255),
    channel=st.integers(0, 2**16 - 1),
    sender=st.integers(0, 2**16 - 1),
    epoch=st.integers(0, 2**16 - 1),
    seq=st.integers(0, 2**64 - 1),
    path_seq=st.integers(0, 2**32 - 1),
    send_time_us=st.integers(0, 2**32 - 1),
)
KEY = os.urandom(32)


def test_overhead_is_24_bytes_before_the_tag() -> None:
    assert HEADER_SIZE == 24
    assert tun_mtu(1500) == 1500 - 28 - 24 - 16


@given(headers)
def test_header_round_trip(header: Header) -> None:
    packed = header.pack()
    assert len(packed) == HEADER_SIZE
    assert unpack_header(packed) == header
    first, channel, sender = peek_routing(packed)  # type: ignore[misc]
    assert (channel, sender) == (header.channel, header.sender)


@given(headers, st.integers(0, HEADER_SIZE - 1))
def test_truncated_header_is_malformed(header: Header, keep: int) -> None:
    with pytest.raises(MalformedHeader):
        unpack_header(header.pack()[:keep])
    assert peek_routing(header.pack()[:keep]) is None


@given(st.binary(max_size=64))
def test_arbitrary_bytes_never_raise_anything_but_malformed(data: bytes) -> None:
    with contextlib.suppress(MalformedHeader):
        unpack_header(data)


@given(headers, st.binary(max_size=1500))
def test_seal_open_round_trip(header: Header, payload: bytes) -> None:
    aead = derive(KEY, header.sender, header.epoch)
    datagram = seal(aead, header, payload)
    assert len(datagram) == HEADER_SIZE + len(payload) + 16
    assert open_sealed(aead, unpack_header(datagram), datagram) == payload


@given(headers, st.binary(min_size=1, max_size=300), st.data())
def test_any_single_byte_corruption_fails_authentication(header: Header, payload: bytes,
                                                          data: st.DataObject) -> None:
    aead = derive(KEY, header.sender, header.epoch)
    datagram = bytearray(seal(aead, header, payload))
    position = data.draw(st.integers(0, len(datagram) - 1))
    datagram[position] ^= data.draw(st.integers(1, 255))
    with pytest.raises((AuthenticationFailed, MalformedHeader)):
        open_sealed(aead, unpack_header(bytes(datagram)), bytes(datagram))


@given(headers, st.binary(max_size=300), st.data())
def test_truncated_datagram_fails(header: Header, payload: bytes, data: st.DataObject) -> None:
    aead = derive(KEY, header.sender, header.epoch)
    datagram = seal(aead, header, payload)
    cut = data.draw(st.integers(HEADER_SIZE, len(datagram) - 1))
    with pytest.raises(AuthenticationFailed):
        open_sealed(aead, header, datagram[:cut])


def test_wrong_key_and_wrong_epoch_fail() -> None:
    header = Header(MessageType.DATA, 0, 0, 7, 1, 42, 42, 1000)
    datagram = seal(derive(KEY, 7, 1), header, b"inner packet")
    with pytest.raises(AuthenticationFailed):
        open_sealed(derive(os.urandom(32), 7, 1), header, datagram)
    with pytest.raises(AuthenticationFailed):
        open_sealed(derive(KEY, 7, 2), header, datagram)


def test_copies_on_two_paths_never_share_a_nonce() -> None:
    standard = Header(MessageType.DATA, 0, 0, 1, 1, 99, 5, 0)
    mirror = Header(MessageType.DATA, 1, 3, 1, 1, 99, 9, 0)
    assert nonce(standard) != nonce(mirror)
    assert len(nonce(standard)) == 12


def test_keys() -> None:
    assert len(decode_key(generate_key())) == 32
    with pytest.raises(KeyError_, match="not base64"):
        decode_key("not a key!")
    with pytest.raises(KeyError_, match="32 bytes"):
        decode_key("AAAA")


@given(st.integers(0, 2**32 - 1), st.integers(-(2**30), 2**30))
def test_time_diff_wraps(start: int, delta: int) -> None:
    assert time_diff_us((start + delta) % 2**32, start) == delta


@given(headers)
def test_nonce_layout(header: Header) -> None:
    """sender | epoch | path id | low 7 bytes of seq: the same bytes as in the packed header."""
    head = header.pack()
    assert nonce(header) == head[4:8] + head[1:2] + head[9:16]
    assert len(nonce(header)) == 12
