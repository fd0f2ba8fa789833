"""Application metadata from the first payload bytes of a flow: `extract(sample) -> Metadata`.

What is extracted, and with what:
- HTTP/1.x request (method, path, Host, Content-Length, Content-Type) and response (status,
  Content-Length, Content-Type): `httptools` (llhttp, the Node.js parser). h11 would do too but
  costs about 45 us per request head against about 3 us for httptools, and this runs once per new flow.
- TLS ClientHello SNI and ALPN: parsed here. The handshake layout is small and fixed (RFC 8446
  section 4.1.2); a hand parser with explicit bounds checks handles a ClientHello cut by the sample
  bound or split over several records and costs no objects, where `dpkt.ssl` parses every
  extension into objects, raises on truncation and has not been released since 2022.
- DNS query name and type: `dpkt.dns` (about 10 us per query, against about 20-30 us for dnslib).
- gRPC / HTTP/2 over cleartext: the frames are walked here; the HEADERS block is decoded with a
  lazy HPACK walker that uses `hpack`'s static table and Huffman decoder but decodes only the few
  headers we need (`:path`, `:method`, `:authority`, `:status`, `content-type`, `content-length`).
  `hpack.Decoder` Huffman-decodes every header of the block (about 80 us for a typical gRPC
  request). Any reference to the dynamic table falls back to `hpack.Decoder` for the whole block,
  and the walker is differential-tested against it.
- DSCP and ECN: from the IP header, via the sample.

Protocols are recognised by cheap prefix checks first (an HTTP method token, "HTTP/1.", the
HTTP/2 preface, a TLS handshake record header, port 53), so unknown payloads cost almost nothing.
Arbitrary bytes never raise out of `extract`: each parser's own exceptions are caught narrowly
and the reason is recorded in `Metadata.parse_error`, with whatever was found before the error.
"""

from __future__ import annotations

import functools
import struct
from dataclasses import dataclass
from typing import Any

import dpkt
import hpack
import httptools
from hpack.huffman import HuffmanEncoder
from hpack.huffman_constants import REQUEST_CODES, REQUEST_CODES_LENGTH
from hpack.huffman_table import decode_huffman
from hpack.table import HeaderTable

from topomirror.analysis.flows import PROTO_TCP, PROTO_UDP, FlowSample, new_frozen, parse_ip_packet

APP_HTTP1 = "http/1.1"
APP_HTTP2 = "http2"
APP_GRPC = "grpc"
APP_TLS = "tls"
APP_DNS = "dns"

DNS_PORTS = frozenset({53, 5353})


@dataclass(frozen=True)
class Metadata:
    """Application metadata of a flow's first bytes. Every field is optional: absent means not seen."""

    app_protocol: str | None = None
    dscp: int | None = None
    ecn: int | None = None
    http_method: str | None = None
    # HTTP/1.x request target or HTTP/2 :path (also set for gRPC, whose path is the method).
    http_path: str | None = None
    # Host header or HTTP/2 :authority.
    http_host: str | None = None
    http_status: int | None = None
    content_length: int | None = None
    content_type: str | None = None
    # Bytes the flow says it is about to send (a response or upload Content-Length) ...
    announced_bytes: int | None = None
    # ... and where that number came from, for explanations ("HTTP response Content-Length").
    announced_by: str | None = None
    tls_sni: str | None = None
    tls_alpn: tuple[str, ...] | None = None
    dns_qname: str | None = None
    dns_qtype: str | None = None
    grpc_path: str | None = None
    parse_error: str | None = None

    @property
    def grpc_service(self) -> str | None:
        """The service of a gRPC path: "/pkg.Service/Method" gives "pkg.Service"."""
        if not self.grpc_path or self.grpc_path.count("/") != 2:
            return None
        return self.grpc_path.split("/")[1]


class _ParseError(Exception):
    """A reason the payload could not be fully parsed; recorded in Metadata.parse_error."""


def extract(sample: FlowSample) -> Metadata:
    """Metadata from a flow sample. Never raises on any payload."""
    key = sample.key_bytes  # read the ports in place: cheaper than three property calls
    return extract_payload(
        sample.payload, key[-1], (key[-5] << 8) | key[-4], (key[-3] << 8) | key[-2], sample.dscp, sample.ecn
    )


