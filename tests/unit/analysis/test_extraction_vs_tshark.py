"""Metadata extraction checked field for field against what tshark reports for the same packets.

Packets are built with real libraries (dpkt, h11, OpenSSL via ssl, h2), written to one pcap and
dissected by tshark once per test session. tshark is required: a missing tshark fails the tests.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import dpkt
import pytest

from tests.unit.analysis import packets
from topomirror.analysis.flows import parse_ip_packet, sample_from_packet
from topomirror.analysis.metadata import Metadata, extract

TSHARK_FIELDS = (
    "frame.number",
    "ip.dsfield.dscp", "ip.dsfield.ecn", "ipv6.tclass.dscp", "ipv6.tclass.ecn",
    "http.request.method", "http.request.uri", "http.host", "http.content_length_header", "http.content_type",
    "http.response.code",
    "tls.handshake.extensions_server_name", "tls.handshake.extensions_alpn_str",
    "dns.qry.name", "dns.qry.type",
    "http2.headers.method", "http2.headers.path", "http2.headers.authority", "http2.headers.content_type",
)
GRPC_PORT = 50051

CASES: dict[str, bytes] = {
    "http_get": packets.ipv4_tcp(packets.http_request(
        "GET", "/api/v1/items?id=42", [("Host", "shop.example.com"), ("User-Agent", "curl/8.5.0"), ("Accept", "*/*")],
    ), sport=40001),
    "http_post": packets.ipv4_tcp(packets.http_request(
        "POST", "/upload/backup.tar",
        [("Host", "backup.example.com:8080"), ("Content-Type", "application/x-tar"), ("Content-Length", "52428800")],
        body=b"\x00" * 200,
    ), sport=40002),
    "http_response": packets.ipv4_tcp(packets.http_response(
        200, [("Content-Type", "application/octet-stream"), ("Content-Length", "25000000")], body_start=b"\x01" * 512,
    ), sport=80, dport=40003, src=packets.SERVER_V4, dst=packets.CLIENT_V4),
    "http_response_v6": packets.ipv6_tcp(packets.http_response(
        404, [("Content-Type", "text/html"), ("Content-Length", "153")],
    ), sport=80, dport=40004, src=packets.SERVER_V6, dst=packets.CLIENT_V6, traffic_class=(10 << 2) | 1),
    "tls_client_hello": packets.ipv4_tcp(
        packets.tls_client_hello("api.payments.example.com", ["h2", "http/1.1"]),
        sport=40005, dport=443, tos=(34 << 2) | 2,
    ),
    "dns_a": packets.ipv4_udp(packets.dns_query("www.example.org", dpkt.dns.DNS_A), sport=40006, tos=(46 << 2) | 1),
    "dns_aaaa_v6": packets.ipv6_udp(packets.dns_query("ipv6.example.net", dpkt.dns.DNS_AAAA), sport=40007,
                                   traffic_class=46 << 2),
    "grpc": packets.ipv4_tcp(packets.grpc_request("/helloworld.Greeter/SayHello"), sport=40008, dport=GRPC_PORT),
    "dscp_ecn_only": packets.ipv4_tcp(b"\x8f\x13garbage payload", sport=40009, dport=9999, tos=(8 << 2) | 3),
}


def _require_tshark() -> str:
    tshark = shutil.which("tshark")
    if tshark is None:
        pytest.fail("tshark is required for the extraction tests: "
                    "DEBIAN_FRONTEND=noninteractive apt-get install -y tshark")
    return tshark


@pytest.fixture(scope="module")
def tshark_rows(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, str]]:
    tshark = _require_tshark()
    pcap = tmp_path_factory.mktemp("pcaps") / "extraction.pcap"
    packets.write_pcap(pcap, list(CASES.values()))
    # Each case is the first packet of its own flow: tell tshark not to wait for the rest of a body.
    command = [tshark, "-r", str(pcap), "-n", "-d", f"tcp.port=={GRPC_PORT},http2",
               "-o", "http.desegment_body:FALSE", "-o", "http.desegment_headers:FALSE", "-T", "fields",
               "-E", "separator=/t", "-E", "occurrence=a", "-E", "aggregator=,"]
    for field in TSHARK_FIELDS:
        command += ["-e", field]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, f"tshark failed: {result.stderr}"
    rows = [dict(zip(TSHARK_FIELDS, line.split("\t"), strict=True)) for line in result.stdout.splitlines()]
    assert len(rows) == len(CASES), result.stdout
    return {name: row for name, row in zip(CASES, rows, strict=True)}


def _extract(name: str) -> Metadata:
    sample = sample_from_packet(CASES[name])
    assert sample is not None
    return extract(sample)


def _int_or_none(text: str) -> int | None:
    return int(text) if text else None


def _none_if_empty(text: str) -> str | None:
    return text or None


def _ip_marks(row: dict[str, str]) -> tuple[int | None, int | None]:
    dscp = row["ip.dsfield.dscp"] or row["ipv6.tclass.dscp"]
    ecn = row["ip.dsfield.ecn"] or row["ipv6.tclass.ecn"]
    return _int_or_none(dscp), _int_or_none(ecn)


@pytest.mark.parametrize("name", list(CASES))
def test_dscp_and_ecn_match_tshark(name: str, tshark_rows: dict[str, dict[str, str]]) -> None:
    metadata = _extract(name)
    assert (metadata.dscp, metadata.ecn) == _ip_marks(tshark_rows[name])
    parsed = parse_ip_packet(CASES[name])
    assert parsed is not None and (parsed.dscp, parsed.ecn) == _ip_marks(tshark_rows[name])


@pytest.mark.parametrize("name", ["http_get", "http_post"])
def test_http_request_matches_tshark(name: str, tshark_rows: dict[str, dict[str, str]]) -> None:
    row, metadata = tshark_rows[name], _extract(name)
    assert row["http.request.method"], "tshark did not dissect the request"
    assert metadata.app_protocol == "http/1.1"
    assert metadata.http_method == row["http.request.method"]
    assert metadata.http_path == row["http.request.uri"]
    assert metadata.http_host == row["http.host"]
    assert metadata.content_length == _int_or_none(row["http.content_length_header"])
    assert metadata.content_type == _none_if_empty(row["http.content_type"])
    assert metadata.parse_error is None


def test_http_upload_announces_its_size(tshark_rows: dict[str, dict[str, str]]) -> None:
    metadata = _extract("http_post")
    assert metadata.announced_bytes == int(tshark_rows["http_post"]["http.content_length_header"]) == 52_428_800
    assert metadata.announced_by == "HTTP request Content-Length"


@pytest.mark.parametrize("name", ["http_response", "http_response_v6"])
def test_http_response_matches_tshark(name: str, tshark_rows: dict[str, dict[str, str]]) -> None:
    row, metadata = tshark_rows[name], _extract(name)
    assert row["http.response.code"], "tshark did not dissect the response"
    assert metadata.http_status == int(row["http.response.code"])
    assert metadata.content_length == int(row["http.content_length_header"])
    assert metadata.content_type == row["http.content_type"]
    assert metadata.announced_bytes == metadata.content_length
    assert metadata.announced_by == "HTTP response Content-Length"
    assert metadata.parse_error is None


def test_tls_client_hello_matches_tshark(tshark_rows: dict[str, dict[str, str]]) -> None:
    row, metadata = tshark_rows["tls_client_hello"], _extract("tls_client_hello")
    assert metadata.app_protocol == "tls"
    assert metadata.tls_sni == row["tls.handshake.extensions_server_name"] == "api.payments.example.com"
    assert metadata.tls_alpn == tuple(row["tls.handshake.extensions_alpn_str"].split(",")) == ("h2", "http/1.1")
    assert metadata.parse_error is None


@pytest.mark.parametrize(("name", "expected_type"), [("dns_a", "A"), ("dns_aaaa_v6", "AAAA")])
def test_dns_query_matches_tshark(name: str, expected_type: str, tshark_rows: dict[str, dict[str, str]]) -> None:
    row, metadata = tshark_rows[name], _extract(name)
    assert metadata.app_protocol == "dns"
    assert metadata.dns_qname == row["dns.qry.name"]
    assert metadata.dns_qtype == expected_type
    assert int(row["dns.qry.type"]) == {"A": dpkt.dns.DNS_A, "AAAA": dpkt.dns.DNS_AAAA}[expected_type]


def test_grpc_over_h2c_matches_tshark(tshark_rows: dict[str, dict[str, str]]) -> None:
    row, metadata = tshark_rows["grpc"], _extract("grpc")
    assert row["http2.headers.path"], "tshark did not dissect HTTP/2 (decode-as tcp.port==50051,http2)"
    assert metadata.app_protocol == "grpc"
    assert metadata.grpc_path == row["http2.headers.path"] == "/helloworld.Greeter/SayHello"
    assert metadata.grpc_service == "helloworld.Greeter"
    assert metadata.http_method == row["http2.headers.method"]
    assert metadata.http_host == row["http2.headers.authority"]
    assert metadata.content_type == row["http2.headers.content_type"]
    assert metadata.parse_error is None


def test_unrecognised_payload_carries_only_ip_marks(tshark_rows: dict[str, dict[str, str]]) -> None:
    metadata = _extract("dscp_ecn_only")
    assert metadata == Metadata(dscp=8, ecn=3)
    assert _ip_marks(tshark_rows["dscp_ecn_only"]) == (8, 3)


def test_pcap_round_trip_keeps_packets(tmp_path: Path) -> None:
    # The pcap the tshark tests read holds exactly our IP packets (Ethernet-wrapped), so both
    # sides look at the same bytes.
    pcap = tmp_path / "roundtrip.pcap"
    packets.write_pcap(pcap, list(CASES.values()))
    with pcap.open("rb") as file:
        frames = [bytes(dpkt.ethernet.Ethernet(buf).data) for _, buf in dpkt.pcap.Reader(file)]
    assert frames == list(CASES.values())
