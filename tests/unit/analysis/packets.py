"""Test packets built with real protocol libraries: dpkt (IP/TCP/UDP/DNS), h11 (HTTP/1.1),
the ssl module's OpenSSL (TLS ClientHello) and h2 (HTTP/2, gRPC)."""

from __future__ import annotations

import contextlib
import socket
import ssl
from pathlib import Path

import dpkt
import h2.config
import h2.connection
import h11

CLIENT_V4, SERVER_V4 = "10.0.0.1", "10.0.0.2"
CLIENT_V6, SERVER_V6 = "fd00::1", "fd00::2"
TCP_PSH_ACK = dpkt.tcp.TH_PUSH | dpkt.tcp.TH_ACK


def ipv4_tcp(payload: bytes, *, sport: int = 40000, dport: int = 80, src: str = CLIENT_V4, dst: str = SERVER_V4,
             flags: int = TCP_PSH_ACK, seq: int = 1000, tos: int = 0) -> bytes:
    segment = dpkt.tcp.TCP(sport=sport, dport=dport, seq=seq, ack=1, flags=flags, win=65535, data=payload)
    ip = dpkt.ip.IP(src=socket.inet_aton(src), dst=socket.inet_aton(dst), p=dpkt.ip.IP_PROTO_TCP, tos=tos,
                    ttl=64, data=segment)
    return bytes(ip)


def ipv4_udp(payload: bytes, *, sport: int = 40000, dport: int = 53, src: str = CLIENT_V4, dst: str = SERVER_V4,
             tos: int = 0) -> bytes:
    datagram = dpkt.udp.UDP(sport=sport, dport=dport, data=payload)
    datagram.ulen = 8 + len(payload)
    ip = dpkt.ip.IP(src=socket.inet_aton(src), dst=socket.inet_aton(dst), p=dpkt.ip.IP_PROTO_UDP, tos=tos,
                    ttl=64, data=datagram)
    return bytes(ip)


def ipv6_udp(payload: bytes, *, sport: int = 40000, dport: int = 53, src: str = CLIENT_V6, dst: str = SERVER_V6,
             traffic_class: int = 0) -> bytes:
    datagram = dpkt.udp.UDP(sport=sport, dport=dport, data=payload)
    datagram.ulen = 8 + len(payload)
    ip6 = dpkt.ip6.IP6(src=socket.inet_pton(socket.AF_INET6, src), dst=socket.inet_pton(socket.AF_INET6, dst),
                       nxt=dpkt.ip.IP_PROTO_UDP, hlim=64, data=datagram)
    ip6.fc = traffic_class
    ip6.plen = len(bytes(datagram))
    return bytes(ip6)


def ipv6_tcp(payload: bytes, *, sport: int = 40000, dport: int = 80, src: str = CLIENT_V6, dst: str = SERVER_V6,
             traffic_class: int = 0, flags: int = TCP_PSH_ACK) -> bytes:
    segment = dpkt.tcp.TCP(sport=sport, dport=dport, seq=1000, ack=1, flags=flags, win=65535, data=payload)
    ip6 = dpkt.ip6.IP6(src=socket.inet_pton(socket.AF_INET6, src), dst=socket.inet_pton(socket.AF_INET6, dst),
                       nxt=dpkt.ip.IP_PROTO_TCP, hlim=64, data=segment)
    ip6.fc = traffic_class
    ip6.plen = len(bytes(segment))
    return bytes(ip6)


def http_request(method: str, target: str, headers: list[tuple[str, str]], body: bytes = b"") -> bytes:
    connection = h11.Connection(h11.CLIENT)
    data = connection.send(h11.Request(method=method, target=target, headers=headers)) or b""
    if body:
        data += connection.send(h11.Data(data=body)) or b""
    return data


def http_response(status: int, headers: list[tuple[str, str]], body_start: bytes = b"") -> bytes:
    connection = h11.Connection(h11.SERVER)
    connection.receive_data(b"GET /big.iso HTTP/1.1\r\nHost: files.example.com\r\n\r\n")
    connection.next_event()
    data = connection.send(h11.Response(status_code=status, headers=headers)) or b""
    return data + body_start


def tls_client_hello(server_name: str, alpn: list[str]) -> bytes:
    """A real ClientHello from OpenSSL, taken from a memory BIO (no socket)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.set_alpn_protocols(alpn)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    connection = context.wrap_bio(incoming, outgoing, server_hostname=server_name)
    with contextlib.suppress(ssl.SSLWantReadError):  # it waits for a ServerHello that never comes
        connection.do_handshake()
    return outgoing.read()


def dns_query(name: str, qtype: int, query_id: int = 0x1234) -> bytes:
    message = dpkt.dns.DNS(id=query_id, qd=[dpkt.dns.DNS.Q(name=name, type=qtype, cls=dpkt.dns.DNS_IN)])
    message.op = dpkt.dns.DNS_RD
    return bytes(message)


def h2_client_request(headers: list[tuple[str, str]], *, preface: bool = True) -> bytes:
    """Connection preface + SETTINGS + HEADERS exactly as the h2 library writes them."""
    connection = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    connection.initiate_connection()
    start = connection.data_to_send()
    connection.send_headers(1, headers)
    request = connection.data_to_send()
    return (start if preface else b"") + request


def grpc_request(path: str, authority: str = "localhost:50051") -> bytes:
    return h2_client_request([
        (":method", "POST"), (":scheme", "http"), (":path", path), (":authority", authority),
        ("content-type", "application/grpc"), ("te", "trailers"), ("grpc-timeout", "100m"),
        ("user-agent", "grpc-python/1.60.0"),
    ])


def write_pcap(path: Path, ip_packets: list[bytes]) -> None:
    """An Ethernet pcap around raw IP packets (tshark reads every build's Ethernet link type)."""
    with path.open("wb") as file:
        writer = dpkt.pcap.Writer(file)
        for number, packet in enumerate(ip_packets):
            ether_type = dpkt.ethernet.ETH_TYPE_IP6 if packet[0] >> 4 == 6 else dpkt.ethernet.ETH_TYPE_IP
            frame = dpkt.ethernet.Ethernet(src=b"\x02\x00\x00\x00\x00\x01", dst=b"\x02\x00\x00\x00\x00\x02",
                                           type=ether_type, data=packet)
            writer.writepkt(bytes(frame), ts=1_700_000_000 + number / 1000)