def may_carry_metadata(packet: bytes) -> bool:
    """False only when `extract_packet` can find no application protocol and no announced size in
    this IP packet: an IPv4 TCP segment without payload (a handshake, an ack) or UDP on a port no
    extractor reads. A filter in front of the node's analysis queue, which sees thousands of new
    flows a second; anything it is unsure of (IPv6, fragments, odd headers) it lets through."""
    size = len(packet)
    if size < 20 or packet[0] >> 4 != 4 or packet[6] & 0x3F or packet[7]:
        return True
    ihl = (packet[0] & 0x0F) * 4
    total = (packet[2] << 8) | packet[3]
    end = total if total < size else size
    proto = packet[9]
    if proto == PROTO_TCP:
        return end < ihl + 13 or end > ihl + ((packet[ihl + 12] >> 4) << 2)
    if proto == PROTO_UDP:
        if end < ihl + 8:
            return True
        return end > ihl + 8 and (((packet[ihl] << 8) | packet[ihl + 1]) in DNS_PORTS
                                  or ((packet[ihl + 2] << 8) | packet[ihl + 3]) in DNS_PORTS)
    return False


def extract_packet(packet: bytes) -> Metadata | None:
    """Metadata from one IP packet (offline analysis of captures, benchmarks). None if the packet is malformed."""
    parsed = parse_ip_packet(packet)
    if parsed is None:
        return None
    return extract_payload(
        packet[parsed.payload_offset : parsed.end], parsed.proto, parsed.sport, parsed.dport, parsed.dscp, parsed.ecn
    )


def extract_payload(payload: bytes, proto: int, sport: int, dport: int, dscp: int | None = None,
                    ecn: int | None = None) -> Metadata:
    """Metadata from the start of a flow's payload (TCP stream start or one UDP datagram). Never raises."""
    fields: dict[str, Any] = {"dscp": dscp, "ecn": ecn}
    if payload:
        try:
            if proto == PROTO_TCP:
                _extract_tcp(payload, sport, dport, fields)
            elif proto == PROTO_UDP and (dport in DNS_PORTS or sport in DNS_PORTS):
                _extract_dns(payload, fields)
        except _ParseError as error:
            fields["parse_error"] = str(error)
    return new_frozen(Metadata, fields)


_HTTP_METHODS = frozenset(
    {
        b"GET", b"POST", b"PUT", b"HEAD", b"DELETE", b"OPTIONS", b"PATCH", b"CONNECT", b"TRACE",
        b"PROPFIND", b"PROPPATCH", b"MKCOL", b"COPY", b"MOVE", b"LOCK", b"UNLOCK", b"REPORT", b"SEARCH",
    }
)
_LONGEST_METHOD = max(len(method) for method in _HTTP_METHODS)
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def _extract_tcp(payload: bytes, sport: int, dport: int, fields: dict[str, Any]) -> None:
    first = payload[0]
    if first == 0x16 and len(payload) >= 3 and payload[1] == 0x03:
        _extract_tls(payload, fields)
    elif payload.startswith(b"HTTP/1."):
        _extract_http1(payload, fields, request=False)
    elif first == 0x50 and payload.startswith(H2_PREFACE):  # "P"
        _extract_h2(payload, fields, client=True, offset=len(H2_PREFACE))
    elif 0x41 <= first <= 0x5A and _starts_with_http_method(payload):  # "A".."Z": cheap test first
        _extract_http1(payload, fields, request=True)
    elif _looks_like_h2_server_settings(payload):
        _extract_h2(payload, fields, client=False)
    elif dport in DNS_PORTS or sport in DNS_PORTS:
        # DNS over TCP: a 2-byte length prefix before the message (RFC 1035 section 4.2.2).
        _extract_dns(payload[2:], fields)


def _starts_with_http_method(payload: bytes) -> bool:
    space = payload.find(b" ", 0, _LONGEST_METHOD + 1)
    return space > 0 and payload[:space] in _HTTP_METHODS


