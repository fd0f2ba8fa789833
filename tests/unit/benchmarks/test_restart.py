"""bench restart's reading of ping's summary."""

from __future__ import annotations

import pytest

from topomirror.benchmarks.restart import lost_pings


def test_lost_pings_read_off_the_summary() -> None:
    report = ("PING 172.16.3.1 (172.16.3.1) 56(84) bytes of data.\n\n--- 172.16.3.1 ping statistics ---\n"
              "742 packets transmitted, 725 received, 2.29112% packet loss, time 7998ms\n")
    assert lost_pings(report) == (742, 17)
    with pytest.raises(RuntimeError, match="no summary"):
        lost_pings("ping: connect: Network is unreachable\n")
