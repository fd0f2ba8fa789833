from __future__ import annotations

import pytest
import yaml
from pydantic import ValidationError

from tests.unit.analysis import packets
from topomirror.analysis.classify import (
    ClassifierConfig,
    ClassRule,
    FlowClass,
    classify,
    format_bytes,
)
from topomirror.analysis.flows import PROTO_TCP, FlowKey, sample_from_packet
from topomirror.analysis.metadata import Metadata, extract

KEY = FlowKey("10.0.0.1", "10.0.0.2", PROTO_TCP, 40000, 443)


@pytest.mark.parametrize(("dscp", "expected", "name"), [
    (46, FlowClass.LATENCY_SENSITIVE, "EF"),
    (34, FlowClass.LATENCY_SENSITIVE, "AF41"),
    (36, FlowClass.LATENCY_SENSITIVE, "AF42"),
    (38, FlowClass.LATENCY_SENSITIVE, "AF43"),
    (8, FlowClass.BULK, "CS1"),
])
def test_dscp_markings(dscp: int, expected: FlowClass, name: str) -> None:
    result = classify(Metadata(dscp=dscp))
    assert result.flow_class == expected
    assert result.reason == f"DSCP {dscp} ({name}) marks the flow {expected.value}"


def test_announced_response_size_makes_a_flow_bulk_end_to_end() -> None:
    response = packets.http_response(200, [("Content-Length", "25000000")])
    sample = sample_from_packet(packets.ipv4_tcp(response, sport=80, dport=40000))
    assert sample is not None
    result = classify(extract(sample))
    assert result.flow_class == FlowClass.BULK
    assert result.reason == "HTTP response announces 25 MB (Content-Length) >= 1 MB bulk threshold"


def test_small_announcement_stays_unknown_with_a_reason() -> None:
    metadata = Metadata(app_protocol="http/1.1", announced_bytes=1500, announced_by="HTTP response Content-Length")
    result = classify(metadata)
    assert result.flow_class == FlowClass.UNKNOWN
    assert "1.5 kB (below the bulk threshold)" in result.reason


def test_grpc_and_dns_are_latency_sensitive_by_default() -> None:
    grpc = classify(Metadata(app_protocol="grpc", grpc_path="/pkg.Svc/Get"))
    assert grpc.flow_class == FlowClass.LATENCY_SENSITIVE and "/pkg.Svc/Get" in grpc.reason
    assert classify(Metadata(app_protocol="dns", dns_qname="a.example")).flow_class == FlowClass.LATENCY_SENSITIVE


def test_nothing_known_is_unknown() -> None:
    result = classify(Metadata(dscp=0))
    assert result.flow_class == FlowClass.UNKNOWN and result.rule is None


def test_rules_come_before_dscp_and_inference() -> None:
    config = ClassifierConfig(rules=[
        ClassRule(name="backups", flow_class=FlowClass.BULK, http_path_prefix="/backup/"),
    ])
    metadata = Metadata(dscp=46, http_path="/backup/db.tar")
    result = classify(metadata, config=config)
    assert result.flow_class == FlowClass.BULK and result.rule == "backups"
    assert result.reason == "rule 'backups' matched: HTTP path /backup/db.tar starts with /backup/"


def test_all_conditions_of_a_rule_must_hold() -> None:
    rule = ClassRule(name="big-uploads", flow_class=FlowClass.BULK, http_method="post", min_announced_bytes=10_000_000)
    config = ClassifierConfig(rules=[rule], bulk_announced_bytes=None)
    small = Metadata(http_method="POST", announced_bytes=5_000_000)
    big = Metadata(http_method="POST", announced_bytes=50_000_000)
    assert classify(small, config=config).flow_class == FlowClass.UNKNOWN
    result = classify(big, config=config)
    assert result.flow_class == FlowClass.BULK
    assert result.reason == "rule 'big-uploads' matched: HTTP method is POST, announces 50 MB >= 10 MB"