# --- HTTP/1.x ------------------------------------------------------------------------------------

class _HttpHeadCollector:
    """httptools callbacks: keep the first message's target and the few headers we use."""

    __slots__ = ("target", "host", "content_length", "content_type", "head_complete")

    def __init__(self) -> None:
        self.target: bytes | None = None
        self.host: bytes | None = None
        self.content_length: bytes | None = None
        self.content_type: bytes | None = None
        self.head_complete = False

    def on_url(self, url: bytes) -> None:
        if not self.head_complete:
            self.target = url if self.target is None else self.target + url

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.head_complete:
            return  # a pipelined second message: the first one describes the flow
        lowered = name.lower()
        if lowered == b"host":
            self.host = value
        elif lowered == b"content-length":
            self.content_length = value
        elif lowered == b"content-type":
            self.content_type = value

    def on_headers_complete(self) -> None:
        self.head_complete = True


def _extract_http1(payload: bytes, fields: dict[str, Any], *, request: bool) -> None:
    fields["app_protocol"] = APP_HTTP1
    collector = _HttpHeadCollector()
    error: str | None
    if request:
        request_parser = httptools.HttpRequestParser(collector)
        error = _feed_http(request_parser, payload)
        if collector.target is not None:
            fields["http_method"] = request_parser.get_method().decode("ascii", "backslashreplace")
            fields["http_path"] = collector.target.decode("latin-1")
    else:
        response_parser = httptools.HttpResponseParser(collector)
        error = _feed_http(response_parser, payload)
        status = response_parser.get_status_code()
        if status:
            fields["http_status"] = status
    if collector.host is not None:
        fields["http_host"] = collector.host.decode("latin-1")
    if collector.content_type is not None:
        fields["content_type"] = collector.content_type.decode("latin-1")
    if collector.content_length is not None:
        length = _parse_content_length(collector.content_length)
        if length is None:
            error = error or f"HTTP/1.x: invalid Content-Length {collector.content_length[:32]!r}"
        else:
            fields["content_length"] = length
            if length > 0:
                fields["announced_bytes"] = length
                fields["announced_by"] = "HTTP request Content-Length" if request else "HTTP response Content-Length"
    if error is None and not collector.head_complete:
        error = "HTTP/1.x: header section truncated"
    if error is not None:
        raise _ParseError(error)


def _feed_http(parser: httptools.HttpRequestParser | httptools.HttpResponseParser, payload: bytes) -> str | None:
    try:
        parser.feed_data(payload)
    except httptools.HttpParserUpgrade:
        pass  # Upgrade / CONNECT: the head was parsed, what follows is another protocol
    except httptools.HttpParserError as parser_error:
        return f"HTTP/1.x: {parser_error}"
    return None


def _parse_content_length(value: bytes) -> int | None:
    value = value.strip()
    # At most 18 digits: a real length fits in 63 bits, and int() of a huge digit string is costly.
    if not value.isdigit() or len(value) > 18:
        return None
    return int(value)


# --- TLS ClientHello -----------------------------------------------------------------------------

_TLS_HANDSHAKE = 0x16
_TLS_CLIENT_HELLO = 0x01
_TLS_SERVER_HELLO = 0x02
_TLS_EXT_SERVER_NAME = 0
_TLS_EXT_ALPN = 16
# A ClientHello spans at most a few records; the bound stops a crafted stream of tiny records.
_TLS_MAX_RECORDS = 16


