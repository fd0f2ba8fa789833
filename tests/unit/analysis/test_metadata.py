from __future__ import annotations

import hpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.analysis import packets
from topomirror.analysis.flows import PROTO_TCP, PROTO_UDP, FlowKey, FlowSample, sample_from_packet
from topomirror.analysis.metadata import H2_PREFACE, Metadata, _decode_header_block, extract, extract_packet


def sample(payload: bytes | list[bytes], *, proto: int = PROTO_TCP, sport: int = 40000, dport: int = 80,
           dscp: int = 0, ecn: int = 0) -> FlowSample:
    chunks = tuple(payload) if isinstance(payload, list) else (payload,)
    key = FlowKey("10.0.0.1", "10.0.0.2", proto, sport, dport)
    return FlowSample(key_bytes=key.to_key_bytes(), first_seen=0.0, completed_at=0.0, payloads=chunks,
                      packets=len(chunks), ip_version=4, dscp=dscp, ecn=ecn, completion="push")


def test_request_split_over_segments_is_joined() -> None:
    request = packets.http_request("PUT", "/objects/a", [("Host", "s3.example"), ("Content-Length", "3000000")])
    metadata = extract(sample([request[:10], request[10:]]))
    assert (metadata.http_method, metadata.http_path, metadata.http_host) == ("PUT", "/objects/a", "s3.example")
    assert metadata.announced_bytes == 3_000_000


def test_truncated_request_head_keeps_what_was_seen() -> None:
    request = packets.http_request("GET", "/a/b", [("Host", "h.example"), ("Accept", "text/html")])
    metadata = extract(sample(request[: request.index(b"Accept") + 3]))
    assert (metadata.http_method, metadata.http_path, metadata.http_host) == ("GET", "/a/b", "h.example")
    assert metadata.parse_error == "HTTP/1.x: header section truncated"


def test_invalid_http_is_a_parse_error_not_an_exception() -> None:
    metadata = extract(sample(b"GET /x HTTP/1.1\r\nContent-Length: abc\r\n\r\n"))
    assert metadata.app_protocol == "http/1.1" and metadata.parse_error is not None
    assert metadata.parse_error.startswith("HTTP/1.x")


def test_chunked_response_announces_nothing() -> None:
    response = packets.http_response(200, [("Transfer-Encoding", "chunked")])
    metadata = extract(sample(response, sport=80, dport=40000))
    assert metadata.http_status == 200 and metadata.announced_bytes is None


def test_pipelined_requests_describe_the_first() -> None:
    first = packets.http_request("GET", "/first", [("Host", "one.example")])
    second = packets.http_request("POST", "/second", [("Host", "two.example"), ("Content-Length", "9")])
    metadata = extract(sample(first + second))
    assert (metadata.http_path, metadata.http_host, metadata.content_length) == ("/first", "one.example", None)


def test_websocket_upgrade_head_is_parsed() -> None:
    request = (b"GET /chat HTTP/1.1\r\nHost: ws.example\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
               b"\x81\x05hello")
    metadata = extract(sample(request))
    assert (metadata.http_path, metadata.http_host, metadata.parse_error) == ("/chat", "ws.example", None)


def test_client_hello_split_over_two_records() -> None:
    hello = packets.tls_client_hello("split.example.com", ["h2"])
    body = hello[5:]
    records = b"\x16\x03\x01" + (100).to_bytes(2, "big") + body[:100]
    records += b"\x16\x03\x01" + (len(body) - 100).to_bytes(2, "big") + body[100:]
    metadata = extract(sample(records, dport=443))
    assert (metadata.tls_sni, metadata.tls_alpn, metadata.parse_error) == ("split.example.com", ("h2",), None)


def test_truncated_client_hello_reports_the_cut_and_keeps_sni() -> None:
    hello = packets.tls_client_hello("cut.example.com", ["http/1.1"])
    sni_end = hello.index(b"cut.example.com") + len(b"cut.example.com")
    metadata = extract(sample(hello[: sni_end + 1], dport=443))
    assert metadata.tls_sni == "cut.example.com"
    assert metadata.parse_error is not None and "truncated" in metadata.parse_error


def test_tls_record_with_other_handshake_is_an_error() -> None:
    metadata = extract(sample(b"\x16\x03\x03\x00\x04\x0b\x00\x00\x00", dport=443))
    assert metadata.app_protocol == "tls" and metadata.parse_error is not None


def test_dns_over_tcp() -> None:
    query = packets.dns_query("tcp.example.com", 16)
    metadata = extract(sample(len(query).to_bytes(2, "big") + query, dport=53))
    assert (metadata.dns_qname, metadata.dns_qtype) == ("tcp.example.com", "TXT")


def test_unknown_dns_type_uses_rfc3597_notation() -> None:
    metadata = extract(sample(packets.dns_query("x.example", 4242), proto=PROTO_UDP, dport=53))
    assert metadata.dns_qtype == "TYPE4242"


def test_truncated_dns_is_a_parse_error() -> None:
    query = packets.dns_query("short.example.com", 1)
    metadata = extract(sample(query[:20], proto=PROTO_UDP, dport=53))
    assert metadata.parse_error == "DNS: message truncated"


def test_plain_http2_request_is_http2_not_grpc() -> None:
    request = packets.h2_client_request([(":method", "GET"), (":scheme", "http"), (":path", "/index.html"),
                                         (":authority", "web.example")])
    metadata = extract(sample(request, dport=8080))
    assert (metadata.app_protocol, metadata.http_path, metadata.grpc_path) == ("http2", "/index.html", None)


