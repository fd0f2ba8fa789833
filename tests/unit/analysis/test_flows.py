from __future__ import annotations

import dataclasses

import dpkt
import pytest

from tests.unit.analysis import packets
from topomirror.analysis.flows import (
    PROTO_TCP,
    FlowKey,
    FlowSample,
    FlowTable,
    FlowTableConfig,
    flow_key_bytes,
    parse_ip_packet,
    sample_from_packet,
)
from topomirror.analysis.metadata import extract

ACK = dpkt.tcp.TH_ACK
PSH_ACK = dpkt.tcp.TH_PUSH | dpkt.tcp.TH_ACK


def tcp(payload: bytes, *, seq: int = 1000, flags: int = ACK, sport: int = 40000, dport: int = 80) -> bytes:
    return packets.ipv4_tcp(payload, seq=seq, flags=flags, sport=sport, dport=dport)


def test_parse_ipv4_tcp_fields() -> None:
    packet = packets.ipv4_tcp(b"hello", sport=1234, dport=80, tos=(46 << 2) | 1)
    parsed = parse_ip_packet(packet)
    assert parsed is not None
    assert (parsed.version, parsed.proto, parsed.sport, parsed.dport) == (4, PROTO_TCP, 1234, 80)
    assert (parsed.dscp, parsed.ecn) == (46, 1)
    assert packet[parsed.payload_offset : parsed.end] == b"hello"
    assert parsed.flow_key == FlowKey(packets.CLIENT_V4, packets.SERVER_V4, PROTO_TCP, 1234, 80)
    assert flow_key_bytes(packet) == parsed.key_bytes


def test_parse_ipv6_udp_with_hop_by_hop_header() -> None:
    plain = packets.ipv6_udp(b"query", sport=5000, dport=53, traffic_class=(34 << 2) | 2)
    # Insert an 8-byte hop-by-hop header (next header UDP, PadN) between the fixed header and UDP.
    hop_by_hop = bytes([17, 0, 1, 4, 0, 0, 0, 0])
    packet = bytearray(plain[:40] + hop_by_hop + plain[40:])
    packet[6] = 0  # next header: hop-by-hop
    packet[4:6] = (len(packet) - 40).to_bytes(2, "big")
    parsed = parse_ip_packet(bytes(packet))
    assert parsed is not None
    assert (parsed.version, parsed.proto, parsed.sport, parsed.dport) == (6, 17, 5000, 53)
    assert (parsed.dscp, parsed.ecn) == (34, 2)
    assert parsed.src == packets.CLIENT_V6 and parsed.dst == packets.SERVER_V6
    assert bytes(packet)[parsed.payload_offset : parsed.end] == b"query"


def test_trailing_bytes_beyond_ip_length_are_ignored() -> None:
    packet = tcp(b"data") + b"\x00" * 6  # link-layer padding
    parsed = parse_ip_packet(packet)
    assert parsed is not None and packet[parsed.payload_offset : parsed.end] == b"data"


def test_non_first_fragment_has_no_ports() -> None:
    packet = bytearray(tcp(b"x" * 40))
    packet[6:8] = (0x2000 | 3).to_bytes(2, "big")  # MF and offset 24 bytes
    parsed = parse_ip_packet(bytes(packet))
    assert parsed is not None and parsed.is_fragment
    assert (parsed.sport, parsed.dport, parsed.payload_length) == (0, 0, 0)
    assert flow_key_bytes(bytes(packet)) == parsed.key_bytes


@pytest.mark.parametrize("packet", [b"", b"\x45", b"\x45" + b"\x00" * 18, b"\x60" + b"\x00" * 30, b"\x70" * 60])
def test_malformed_packets_parse_to_none(packet: bytes) -> None:
    assert parse_ip_packet(packet) is None
    assert flow_key_bytes(packet) is None


def test_key_bytes_round_trip() -> None:
    key = flow_key_bytes(packets.ipv6_udp(b"x", sport=1, dport=2))
    assert key is not None and len(key) == 37
    assert FlowKey.from_key_bytes(key) == FlowKey(packets.CLIENT_V6, packets.SERVER_V6, 17, 1, 2)
    assert FlowKey.from_key_bytes(key).reversed() == FlowKey(packets.SERVER_V6, packets.CLIENT_V6, 17, 2, 1)
    with pytest.raises(ValueError, match="13 or 37"):
        FlowKey.from_key_bytes(b"short")