def _extract_tls(payload: bytes, fields: dict[str, Any]) -> None:
    fields["app_protocol"] = APP_TLS
    # Reassemble handshake bytes from consecutive handshake records (a post-quantum key share
    # makes a ClientHello larger than one TCP segment, not larger than one record, but TLS allows both).
    fragments: list[bytes] = []
    offset = 0
    for _ in range(_TLS_MAX_RECORDS):
        if offset + 5 > len(payload) or payload[offset] != _TLS_HANDSHAKE:
            break
        record_length = (payload[offset + 3] << 8) | payload[offset + 4]
        fragments.append(payload[offset + 5 : offset + 5 + record_length])
        offset += 5 + record_length
    handshake = fragments[0] if len(fragments) == 1 else b"".join(fragments)
    if len(handshake) < 4:
        raise _ParseError("TLS: handshake header truncated")
    if handshake[0] == _TLS_SERVER_HELLO:
        return
    if handshake[0] != _TLS_CLIENT_HELLO:
        raise _ParseError(f"TLS: first handshake message is type {handshake[0]}, not ClientHello")
    declared = int.from_bytes(handshake[1:4], "big")
    body = handshake[4 : 4 + declared]
    sni, alpn, error = _parse_client_hello(body)
    if sni is not None:
        fields["tls_sni"] = sni
    if alpn is not None:
        fields["tls_alpn"] = alpn
    if error is None and len(body) < declared:
        error = f"TLS: ClientHello truncated at {len(body)} of {declared} bytes"
    if error is not None:
        raise _ParseError(error)


def _parse_client_hello(body: bytes) -> tuple[str | None, tuple[str, ...] | None, str | None]:
    """(SNI, ALPN protocols, error) from a ClientHello body that may be cut short anywhere."""
    size = len(body)
    position = 2 + 32  # legacy_version, random
    if position + 1 > size:
        return None, None, "TLS: ClientHello truncated before session id"
    position += 1 + body[position]  # legacy_session_id
    if position + 2 > size:
        return None, None, "TLS: ClientHello truncated before cipher suites"
    position += 2 + ((body[position] << 8) | body[position + 1])
    if position + 1 > size:
        return None, None, "TLS: ClientHello truncated before compression methods"
    position += 1 + body[position]
    if position == size:
        return None, None, None  # a ClientHello without extensions (valid before TLS 1.3)
    if position + 2 > size:
        return None, None, "TLS: ClientHello truncated before extensions"
    extensions_end = position + 2 + ((body[position] << 8) | body[position + 1])
    position += 2
    sni: str | None = None
    alpn: tuple[str, ...] | None = None
    error: str | None = None
    limit = extensions_end if extensions_end < size else size
    # A browser sends 15-20 extensions: step over the others without slicing them.
    while position + 4 <= limit:
        extension_type = (body[position] << 8) | body[position + 1]
        start = position + 4
        position = start + ((body[position + 2] << 8) | body[position + 3])
        if extension_type in (_TLS_EXT_SERVER_NAME, _TLS_EXT_ALPN):
            if position > size:
                error = f"TLS: extension {extension_type} truncated"
                break
            if extension_type == _TLS_EXT_SERVER_NAME:
                sni = _parse_server_name(body[start:position])
                if sni is None:
                    error = "TLS: malformed server_name extension"
            else:
                alpn = _parse_alpn(body[start:position])
                if alpn is None:
                    error = "TLS: malformed ALPN extension"
            if sni is not None and alpn is not None:
                break
    return sni, alpn, error


def _parse_server_name(data: bytes) -> str | None:
    """First host_name of a server_name extension (RFC 6066 section 3), None if malformed."""
    if len(data) < 2:
        return None
    list_end = min(2 + ((data[0] << 8) | data[1]), len(data))
    position = 2
    while position + 3 <= list_end:
        name_type = data[position]
        name_length = (data[position + 1] << 8) | data[position + 2]
        name = data[position + 3 : position + 3 + name_length]
        if len(name) < name_length:
            return None
        if name_type == 0:  # host_name
            # Host names in SNI are ASCII (A-labels); escape anything else rather than fail.
            return name.decode("ascii", "backslashreplace")
        position += 3 + name_length
    return None


def _parse_alpn(data: bytes) -> tuple[str, ...] | None:
    """Protocol names of an ALPN extension (RFC 7301 section 3.1), None if malformed."""
    if len(data) < 2:
        return None
    list_end = 2 + ((data[0] << 8) | data[1])
    if list_end > len(data):
        return None
    protocols: list[str] = []
    position = 2
    while position < list_end:
        length = data[position]
        name = data[position + 1 : position + 1 + length]
        if length == 0 or len(name) < length or position + 1 + length > list_end:
            return None
        protocols.append(name.decode("ascii", "backslashreplace"))
        position += 1 + length
    return tuple(protocols)


