"""The packet path's flow identity: `flow_bytes` and the FlowKey built from it."""

from __future__ import annotations

import ipaddress
import struct

from hypothesis import given
from hypothesis import strategies as st

from topomirror.dataplane.packet import FlowKey, flow_bytes, flow_key, key_of

addresses = st.integers(0, 2**32 - 1).map(lambda n: str(ipaddress.IPv4Address(n)))


@given(addresses, addresses, st.sampled_from([1, 6, 17, 47]), st.integers(0, 65535), st.integers(0, 65535),
       st.integers(0, 63), st.integers(5, 7))
def test_the_key_from_flow_bytes_is_the_packets_five_tuple(src: str, dst: str, proto: int, sport: int, dport: int,
                                                           dscp: int, ihl: int) -> None:
    options = b"\x01" * (4 * ihl - 20)
    l4 = struct.pack("!HH", sport, dport) + b"\0" * 16
    packet = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, dscp << 2, 4 * ihl + len(l4), 0, 0, 64, proto, 0,
                         ipaddress.IPv4Address(src).packed, ipaddress.IPv4Address(dst).packed) + options + l4
    raw = flow_bytes(packet)
    assert raw is not None
    ported = proto in (6, 17)
    expected = FlowKey(src, dst, proto, sport if ported else 0, dport if ported else 0, dscp)
    assert key_of(raw, dscp) == expected == flow_key(packet)
    assert key_of(raw, dscp) == expected  # again, from the name cache


def test_the_reversed_key_names_the_other_direction() -> None:
    key = FlowKey("172.16.3.1", "172.16.1.1", 6, 7000, 40000, 46)
    assert key.reversed() == FlowKey("172.16.1.1", "172.16.3.1", 6, 40000, 7000, 46)
    assert str(key.reversed()) == "tcp 172.16.1.1:40000 -> 172.16.3.1:7000" and key.reversed().reversed() == key
