"""Lab file parsing and validation: each malformed file fails with a message naming the field."""

from __future__ import annotations

import textwrap

import pytest

from topomirror.lab.spec import LabFileError, parse_lab, parse_queue, parse_rate

GOOD = """
name: t1
nodes:
  h1: {kind: host}
  h2: {kind: host}
  r1: {kind: relay}
links:
  - endpoints: ["h1:eth1", "h2:eth1"]
    bw: 50mbit
    loss: 10
    queue: 100p
  - endpoints: ["h1:eth2", "r1:eth1"]
  - endpoints: ["r1:eth2", "h2:eth2"]
"""


def test_good_file_parses() -> None:
    spec = parse_lab(GOOD, "good.yaml")
    assert spec.name == "t1"
    assert spec.links[0].bw == 50_000_000
    assert spec.links[0].loss == 10
    assert spec.links[0].queue is not None and spec.links[0].queue.packets == 100
    assert [spec.link_name(i) for i in range(3)] == ["h1-h2", "h1-r1", "r1-h2"]


def test_cycles_are_allowed() -> None:
    parse_lab(GOOD + '  - endpoints: ["h1:eth3", "h2:eth3"]\n', "cycle.yaml")


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        # unknown node in a link
        (lambda t: t.replace('"r1:eth2", "h2:eth2"', '"r9:eth2", "h2:eth2"'),
         ["bad.yaml:13", "links[2]", "endpoints", "unknown node 'r9'"]),
        # duplicate interface
        (lambda t: t.replace('"h1:eth2", "r1:eth1"', '"h1:eth1", "r1:eth1"'),
         ["links[1]", "endpoints", "duplicate interface h1:eth1"]),
        # bad rate string
        (lambda t: t.replace("50mbit", "50 megabits"),
         ["bad.yaml:9", "links[0]", ".bw", "invalid rate '50 megabits'"]),
        # missing field
        (lambda t: t.replace("name: t1\n", ""), ["name", "missing required field 'name'"]),
        (lambda t: t.replace('  - endpoints: ["h1:eth2", "r1:eth1"]\n', "  - bw: 1mbit\n"),
         ["links[1]", "missing required field 'endpoints'"]),
        # self-link
        (lambda t: t.replace('"h1:eth2", "r1:eth1"', '"h1:eth2", "h1:eth5"'),
         ["links[1]", "self-link", "h1"]),
        # unknown field (typo)
        (lambda t: t.replace("loss: 10", "los: 10"), ["links[0]", "unknown field 'los'"]),
        # loss out of range
        (lambda t: t.replace("loss: 10", "loss: 150"), ["links[0]", "loss", "100"]),
        # bad queue
        (lambda t: t.replace("queue: 100p", "queue: lots"), ["links[0]", "queue", "invalid queue"]),
        # bad node kind
        (lambda t: t.replace("kind: relay", "kind: switch"), ["nodes.r1 (node).kind", "host"]),
        # endpoint syntax
        (lambda t: t.replace('"r1:eth2"', '"r1-eth2"'), ["links[2]", "node:iface"]),
        # interface name too long
        (lambda t: t.replace('"r1:eth2"', '"r1:averyveryverylongname"'),
         ["links[2]", "bad interface name"]),
        # bad lab name
        (lambda t: t.replace("name: t1", "name: Bad_Name"), ["name", "lab name 'Bad_Name'"]),
        # mtu out of range
        (lambda t: t.replace("queue: 100p", "mtu: 100"), ["links[0]", "mtu"]),
    ],
)
def test_malformed_files_name_the_field(edit, expected) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(LabFileError) as info:
        parse_lab(edit(GOOD), "bad.yaml")
    message = str(info.value)
    for fragment in expected:
        assert fragment in message, f"{fragment!r} not in {message!r}"


def test_not_yaml() -> None:
    with pytest.raises(LabFileError, match=r"bad.yaml:\d+: not valid YAML"):
        parse_lab("name: [unclosed\n", "bad.yaml")


def test_not_a_mapping() -> None:
    with pytest.raises(LabFileError, match="a lab file is a mapping"):
        parse_lab("- a\n- b\n", "bad.yaml")


def test_route_override_must_use_a_neighbour() -> None:
    text = GOOD.replace("  h1: {kind: host}",
                        textwrap.indent("h1:\n  kind: host\n  routes: [{dst: h2, via: h9}]", "  "))
    with pytest.raises(LabFileError, match=r"nodes.h1 \(node\).routes\[0\].via"):
        parse_lab(text, "bad.yaml")


@pytest.mark.parametrize(("route", "field", "says"), [
    ("{dst: '2001:db8::/32', via: h2}", "dst", "neither an IPv4 prefix nor a node name"),
    ("{dst: 10.1.0.0/16, via: '2001:db8::1'}", "via", "neither an IPv4 address nor a node name"),
])
def test_route_override_is_ipv4(route: str, field: str, says: str) -> None:
    """The lab is IPv4: an IPv6 route fails at parse time with its field named, not in the planner."""
    text = GOOD.replace("  h1: {kind: host}", textwrap.indent(f"h1:\n  kind: host\n  routes: [{route}]", "  "))
    with pytest.raises(LabFileError, match=rf"nodes.h1 \(node\).routes\[0\].{field}.*{says}"):
        parse_lab(text, "bad.yaml")


@pytest.mark.parametrize(("text", "bits"), [("50mbit", 50_000_000), ("1gbit", 10**9),
                                            ("128kbit", 128_000), ("1.5mbit", 1_500_000),
                                            (10_000, 10_000)])
def test_parse_rate(text: str, bits: int) -> None:
    assert parse_rate(text) == bits


@pytest.mark.parametrize("text", ["50mbps", "fast", "-1mbit", "", "0", True])
def test_parse_rate_rejects(text: object) -> None:
    with pytest.raises(ValueError):
        parse_rate(text)


def test_parse_queue() -> None:
    assert parse_queue("100").packets == 100
    assert parse_queue("100pkt").packets == 100
    assert parse_queue("64kb").bytes == 64_000
    assert parse_queue("1mib").bytes == 2**20
    assert parse_queue("10p").limit_bytes(1500) == 10 * 1514