# --- DNS -----------------------------------------------------------------------------------------

DNS_TYPE_NAMES = {
    1: "A", 2: "NS", 5: "CNAME", 6: "SOA", 12: "PTR", 15: "MX", 16: "TXT", 28: "AAAA", 33: "SRV",
    35: "NAPTR", 41: "OPT", 43: "DS", 46: "RRSIG", 48: "DNSKEY", 64: "SVCB", 65: "HTTPS", 255: "ANY", 257: "CAA",
}


def _extract_dns(message: bytes, fields: dict[str, Any]) -> None:
    """Question name and type. dpkt's `unpack_name` decodes the name (labels, compression pointers
    and their loop guard); building a whole `dpkt.dns.DNS` would also decode every resource record
    we do not use, at four times the cost."""
    if len(message) < 12:
        raise _ParseError("DNS: message shorter than its 12-byte header")
    if message[4] == 0 and message[5] == 0:
        raise _ParseError("DNS: no question")
    try:
        name, offset = dpkt.dns.unpack_name(message, 12)
    except dpkt.NeedData:
        raise _ParseError("DNS: message truncated") from None
    except (dpkt.UnpackError, struct.error, UnicodeDecodeError) as error:
        raise _ParseError(f"DNS: {error}") from None
    fields["app_protocol"] = APP_DNS
    fields["dns_qname"] = name
    if offset + 4 > len(message):
        raise _ParseError("DNS: question truncated")
    qtype = (message[offset] << 8) | message[offset + 1]
    fields["dns_qtype"] = DNS_TYPE_NAMES.get(qtype, f"TYPE{qtype}")


# --- HTTP/2 and gRPC -----------------------------------------------------------------------------

_H2_HEADERS, _H2_SETTINGS, _H2_CONTINUATION = 0x1, 0x4, 0x9
_H2_FLAG_END_HEADERS, _H2_FLAG_PADDED, _H2_FLAG_PRIORITY = 0x4, 0x8, 0x20
# The sample is at most a few kB; the bound stops a crafted run of empty frames.
_H2_MAX_FRAMES = 64


def _looks_like_h2_server_settings(payload: bytes) -> bool:
    """A server's first HTTP/2 bytes: a non-ACK SETTINGS frame on stream 0 (RFC 9113 section 3.4)."""
    return (
        len(payload) >= 9
        and payload[3] == _H2_SETTINGS
        and payload[4] == 0
        and payload[5:9] == b"\x00\x00\x00\x00"
        and int.from_bytes(payload[0:3], "big") % 6 == 0
    )


def _extract_h2(frames: bytes, fields: dict[str, Any], *, client: bool, offset: int = 0) -> None:
    fields["app_protocol"] = APP_HTTP2
    block, complete = _first_header_block(frames, offset)
    if block is None:
        if not complete:
            raise _ParseError("HTTP/2: no HEADERS frame in the sample")
        return
    headers, error = _decode_header_block(block)
    if not complete and error is None:
        error = "HTTP/2: header block truncated"
    get = headers.get
    content_type = get(b"content-type")
    if content_type is not None:
        fields["content_type"] = content_type
        if content_type.startswith("application/grpc"):
            fields["app_protocol"] = APP_GRPC
            fields["grpc_path"] = get(b":path")
    fields["http_method"] = get(b":method")
    fields["http_path"] = get(b":path")
    fields["http_host"] = get(b":authority")
    status = get(b":status")
    if status is not None and status.isdigit() and len(status) == 3:
        fields["http_status"] = int(status)
    content_length = get(b"content-length")
    if content_length is not None:
        length = _parse_content_length(content_length.encode("latin-1"))
        if length is None:
            error = error or "HTTP/2: invalid content-length"
        else:
            fields["content_length"] = length
            if length > 0:
                fields["announced_bytes"] = length
                fields["announced_by"] = "HTTP/2 request content-length" if client else "HTTP/2 response content-length"
    if error is not None:
        raise _ParseError(error)