def test_h2_request_body_size_is_announced() -> None:
    request = packets.h2_client_request([(":method", "POST"), (":scheme", "http"), (":path", "/upload"),
                                         (":authority", "web.example"), ("content-length", "8000000")])
    metadata = extract(sample(request, dport=8080))
    assert metadata.announced_bytes == 8_000_000 and metadata.announced_by == "HTTP/2 request content-length"


def test_h2_headers_with_continuation_padding_and_priority() -> None:
    encoded = hpack.Encoder().encode([(":method", "POST"), (":path", "/pkg.Svc/Long"),
                                      ("content-type", "application/grpc+proto")])
    first, second = encoded[:5], encoded[5:]
    payload = bytes([3]) + b"\x80\x00\x00\x00\x10" + first + b"\x00" * 3  # pad length 3, priority fields
    headers_frame = len(payload).to_bytes(3, "big") + bytes([0x1, 0x08 | 0x20]) + (1).to_bytes(4, "big") + payload
    continuation = len(second).to_bytes(3, "big") + bytes([0x9, 0x4]) + (1).to_bytes(4, "big") + second
    metadata = extract(sample(H2_PREFACE + headers_frame + continuation, dport=50051))
    assert (metadata.app_protocol, metadata.grpc_path, metadata.parse_error) == ("grpc", "/pkg.Svc/Long", None)


def test_h2_server_response_status_and_grpc() -> None:
    settings_frame = (0).to_bytes(3, "big") + b"\x04\x00" + b"\x00" * 4
    block = hpack.Encoder().encode([(":status", "200"), ("content-type", "application/grpc")])
    headers_frame = len(block).to_bytes(3, "big") + b"\x01\x04" + (1).to_bytes(4, "big") + block
    metadata = extract(sample(settings_frame + headers_frame, sport=50051, dport=40000))
    assert (metadata.app_protocol, metadata.http_status) == ("grpc", 200)


def test_h2_preface_alone_is_recognised_with_a_reason() -> None:
    metadata = extract(sample(H2_PREFACE, dport=50051))
    assert metadata.app_protocol == "http2" and metadata.parse_error == "HTTP/2: no HEADERS frame in the sample"


def test_truncated_grpc_headers_keep_the_path_when_it_was_seen() -> None:
    request = packets.grpc_request("/pkg.Svc/Cut")
    metadata = extract(sample(request[:-12], dport=50051))
    assert metadata.grpc_path == "/pkg.Svc/Cut" or metadata.http_path == "/pkg.Svc/Cut"
    assert metadata.parse_error == "HTTP/2: header block truncated"


def test_dscp_and_ecn_come_from_the_sample() -> None:
    assert extract(sample(b"", dscp=46, ecn=2)) == Metadata(dscp=46, ecn=2)


# --- the lazy HPACK walker against hpack.Decoder ------------------------------------------------

WANTED = [":method", ":path", ":authority", ":status", "content-type", "content-length"]
header_names = st.sampled_from(WANTED + ["user-agent", "te", "grpc-timeout", "x-custom", "cookie", "accept"])
header_values = st.one_of(
    st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=40),
    st.sampled_from(["application/grpc", "application/grpc+proto", "POST", "/pkg.Svc/M", "200", "1234"]),
)


@settings(max_examples=300, deadline=None)
@given(headers=st.lists(st.tuples(header_names, header_values), max_size=12), huffman=st.booleans())
def test_hpack_walker_agrees_with_hpack_decoder(headers: list[tuple[str, str]], huffman: bool) -> None:
    block = hpack.Encoder().encode(headers, huffman=huffman)
    expected: dict[bytes, str] = {}
    for name, value in hpack.Decoder().decode(block, raw=True):
        if name.decode() in WANTED:
            expected.setdefault(name, value.decode("latin-1"))
    found, error = _decode_header_block(block)
    assert error is None
    if found.get(b"content-type", "").startswith("application/grpc"):
        # The walker stops once a gRPC message has named itself: compare what it read.
        expected = {name: value for name, value in expected.items() if name in found}
    assert found == expected


@settings(max_examples=300, deadline=None)
@given(block=st.binary(max_size=200))
def test_hpack_walker_never_raises(block: bytes) -> None:
    found, error = _decode_header_block(block)
    assert isinstance(found, dict) and (error is None or error.startswith("HTTP/2"))


@pytest.mark.parametrize("cut", range(1, 40))
def test_hpack_walker_on_cut_blocks(cut: int) -> None:
    block = hpack.Encoder().encode([(":method", "POST"), (":path", "/a.B/C"), ("content-type", "application/grpc")])
    found, _ = _decode_header_block(block[:cut])
    assert set(found) <= {b":method", b":path", b"content-type"}


def test_extract_packet_matches_extract_of_a_sample() -> None:
    packet = packets.ipv4_tcp(packets.tls_client_hello("same.example", ["h2"]), dport=443, tos=(46 << 2) | 1)
    sample = sample_from_packet(packet)
    assert sample is not None
    assert extract_packet(packet) == extract(sample)
    assert extract_packet(b"\x00" * 10) is None


def test_metadata_built_by_extract_equals_one_built_by_hand() -> None:
    metadata = extract(sample(packets.dns_query("a.example", 1), proto=PROTO_UDP, dport=53))
    expected = Metadata(app_protocol="dns", dscp=0, ecn=0, dns_qname="a.example", dns_qtype="A")
    assert metadata == expected and hash(metadata) == hash(expected) and repr(metadata) == repr(expected)
