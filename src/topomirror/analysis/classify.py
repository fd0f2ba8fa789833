"""Flow classes from metadata, DSCP and operator rules, each with a human-readable reason.

Order of precedence, first match wins:
1. the operator's rules, in the order written (explicit intent beats inference);
2. the DSCP marking (EF, VOICE-ADMIT and AF4x -> latency-sensitive; CS1 and LE -> bulk), since an
   application or an edge router that marks its packets has said what it wants;
3. an announced transfer size (response or upload Content-Length) at or above the bulk threshold;
4. application protocols that are request/response by nature (DNS, gRPC by default);
5. otherwise `unknown`.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from topomirror.analysis.metadata import Metadata
from topomirror.dataplane.packet import FlowKey


class FlowClass(StrEnum):
    LATENCY_SENSITIVE = "latency_sensitive"
    BULK = "bulk"
    UNKNOWN = "unknown"


DSCP_EF = 46
DSCP_VOICE_ADMIT = 44
DSCP_AF41, DSCP_AF42, DSCP_AF43 = 34, 36, 38
DSCP_CS1 = 8
DSCP_LE = 1  # Lower Effort, RFC 8622
DSCP_CLASSES: dict[int, tuple[FlowClass, str]] = {
    DSCP_EF: (FlowClass.LATENCY_SENSITIVE, "EF"),
    DSCP_VOICE_ADMIT: (FlowClass.LATENCY_SENSITIVE, "VOICE-ADMIT"),
    DSCP_AF41: (FlowClass.LATENCY_SENSITIVE, "AF41"),
    DSCP_AF42: (FlowClass.LATENCY_SENSITIVE, "AF42"),
    DSCP_AF43: (FlowClass.LATENCY_SENSITIVE, "AF43"),
    DSCP_CS1: (FlowClass.BULK, "CS1"),
    DSCP_LE: (FlowClass.BULK, "LE"),
}

_CONDITIONS = (
    "app_protocol", "sni_suffix", "http_host_suffix", "http_method", "http_path_prefix",
    "grpc_path_prefix", "dns_name_suffix", "port", "dscp", "min_announced_bytes",
)


class ClassRule(BaseModel):
    """One operator rule: every condition given must hold; then the flow gets `flow_class`.

    Name suffixes match on label boundaries: "example.com" matches "example.com" and
    "api.example.com" but not "badexample.com"; a leading dot (".example.com") matches subdomains only.
    `port` matches either end of the flow, so one rule covers both directions of a service.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1)
    flow_class: FlowClass
    app_protocol: str | None = None
    sni_suffix: str | None = None
    http_host_suffix: str | None = None
    http_method: str | None = None
    http_path_prefix: str | None = None
    grpc_path_prefix: str | None = None
    dns_name_suffix: str | None = None
    port: int | None = Field(default=None, ge=1, le=65535)
    dscp: int | None = Field(default=None, ge=0, le=63)
    min_announced_bytes: int | None = Field(default=None, ge=0)

    @field_validator("sni_suffix", "http_host_suffix", "dns_name_suffix")
    @classmethod
    def _lower_name(cls, value: str | None) -> str | None:
        # DNS names compare case-insensitively, and DNS may give a trailing root dot.
        return None if value is None else value.lower().rstrip(".")

    @field_validator("http_method")
    @classmethod
    def _upper_method(cls, value: str | None) -> str | None:
        return None if value is None else value.upper()

    @model_validator(mode="after")
    def _has_a_condition(self) -> ClassRule:
        if all(getattr(self, condition) is None for condition in _CONDITIONS):
            raise ValueError(f"rule {self.name!r} has no condition; give at least one of {', '.join(_CONDITIONS)}")
        return self

    def match(self, metadata: Metadata, key: FlowKey | None) -> str | None:
        """A description of why the rule matches, or None when it does not."""
        because: list[str] = []
        if self.app_protocol is not None:
            if metadata.app_protocol != self.app_protocol:
                return None
            because.append(f"protocol is {self.app_protocol}")
        if self.sni_suffix is not None:
            if not _name_has_suffix(metadata.tls_sni, self.sni_suffix):
                return None
            because.append(f"TLS SNI {metadata.tls_sni} is under {self.sni_suffix}")
        if self.http_host_suffix is not None:
            host = None if metadata.http_host is None else metadata.http_host.rsplit(":", 1)[0]
            if not _name_has_suffix(host, self.http_host_suffix):
                return None
            because.append(f"HTTP host {metadata.http_host} is under {self.http_host_suffix}")
        if self.http_method is not None:
            if metadata.http_method != self.http_method:
                return None
            because.append(f"HTTP method is {self.http_method}")
        if self.http_path_prefix is not None:
            if metadata.http_path is None or not metadata.http_path.startswith(self.http_path_prefix):
                return None
            because.append(f"HTTP path {metadata.http_path} starts with {self.http_path_prefix}")
        if self.grpc_path_prefix is not None:
            if metadata.grpc_path is None or not metadata.grpc_path.startswith(self.grpc_path_prefix):
                return None
            because.append(f"gRPC method {metadata.grpc_path} starts with {self.grpc_path_prefix}")
        if self.dns_name_suffix is not None:
            if not _name_has_suffix(metadata.dns_qname, self.dns_name_suffix):
                return None
            because.append(f"DNS query {metadata.dns_qname} is under {self.dns_name_suffix}")
        if self.port is not None:
            if key is None or self.port not in (key.sport, key.dport):
                return None
            because.append(f"port {self.port}")
        if self.dscp is not None:
            if metadata.dscp != self.dscp:
                return None
            because.append(f"DSCP {self.dscp}")
        if self.min_announced_bytes is not None:
            announced = metadata.announced_bytes
            if announced is None or announced < self.min_announced_bytes:
                return None
            because.append(f"announces {format_bytes(announced)} >= {format_bytes(self.min_announced_bytes)}")
        return ", ".join(because)


class ClassifierConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    rules: list[ClassRule] = Field(default_factory=list)
    honour_dscp: bool = True
    # A flow announcing at least this many bytes is bulk; None disables the inference.
    bulk_announced_bytes: int | None = Field(default=1_000_000, ge=1)
    latency_sensitive_protocols: frozenset[str] = frozenset({"dns", "grpc"})

    @model_validator(mode="after")
    def _unique_rule_names(self) -> ClassifierConfig:
        names = [rule.name for rule in self.rules]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"rule names must be unique, repeated: {', '.join(duplicates)}")
        return self


@dataclass(frozen=True, slots=True)
class Classification:
    flow_class: FlowClass
    reason: str
    # The operator rule that decided, if one did.
    rule: str | None = None


class Classifier:
    def __init__(self, config: ClassifierConfig | None = None) -> None:
        self.config = config or ClassifierConfig()
        # Before any payload a flow's class depends only on which rule ports it uses and its DSCP:
        # `classify_key` answers from a small memo (thousands of new flows/s pay a dict lookup).
        self._rule_ports = frozenset(rule.port for rule in self.config.rules if rule.port is not None)
        self._by_key: dict[tuple[int | None, int | None, int], Classification] = {}

    def classify_key(self, key: FlowKey) -> Classification:
        """`classify(Metadata(dscp=key.dscp), key)`: the class of a flow whose payload is not seen yet."""
        ports = self._rule_ports
        memo = (key.sport if key.sport in ports else None, key.dport if key.dport in ports else None, key.dscp)
        found = self._by_key.get(memo)
        if found is None:
            found = self._by_key[memo] = self.classify(Metadata(dscp=key.dscp), key)
        return found

    def classify(self, metadata: Metadata, key: FlowKey | None = None) -> Classification:
        config = self.config
        for rule in config.rules:
            because = rule.match(metadata, key)
            if because is not None:
                return Classification(rule.flow_class, f"rule {rule.name!r} matched: {because}", rule.name)
        if config.honour_dscp and metadata.dscp in DSCP_CLASSES:
            flow_class, dscp_name = DSCP_CLASSES[metadata.dscp]
            return Classification(flow_class, f"DSCP {metadata.dscp} ({dscp_name}) marks the flow {flow_class.value}")
        announced = metadata.announced_bytes
        threshold = config.bulk_announced_bytes
        if announced is not None and threshold is not None and announced >= threshold:
            return Classification(
                FlowClass.BULK,
                f"{_announcement_subject(metadata)} announces {format_bytes(announced)} "
                f"({_announcement_header(metadata)}) >= {format_bytes(threshold)} bulk threshold",
            )
        if metadata.app_protocol in config.latency_sensitive_protocols:
            detail = metadata.grpc_path or metadata.dns_qname
            suffix = f" ({detail})" if detail else ""
            return Classification(
                FlowClass.LATENCY_SENSITIVE,
                f"{metadata.app_protocol} is request/response traffic{suffix}",
            )
        return Classification(FlowClass.UNKNOWN, _unknown_reason(metadata))


def classify(metadata: Metadata, key: FlowKey | None = None, config: ClassifierConfig | None = None) -> Classification:
    return Classifier(config).classify(metadata, key)


def format_bytes(count: int) -> str:
    """Decimal units, three significant digits: 25000000 -> "25 MB", 1500 -> "1.5 kB"."""
    if count < 1000:
        return f"{count} B"
    value = count / 1000
    for unit in ("kB", "MB", "GB"):
        # Compare after rounding, so 999960 reads "1 MB" rather than "1e+03 kB".
        if float(f"{value:.3g}") < 1000:
            return f"{value:.3g} {unit}"
        value /= 1000
    return f"{value:.3g} TB"


def _name_has_suffix(name: str | None, suffix: str) -> bool:
    if not name:
        return False
    name = name.lower().rstrip(".")
    if suffix.startswith("."):
        return name.endswith(suffix)
    return name == suffix or name.endswith("." + suffix)


def _announcement_subject(metadata: Metadata) -> str:
    # announced_by reads like "HTTP response Content-Length": the subject is all but the header name.
    return metadata.announced_by.rsplit(" ", 1)[0] if metadata.announced_by else "flow"


def _announcement_header(metadata: Metadata) -> str:
    return metadata.announced_by.rsplit(" ", 1)[-1] if metadata.announced_by else "announced size"


def _unknown_reason(metadata: Metadata) -> str:
    seen = metadata.app_protocol or "no recognised protocol"
    if metadata.announced_bytes is not None:
        seen += f", announces {format_bytes(metadata.announced_bytes)} (below the bulk threshold)"
    return f"no rule, DSCP marking or metadata decides ({seen})"


__all__ = [
    "ClassRule",
    "Classification",
    "Classifier",
    "ClassifierConfig",
    "FlowClass",
    "classify",
    "format_bytes",
]