def _first_header_block(frames: bytes, offset: int = 0) -> tuple[bytes | None, bool]:
    """The first HEADERS frame's block (frames start at `offset`) with its CONTINUATIONs:
    (block or None, whether it was complete)."""
    size = len(frames)
    fragments: list[bytes] = []
    for _ in range(_H2_MAX_FRAMES):
        if offset + 9 > size:
            break
        length = (frames[offset] << 16) | (frames[offset + 1] << 8) | frames[offset + 2]
        frame_type, flags = frames[offset + 3], frames[offset + 4]
        start = offset + 9
        offset = start + length
        truncated = offset > size
        if frame_type == _H2_HEADERS and not fragments:
            payload = frames[start:offset]
            begin, padding = 0, 0
            if flags & _H2_FLAG_PADDED:
                if not payload:
                    return None, False
                begin, padding = 1, payload[0]
            if flags & _H2_FLAG_PRIORITY:
                begin += 5
            # When the frame is cut short the padding is not in the sample: nothing to remove.
            fragments.append(payload[begin:] if truncated else payload[begin : max(begin, length - padding)])
        elif frame_type == _H2_CONTINUATION and fragments:
            fragments.append(frames[start:offset])
        elif fragments:
            return b"".join(fragments), False  # a CONTINUATION was required next (RFC 9113 6.10)
        else:
            if truncated:
                return None, False
            continue  # SETTINGS, WINDOW_UPDATE, PRIORITY...: stepped over without copying
        if truncated:
            return b"".join(fragments), False
        if flags & _H2_FLAG_END_HEADERS:
            return fragments[0] if len(fragments) == 1 else b"".join(fragments), True
    return (b"".join(fragments), False) if fragments else (None, False)


_HPACK_STATIC_TABLE: tuple[tuple[bytes, bytes], ...] = HeaderTable.STATIC_TABLE
# Static entries with their values as text, so the walker hands out ready strings.
_HPACK_STATIC_TEXT = tuple((name, value.decode("latin-1")) for name, value in _HPACK_STATIC_TABLE)
_WANTED_HEADERS = frozenset({b":method", b":path", b":authority", b":status", b"content-type", b"content-length"})
_HUFFMAN_ENCODER = HuffmanEncoder(REQUEST_CODES, REQUEST_CODES_LENGTH)
# Huffman coding is canonical (RFC 7541 5.2: padding must be the EOS prefix), so a literal header
# name is one we want exactly when its encoded bytes equal the encoding of a wanted name.
_WANTED_BY_HUFFMAN = {bytes(_HUFFMAN_ENCODER.encode(name)): name for name in _WANTED_HEADERS}
# gRPC never uses content-length (messages carry their own length prefix): once a gRPC request or
# response has named itself, the rest of the block (te, grpc-timeout, user-agent...) is not read.
_GRPC_REQUEST_COMPLETE = frozenset({b":method", b":path", b":authority", b"content-type"})
_GRPC_RESPONSE_COMPLETE = frozenset({b":status", b"content-type"})


class _HeaderBlockTruncated(Exception):
    pass


class _NeedsDynamicTable(Exception):
    pass


@functools.lru_cache(maxsize=4096)
def _huffman_decode_text(encoded: bytes) -> str:
    # Cached because the values we decode (gRPC method paths, authorities, content types) repeat
    # across connections, and each decode is a Python loop over nibbles.
    return bytes(decode_huffman(encoded)).decode("latin-1")


def _grpc_identified(found: dict[bytes, str]) -> bool:
    content_type = found.get(b"content-type")
    return (
        content_type is not None
        and content_type.startswith("application/grpc")
        and (found.keys() >= _GRPC_REQUEST_COMPLETE or found.keys() >= _GRPC_RESPONSE_COMPLETE)
    )


