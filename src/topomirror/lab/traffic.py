"""Real traffic across a deployed lab: iperf3 TCP/UDP and our own UDP loss probes.

Every process is started by us inside a lab namespace and ended by its PID.
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

from topomirror.lab.plan import LabPlan


class TrafficError(RuntimeError):
    pass


@contextlib.contextmanager
def in_node(plan: LabPlan, node: str, argv: list[str], **popen: object) -> Iterator[subprocess.Popen]:
    """Run `argv` inside `node` for the duration of the block; end it by PID afterwards."""
    proc = subprocess.Popen(["ip", "netns", "exec", plan.namespace(node), *argv],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            **popen)  # type: ignore[call-overload]
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def run_in_node(plan: LabPlan, node: str, argv: list[str], timeout: float = 60
                ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", plan.namespace(node), *argv],
                          capture_output=True, text=True, timeout=timeout)


def wait_listening(plan: LabPlan, node: str, port: int, proto: str = "tcp",
                   timeout: float = 5.0) -> None:
    flag = "-ltn" if proto == "tcp" else "-lun"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        res = run_in_node(plan, node, ["ss", "-H", flag, f"sport = :{port}"], timeout=5)
        if res.stdout.strip():
            return
        time.sleep(0.05)
    raise TrafficError(f"nothing listens on {node}:{port}/{proto} after {timeout}s")


@dataclass(frozen=True)
class IperfResult:
    bits_per_second: float
    retransmits: int
    raw: dict


def iperf3_tcp(plan: LabPlan, src: str, dst: str, *, seconds: float = 3.0, port: int = 5201,
               dst_address: str | None = None, extra: list[str] | None = None) -> IperfResult:
    """TCP goodput from src to dst measured by iperf3 (receiver side)."""
    address = dst_address or str(plan.address_of(dst))
    with in_node(plan, dst, ["iperf3", "-s", "-1", "-p", str(port)]):
        wait_listening(plan, dst, port)
        res = run_in_node(plan, src, ["iperf3", "-c", address, "-p", str(port), "-t",
                                      str(seconds), "-J", *(extra or [])],
                          timeout=seconds + 30)
    try:
        data = json.loads(res.stdout)
    except json.JSONDecodeError:
        raise TrafficError(f"iperf3 failed: {res.stderr.strip() or res.stdout[:300]}") from None
    if "error" in data:
        raise TrafficError(f"iperf3 failed: {data['error']}")
    end = data["end"]
    received = end.get("sum_received") or end["sum"]  # TCP: sum_received; UDP (-u): sum
    return IperfResult(received["bits_per_second"], end.get("sum_sent", {}).get("retransmits", 0), data)


@dataclass(frozen=True)
class ProbeResult:
    sent: int
    received: int
    duplicates: int
    owd_p50_us: float | None = None
    owd_p99_us: float | None = None
    owd_p999_us: float | None = None
    # The same at the receiving socket (the kernel's arrival stamp): without the receiver's wake-up.
    owd_kernel_p50_us: float | None = None
    owd_kernel_p99_us: float | None = None
    # How long the sender's `sendto` took (on veth: the kernel carrying it to the receiving socket).
    sendto_p50_us: float | None = None

    @property
    def loss(self) -> float:
        return 1 - self.received / self.sent if self.sent else 0.0


def udp_probe(plan: LabPlan, src: str, dst: str, *, count: int = 2000, rate_pps: int = 2000,
              size: int = 64, port: int = 9400, dst_address: str | None = None,
              even: bool = False, recv_port: int | None = None) -> ProbeResult:
    """Send `count` numbered UDP datagrams src -> dst; count distinct arrivals.

    `even`: one datagram per wake-up of the sender at even gaps instead of bursts of up to
    0.5 ms worth. `recv_port`: the receiver listens there instead of on `port` (when something
    in between, such as `lab.forward`, carries the datagrams from one port to the other)."""
    address = dst_address or str(plan.address_of(dst))
    duration = count / rate_pps
    listen = recv_port or port
    receiver = [sys.executable, "-m", "topomirror.lab.probe", "recv", "--port", str(listen),
                "--idle", "1.0", "--max-seconds", str(duration + 10)]
    with in_node(plan, dst, receiver) as proc:
        wait_listening(plan, dst, listen, "udp")
        sent = run_in_node(plan, src, [sys.executable, "-m", "topomirror.lab.probe", "send",
                                       "--to", address, "--port", str(port), "--count",
                                       str(count), "--rate", str(rate_pps), "--size", str(size)]
                           + (["--even"] if even else []),
                           timeout=duration + 30)
        if sent.returncode != 0:
            raise TrafficError(f"probe sender failed: {sent.stderr.strip()}")
        stdout, stderr = proc.communicate(timeout=duration + 15)
    try:
        report = json.loads(stdout)
    except json.JSONDecodeError:
        raise TrafficError(f"probe receiver failed: {stderr.strip()}") from None
    try:
        sender = json.loads(sent.stdout.strip().splitlines()[-1])
    except (json.JSONDecodeError, IndexError):
        sender = {}
    return ProbeResult(count, report["unique"], report["duplicates"], report.get("owd_p50_us"),
                       report.get("owd_p99_us"), report.get("owd_p999_us"), report.get("owd_kernel_p50_us"),
                       report.get("owd_kernel_p99_us"), sender.get("sendto_p50_us"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
