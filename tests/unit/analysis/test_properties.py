"""Property tests: no input, however malformed or cut short, raises out of the parsers."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.unit.analysis import packets
from tests.unit.analysis.test_extraction_vs_tshark import CASES
from topomirror.analysis.flows import (
    PROTO_TCP,
    PROTO_UDP,
    FlowKey,
    FlowSample,
    FlowTable,
    FlowTableConfig,
    flow_key_bytes,
    parse_ip_packet,
    parse_ip_packet_general,
    sample_from_packet,
)
from topomirror.analysis.metadata import H2_PREFACE, Metadata, extract

VALID_PACKETS = list(CASES.values()) + [
    packets.ipv4_tcp(packets.grpc_request("/a.b.C/D"), dport=50051),
    packets.ipv6_tcp(packets.tls_client_hello("v6.example.com", ["h2"]), dport=443),
]
INTERESTING_PREFIXES = [
    b"", b"GET ", b"POST /", b"HTTP/1.1 ", b"HTTP/1.0 200 OK\r\nContent-Length: ", b"\x16\x03\x01",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", H2_PREFACE, H2_PREFACE + b"\x00\x00\x10\x01\x04\x00\x00\x00\x01",
    b"\x00\x00\x00\x04\x00\x00\x00\x00\x00",
]


def check_parsed(packet: bytes) -> None:
    parsed = parse_ip_packet(packet)
    assert flow_key_bytes(packet) == (None if parsed is None else parsed.key_bytes)
    if parsed is not None:
        assert 0 <= parsed.l4_offset <= parsed.payload_offset <= parsed.end <= len(packet)
        assert len(parsed.key_bytes) in (13, 37)
        assert 0 <= parsed.dscp < 64 and 0 <= parsed.ecn < 4
        FlowKey.from_key_bytes(parsed.key_bytes)


def check_extract(packet: bytes) -> None:
    sample = sample_from_packet(packet)
    if sample is not None:
        assert isinstance(extract(sample), Metadata)


def payload_sample(payload: bytes, proto: int, sport: int, dport: int) -> FlowSample:
    return FlowSample(key_bytes=FlowKey("10.0.0.1", "10.0.0.2", proto, sport, dport).to_key_bytes(), first_seen=0.0,
                      completed_at=0.0, payloads=(payload,), packets=1, ip_version=4, dscp=0, ecn=0,
                      completion="push")


@settings(max_examples=2000, deadline=None)
@given(st.binary(max_size=120))
def test_arbitrary_bytes_never_raise_from_parse_ip_packet(packet: bytes) -> None:
    check_parsed(packet)
    check_extract(packet)


@settings(max_examples=1000, deadline=None)
@given(version_byte=st.sampled_from([0x45, 0x46, 0x4F, 0x60, 0x6F]), rest=st.binary(min_size=19, max_size=120))
def test_ip_looking_bytes_never_raise(version_byte: int, rest: bytes) -> None:
    packet = bytes([version_byte]) + rest
    check_parsed(packet)
    check_extract(packet)


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    prefix=st.sampled_from(INTERESTING_PREFIXES),
    rest=st.binary(max_size=300),
    proto=st.sampled_from([PROTO_TCP, PROTO_UDP]),
    ports=st.sampled_from([(40000, 80), (80, 40000), (40000, 53), (53, 40000), (40000, 443), (40000, 50051)]),
)
def test_arbitrary_payloads_never_raise_from_extract(prefix: bytes, rest: bytes, proto: int,
                                                      ports: tuple[int, int]) -> None:
    metadata = extract(payload_sample(prefix + rest, proto, *ports))
    assert metadata.parse_error is None or isinstance(metadata.parse_error, str)


@pytest.mark.parametrize("packet", VALID_PACKETS)
def test_every_truncation_of_valid_packets_never_raises(packet: bytes) -> None:
    for end in range(len(packet) + 1):
        check_parsed(packet[:end])
        check_extract(packet[:end])


@settings(max_examples=500, deadline=None)
@given(index=st.integers(0, len(VALID_PACKETS) - 1), data=st.data())
def test_corrupted_valid_packets_never_raise(index: int, data: st.DataObject) -> None:
    packet = bytearray(VALID_PACKETS[index])
    for _ in range(data.draw(st.integers(1, 8))):
        position = data.draw(st.integers(0, len(packet) - 1))
        packet[position] = data.draw(st.integers(0, 255))
    check_parsed(bytes(packet))
    check_extract(bytes(packet))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(VALID_PACKETS + [b"", b"\x45" * 30]), st.integers(0, 200)), max_size=30))
def test_flow_table_accepts_any_packet_sequence(events: list[tuple[bytes, int]]) -> None:
    table = FlowTable(FlowTableConfig(sample_queue_capacity=4, max_flows=8))
    now = 0.0
    for packet, cut in events:
        now += 0.05
        table.observe(packet[: len(packet) - cut] if cut < len(packet) else packet, now)
    table.expire(now + 100.0)
    for sample in table.take_samples():
        assert isinstance(extract(sample), Metadata)
    counters = table.counters()
    assert counters.active_flows == 0 and counters.queued_samples == 0


@settings(max_examples=2000, deadline=None)
@given(header=st.binary(min_size=20, max_size=20), proto=st.sampled_from([6, 17, 1, 132]), rest=st.binary(max_size=60))
def test_fast_path_agrees_with_general_parser(header: bytes, proto: int, rest: bytes) -> None:
    packet = bytearray(b"\x45" + header[1:] + rest)
    packet[9] = proto
    packet[6] &= 0xC0 if header[0] & 1 else 0xFF  # mostly not fragments, sometimes fragments
    if header[1] & 1:
        packet[7] = 0
    assert parse_ip_packet(bytes(packet)) == parse_ip_packet_general(bytes(packet))


def _says_nothing(metadata: Metadata | None) -> bool:
    return metadata is None or (metadata.app_protocol is None and metadata.announced_bytes is None)


@settings(max_examples=1500, deadline=None)
@given(
    payload=st.sampled_from(INTERESTING_PREFIXES + [packets.dns_query("a.example", 1), b"x"]),
    rest=st.binary(max_size=200),
    proto=st.sampled_from([PROTO_TCP, PROTO_UDP]),
    ports=st.sampled_from([(40000, 80), (40000, 53), (53, 40000), (5353, 5353), (40000, 20000), (1234, 443)]),
    cut=st.integers(0, 300),
    data=st.data(),
)
def test_what_the_analysis_filter_drops_extract_finds_nothing_in(payload: bytes, rest: bytes, proto: int,
                                                                 ports: tuple[int, int], cut: int,
                                                                 data: st.DataObject) -> None:
    from topomirror.analysis.metadata import extract_packet, may_carry_metadata

    build = packets.ipv4_tcp if proto == PROTO_TCP else packets.ipv4_udp
    packet = bytearray(build(payload + rest, sport=ports[0], dport=ports[1]))
    for _ in range(data.draw(st.integers(0, 3))):  # now and then a corrupted header byte
        packet[data.draw(st.integers(0, len(packet) - 1))] = data.draw(st.integers(0, 255))
    packet = packet[:max(cut, 0)] if cut < len(packet) else packet
    if not may_carry_metadata(bytes(packet)):
        assert _says_nothing(extract_packet(bytes(packet)))


def test_the_analysis_filter_keeps_what_extract_reads() -> None:
    from topomirror.analysis.metadata import may_carry_metadata

    for packet in VALID_PACKETS:
        assert may_carry_metadata(packet)
    assert not may_carry_metadata(packets.ipv4_tcp(b""))  # a handshake segment
    assert not may_carry_metadata(packets.ipv4_udp(b"topomirror-flowgen", dport=20000))
    assert may_carry_metadata(packets.ipv4_udp(packets.dns_query("a.example", 1), dport=53))
