"""`topomirror status` in words: who carries the packets and how well the sends batch; `flows`
says which loop sends each flow."""

from __future__ import annotations

from rich.console import Console

from topomirror.api.client import render, status_lines


def test_the_packet_thread_and_the_batching_are_told_from_a_status_answer() -> None:
    status = {"packet_thread": {"alive": True, "auto": True, "rx_wakeups": 300, "tx_wakeups": 100, "gil_wait_us": 1200,
                                "gil_wait_max_us": 90, "gil_held_us": 20000, "handoffs": 2,
                                "event_loop_has_packets": True},
              "io": {"datagrams_sent": 2950, "send_messages": 100}}
    thread, sends = status_lines(status)
    assert thread.startswith("packet thread running (auto): 400 wake-ups")
    assert "3.0 us waiting for the GIL and 50.0 us holding it" in thread
    assert "2 hand-offs" in thread and thread.endswith("the event loop has the packets now")
    assert sends == "sends: 2950 datagrams in 100 trips through the kernel (29.5 per trip)"


def test_without_a_thread_or_sends_it_says_so_and_divides_by_nothing() -> None:
    assert status_lines({"packet_thread": None, "io": {"datagrams_sent": 0, "send_messages": 0}}) == [
        "packets: carried by the event loop (no packet thread)"]
    idle = {"alive": False, "auto": False, "rx_wakeups": 0, "tx_wakeups": 0, "gil_wait_us": 0, "gil_held_us": 0}
    assert status_lines({"packet_thread": idle}) == ["packet thread stopped: 0 wake-ups, 0 hand-offs to the event loop"]


def test_the_flows_table_says_which_loop_sends_each_flow() -> None:
    row = {"peer": "h3", "mirror": "h3 via x1", "mirror_active": True, "packets": 9, "bytes": 900, "reason": "r"}
    out = Console(record=True, width=200)
    render("flows", [{**row, "flow": "tcp a", "native": True}, {**row, "flow": "tcp b", "native": False}], out)
    lines = out.export_text().splitlines()
    assert "sent by" in "".join(lines)
    assert any("tcp a" in line and " C " in line for line in lines)
    assert any("tcp b" in line and "Python" in line for line in lines)