def _hpack_integer(block: bytes, position: int, prefix_bits: int) -> tuple[int, int]:
    """RFC 7541 5.1 integer at `position`: (value, next position)."""
    mask = (1 << prefix_bits) - 1
    value = block[position] & mask
    position += 1
    if value < mask:
        return value, position
    shift = 0
    while True:
        if position >= len(block):
            raise _HeaderBlockTruncated
        byte = block[position]
        position += 1
        value += (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, position
        if shift > 28:  # no header field or table index we accept is that large
            raise hpack.HPACKDecodingError("HPACK integer too large")


def _hpack_string_end(block: bytes, position: int) -> tuple[bool, int, int]:
    """RFC 7541 5.2 string literal at `position`: (Huffman-coded, start, end) without copying it."""
    if position >= len(block):
        raise _HeaderBlockTruncated
    first = block[position]
    length = first & 0x7F
    if length == 0x7F:
        length, start = _hpack_integer(block, position, 7)
    else:
        start = position + 1
    end = start + length
    if end > len(block):
        raise _HeaderBlockTruncated
    return bool(first & 0x80), start, end


def _decode_wanted_headers(block: bytes) -> tuple[dict[bytes, str], bool]:
    """The wanted headers (first occurrence each, values as text) of a block decoded against an empty
    dynamic table, and whether the block was cut short (then the headers before the cut are returned)."""
    found: dict[bytes, str] = {}
    static_size = len(_HPACK_STATIC_TABLE)
    position = 0
    try:
        while position < len(block):
            first = block[position]
            if first & 0x80:  # indexed header field
                index = first & 0x7F
                if index == 0x7F:
                    index, position = _hpack_integer(block, position, 7)
                else:
                    position += 1
                if index == 0:
                    raise hpack.HPACKDecodingError("HPACK index 0")
                if index > static_size:
                    raise _NeedsDynamicTable
                name, text = _HPACK_STATIC_TEXT[index - 1]
                if name in _WANTED_HEADERS and name not in found:
                    found[name] = text
                    if _grpc_identified(found):
                        break
                continue
            if first & 0xE0 == 0x20:  # dynamic table size update: only matters for dynamic references
                _, position = _hpack_integer(block, position, 5)
                continue
            # Literal with incremental indexing (01), without indexing (0000) or never indexed (0001).
            prefix_mask = 0x3F if first & 0x40 else 0x0F
            index = first & prefix_mask
            if index == prefix_mask:
                index, position = _hpack_integer(block, position, 6 if first & 0x40 else 4)
            else:
                position += 1
            wanted_name: bytes | None
            if index:
                if index > static_size:
                    raise _NeedsDynamicTable
                name = _HPACK_STATIC_TABLE[index - 1][0]
                wanted_name = name if name in _WANTED_HEADERS else None
            else:
                huffman, start, position = _hpack_string_end(block, position)
                raw_name = block[start:position]
                if huffman:
                    wanted_name = _WANTED_BY_HUFFMAN.get(raw_name)
                else:
                    wanted_name = raw_name if raw_name in _WANTED_HEADERS else None
            huffman, start, position = _hpack_string_end(block, position)
            if wanted_name is not None and wanted_name not in found:
                raw_value = block[start:position]
                found[wanted_name] = _huffman_decode_text(raw_value) if huffman else raw_value.decode("latin-1")
                if _grpc_identified(found):
                    break
    except _HeaderBlockTruncated:
        return found, True
    return found, False


def _decode_header_block(block: bytes) -> tuple[dict[bytes, str], str | None]:
    """(wanted headers, error). A truncated block yields the headers before the cut."""
    try:
        found, truncated = _decode_wanted_headers(block)
        return found, "HTTP/2: header block truncated" if truncated else None
    except _NeedsDynamicTable:
        pass  # rare in a connection's first block: let the full decoder keep the dynamic table
    except hpack.HPACKError as error:
        return {}, f"HTTP/2: HPACK: {error}"
    try:
        decoded = hpack.Decoder().decode(block, raw=True)
    except hpack.HPACKError as error:
        return {}, f"HTTP/2: HPACK: {error}"
    found = {}
    for name, value in decoded:
        if name in _WANTED_HEADERS and name not in found:
            found[bytes(name)] = bytes(value).decode("latin-1")
    return found, None


__all__ = ["APP_DNS", "APP_GRPC", "APP_HTTP1", "APP_HTTP2", "APP_TLS", "Metadata", "extract", "extract_packet",
           "extract_payload"]
