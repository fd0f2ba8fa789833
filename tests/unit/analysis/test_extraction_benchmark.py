"""The extraction benchmark runs and reports its fields (a smoke test: no timing is asserted)."""

from __future__ import annotations

from topomirror.benchmarks import extraction


def test_benchmark_corpus_is_recognised() -> None:
    corpus = extraction.build_corpus(seed=1, distinct_per_kind=4)
    assert set(corpus) == set(extraction.KINDS)
    for kind in ("http_request", "http_response", "tls_client_hello", "dns", "grpc"):
        assert extraction._extract_all(corpus[kind]) == 4, kind
    assert extraction._extract_all(corpus["garbage_packet"]) == 0


def test_benchmark_reports_rates() -> None:
    results = extraction.run(n=2_000, rounds=1)
    for rate in ("first_packets_per_s", "node_new_flows_per_s", "flow_table_established_packets_per_s"):
        value = results[rate]
        assert isinstance(value, int) and value > 0, rate
    per_kind = results["per_kind"]
    assert isinstance(per_kind, dict) and set(per_kind) == set(extraction.KINDS)