@pytest.mark.parametrize(("sni", "matches"), [
    ("trading.example.com", True), ("example.com", True), ("EXAMPLE.COM.", True),
    ("badexample.com", False), (None, False),
])
def test_sni_suffix_matches_on_label_boundaries(sni: str | None, matches: bool) -> None:
    rule = ClassRule(name="trading", flow_class=FlowClass.LATENCY_SENSITIVE, sni_suffix="Example.com")
    assert (rule.match(Metadata(tls_sni=sni), KEY) is not None) == matches


def test_leading_dot_suffix_matches_subdomains_only() -> None:
    rule = ClassRule(name="sub", flow_class=FlowClass.BULK, dns_name_suffix=".cdn.example")
    assert rule.match(Metadata(dns_qname="a.cdn.example"), None) is not None
    assert rule.match(Metadata(dns_qname="cdn.example"), None) is None


def test_port_rule_matches_either_end_and_needs_a_key() -> None:
    rule = ClassRule(name="rpc", flow_class=FlowClass.LATENCY_SENSITIVE, port=443)
    assert rule.match(Metadata(), KEY) == "port 443"
    assert rule.match(Metadata(), KEY.reversed()) == "port 443"
    assert rule.match(Metadata(), None) is None


def test_grpc_and_host_rules() -> None:
    grpc_rule = ClassRule(name="orders", flow_class=FlowClass.LATENCY_SENSITIVE, grpc_path_prefix="/shop.Orders/")
    assert grpc_rule.match(Metadata(grpc_path="/shop.Orders/Place"), KEY) is not None
    assert grpc_rule.match(Metadata(grpc_path="/shop.Stock/Get"), KEY) is None
    host_rule = ClassRule(name="files", flow_class=FlowClass.BULK, http_host_suffix="files.example")
    assert host_rule.match(Metadata(http_host="eu.files.example:8080"), KEY) is not None


def test_dscp_rule_and_honour_dscp_off() -> None:
    config = ClassifierConfig(honour_dscp=False, rules=[ClassRule(name="af21", flow_class=FlowClass.BULK, dscp=18)])
    assert classify(Metadata(dscp=46), config=config).flow_class == FlowClass.UNKNOWN
    assert classify(Metadata(dscp=18), config=config).rule == "af21"


def test_rule_without_condition_is_rejected() -> None:
    with pytest.raises(ValidationError, match="has no condition"):
        ClassRule(name="empty", flow_class=FlowClass.BULK)


def test_bad_rule_fields_are_rejected() -> None:
    with pytest.raises(ValidationError):
        ClassRule(name="x", flow_class=FlowClass.BULK, port=70000)
    with pytest.raises(ValidationError):
        ClassRule.model_validate({"name": "x", "flow_class": "fast", "port": 1})
    with pytest.raises(ValidationError):
        ClassRule.model_validate({"name": "x", "flow_class": "bulk", "sni_sufix": "a.example"})


def test_duplicate_rule_names_are_rejected() -> None:
    rule = ClassRule(name="same", flow_class=FlowClass.BULK, port=1)
    with pytest.raises(ValidationError, match="repeated: same"):
        ClassifierConfig(rules=[rule, rule])


def test_rules_load_from_yaml() -> None:
    document = yaml.safe_load("""
rules:
  - {name: video, flow_class: latency_sensitive, sni_suffix: meet.example}
  - {name: mirrors, flow_class: bulk, http_host_suffix: mirror.example, min_announced_bytes: 1000000}
bulk_announced_bytes: 5000000
""")
    config = ClassifierConfig.model_validate(document)
    assert [rule.name for rule in config.rules] == ["video", "mirrors"]
    assert classify(Metadata(tls_sni="eu.meet.example"), config=config).flow_class == FlowClass.LATENCY_SENSITIVE


@pytest.mark.parametrize(("count", "text"), [
    (0, "0 B"), (999, "999 B"), (1000, "1 kB"), (1500, "1.5 kB"), (999_960, "1 MB"), (25_000_000, "25 MB"),
    (2_621_440, "2.62 MB"), (3 * 10**9, "3 GB"), (10**13, "10 TB"),
])
def test_format_bytes(count: int, text: str) -> None:
    assert format_bytes(count) == text