def test_sample_is_bounded_by_packets() -> None:
    table = FlowTable(FlowTableConfig(sample_packets=4))
    for index in range(6):
        table.observe(tcp(bytes([65 + index]) * 10, seq=1000 + 10 * index), now=0.01 * index)
    sample = table.take_sample()
    assert sample is not None and sample.completion == "packets"
    assert sample.payload == b"A" * 10 + b"B" * 10 + b"C" * 10 + b"D" * 10
    assert table.take_sample() is None
    stats = table.stats(sample.key_bytes)
    assert stats is not None and stats.packets == 6 and not stats.sampling


def test_packets_without_payload_do_not_use_up_the_packet_bound() -> None:
    table = FlowTable(FlowTableConfig(sample_packets=2))
    table.observe(tcp(b"", flags=dpkt.tcp.TH_SYN, seq=999), now=0.0)
    table.observe(tcp(b"", seq=1000), now=0.001)
    table.observe(tcp(b"first", seq=1000), now=0.002)
    assert table.take_sample() is None
    table.observe(tcp(b"second", seq=1005), now=0.003)
    sample = table.take_sample()
    assert sample is not None and sample.payload == b"firstsecond" and sample.packets == 4


def test_sample_is_bounded_by_bytes() -> None:
    table = FlowTable(FlowTableConfig(sample_bytes=4096))
    for index in range(3):
        table.observe(tcp(b"z" * 2000, seq=1000 + 2000 * index), now=0.0)
    sample = table.take_sample()
    assert sample is not None and sample.completion == "bytes" and len(sample.payload) == 4096


def test_sample_is_bounded_by_time_without_further_packets() -> None:
    table = FlowTable(FlowTableConfig(sample_window_s=0.5))
    table.observe(tcp(b"partial"), now=10.0)
    assert table.flush_due(10.49) == 0
    assert table.flush_due(10.5) == 1
    sample = table.take_sample()
    assert sample is not None and sample.completion == "time" and sample.payload == b"partial"
    assert sample.first_seen == 10.0 and sample.completed_at == 10.5


def test_packet_after_the_window_completes_the_sample_without_it() -> None:
    table = FlowTable(FlowTableConfig(sample_window_s=0.5))
    table.observe(tcp(b"early", seq=1000), now=0.0)
    table.observe(tcp(b"late", seq=1005), now=0.7)
    sample = table.take_sample()
    assert sample is not None and sample.completion == "time" and sample.payload == b"early"


def test_push_completes_a_request_at_once() -> None:
    table = FlowTable()
    request = packets.http_request("GET", "/x", [("Host", "a.example")])
    table.observe(tcp(request, flags=PSH_ACK), now=0.0)
    sample = table.take_sample()
    assert sample is not None and sample.completion == "push"
    assert extract(sample).http_path == "/x"


def test_udp_datagram_completes_a_sample_at_once() -> None:
    table = FlowTable()
    table.observe(packets.ipv4_udp(packets.dns_query("example.com", dpkt.dns.DNS_A)), now=0.0)
    sample = table.take_sample()
    assert sample is not None and sample.completion == "push"
    assert extract(sample).dns_qname == "example.com"


def test_h2c_sampling_waits_for_the_headers_frame() -> None:
    table = FlowTable()
    request = packets.grpc_request("/pkg.Svc/Call")
    preface_and_settings = request[:24 + 9 + int.from_bytes(request[24:27], "big")]
    rest = request[len(preface_and_settings):]
    table.observe(tcp(preface_and_settings, seq=1000, flags=PSH_ACK, dport=50051), now=0.0)
    assert table.take_sample() is None
    table.observe(tcp(rest, seq=1000 + len(preface_and_settings), flags=PSH_ACK, dport=50051), now=0.001)
    sample = table.take_sample()
    assert sample is not None and sample.completion == "push"
    assert extract(sample).grpc_path == "/pkg.Svc/Call"


def test_fin_completes_the_sample() -> None:
    table = FlowTable()
    table.observe(tcp(b"bye", flags=dpkt.tcp.TH_FIN | ACK), now=0.0)
    sample = table.take_sample()
    assert sample is not None and sample.completion == "fin"


def test_out_of_order_and_retransmitted_segments_are_put_in_order() -> None:
    table = FlowTable(FlowTableConfig(sample_packets=4))
    table.observe(tcp(b"world", seq=1005), now=0.0)  # first seen, but later in the stream
    table.observe(tcp(b"hello", seq=1000), now=0.001)
    table.observe(tcp(b"hello", seq=1000), now=0.002)  # retransmission
    table.observe(tcp(b"lowo", seq=1003), now=0.003)  # overlap
    sample = table.take_sample()
    assert sample is not None and sample.payload == b"helloworld"


def test_a_gap_ends_the_stream_start() -> None:
    table = FlowTable(FlowTableConfig(sample_packets=2))
    table.observe(tcp(b"head", seq=0xFFFFFFFE), now=0.0)  # wraps past zero
    table.observe(tcp(b"tail", seq=10), now=0.001)  # bytes 2..9 missing
    sample = table.take_sample()
    assert sample is not None and sample.payload == b"head"


def test_full_queue_drops_the_oldest_sample_and_counts() -> None:
    table = FlowTable(FlowTableConfig(sample_queue_capacity=2))
    for sport in range(5):
        table.observe(tcp(b"GET", flags=PSH_ACK, sport=41000 + sport), now=0.0)
    assert table.dropped_samples == 3
    counters = table.counters()
    assert counters.dropped_samples == 3 and counters.samples_completed == 5 and counters.queued_samples == 2
    assert [sample.key.sport for sample in table.take_samples()] == [41003, 41004]


def test_idle_flows_expire() -> None:
    table = FlowTable(FlowTableConfig(idle_timeout_s=30.0, sample_window_s=60.0))
    table.observe(tcp(b"a", flags=PSH_ACK, sport=1), now=0.0)
    table.observe(tcp(b"b", sport=2), now=10.0)  # still sampling when it expires
    assert table.expire(now=29.9) == 0
    assert table.expire(now=30.0) == 1 and len(table) == 1
    assert table.expire(now=40.0) == 1 and len(table) == 0
    samples = table.take_samples()
    assert [sample.completion for sample in samples] == ["push", "expired"]
    assert table.counters().flows_expired == 2


def test_max_flows_bounds_the_table() -> None:
    table = FlowTable(FlowTableConfig(max_flows=2))
    for sport in range(4):
        table.observe(tcp(b"x", sport=50000 + sport), now=0.0)
    counters = table.counters()
    assert counters.active_flows == 2 and counters.untracked_packets == 2 and counters.flows_created == 2


def test_malformed_packets_are_counted_not_raised() -> None:
    table = FlowTable()
    assert table.observe(b"\x45\x00garbage", now=0.0) is None
    assert table.observe(b"", now=0.0) is None
    assert table.counters().malformed_packets == 2 and table.counters().packets == 0


def test_observe_returns_the_flow_key_bytes_and_counts_established_packets() -> None:
    table = FlowTable()
    packet = tcp(b"GET / HTTP/1.1\r\n\r\n", flags=PSH_ACK)
    key = table.observe(packet, now=0.0)
    for index in range(10):
        assert table.observe(tcp(b"more", seq=2000 + index), now=1.0 + index) == key
    stats = table.stats(key) if key else None
    assert stats is not None and stats.packets == 11 and stats.last_seen == 10.0
    counters = table.counters()
    assert counters.packets == 11 and counters.samples_completed == 1


def test_config_rejects_nonsense_bounds() -> None:
    with pytest.raises(ValueError, match="must be >= 1"):
        FlowTableConfig(sample_packets=0)
    with pytest.raises(ValueError, match="idle_timeout_s"):
        FlowTableConfig(idle_timeout_s=0)


def test_fast_constructed_values_equal_normally_constructed_ones() -> None:
    sample = sample_from_packet(tcp(b"GET / HTTP/1.1\r\n\r\n", flags=PSH_ACK))
    assert sample is not None
    normal = FlowSample(key_bytes=sample.key_bytes, first_seen=0.0, completed_at=0.0, payloads=sample.payloads,
                        packets=1, ip_version=4, dscp=0, ecn=0, completion="packets")
    assert sample == normal and hash(sample) == hash(normal) and repr(sample) == repr(normal)
    assert sample.key == FlowKey(packets.CLIENT_V4, packets.SERVER_V4, PROTO_TCP, 40000, 80)
    assert (sample.proto, sample.sport, sample.dport) == (PROTO_TCP, 40000, 80)
    with pytest.raises(dataclasses.FrozenInstanceError):
        sample.packets = 2  # type: ignore[misc]
    key = sample.key
    assert key == FlowKey(key.src, key.dst, key.proto, key.sport, key.dport) and hash(key) == hash(
        FlowKey(key.src, key.dst, key.proto, key.sport, key.dport))
    assert FlowKey.from_key_bytes(key.to_key_bytes()) == key


def test_flow_key_text() -> None:
    assert str(FlowKey("10.0.0.1", "10.0.0.2", 6, 1, 2)) == "tcp 10.0.0.1:1 -> 10.0.0.2:2"
    assert str(FlowKey("fd00::1", "fd00::2", 17, 1, 2)) == "udp [fd00::1]:1 -> [fd00::2]:2"
    assert str(FlowKey("fd00::1", "fd00::2", 58, 0, 0)) == "58 [fd00::1] -> [fd00::2]"
