"""`topomirror bench dataplane`: the tunnel against the bare veth path, side by side in one run.

On the two-path lab with node daemons on h1, h2 and relay r1:
- direct_tcp_gbps: iperf3 TCP h1 -> h2 on the underlay address (no tunnel);
- tunnel_tcp_gbps: iperf3 TCP through the overlay, a flow no filter mirrors (one path);
- dup_tcp_gbps: iperf3 TCP through the overlay on a mirrored port (two copies, via r1);
- dup_udp_pps_lossless: highest rate of 1200-byte UDP datagrams on a mirrored port that arrives
  with at most 0.1 % loss (iperf3 -u -w 4M, bisection); `..._default_buffers`: the same with
  iperf3's default socket buffers, where the receiving application's 212 kB buffer overflows
  first when the tunnel delivers a burst;
- added_latency_p50_us / p99_us: one-way delay of numbered probes at 10k packets/s (evenly
  paced) through the mirrored overlay minus the same over the direct underlay (every node shares
  one clock), read by the receiving application; the median over 5 alternating rounds of 1.5 s
  (2 with --quick) of each round's difference; `added_latency_socket_*`: the same from the
  kernel's arrival stamps at the receiving socket (the receiver's wake-up left out);
  `added_latency_single_path_p50_us`: the same on a port no rule mirrors;
  `floor_two_hops_p50_us`: what two bare forwarders (`lab.forward`, one per host, no tunnel)
  add: the cheapest two user-space hops this machine allows; `floor_duplicated_p50_us`: the same
  duplicated (a second copy through a bare forwarder on the relay r1, the first copy kept at h2;
  three processes, no tunnel, no encryption): the cheapest the duplicated headline could be;
  `added_latency_event_loop_p50_us`: the duplicated tunnel in a second copy of the lab, deployed
  beside the first for the latency rounds, whose nodes call the native packet loops from the event
  loop (`TOPOMIRROR_PACKET_THREAD=off`) where the first lab's run them on their own thread while
  they carry under 25,000 packets/s (`listen.packet_thread: auto`, the default);
  `ratios.packet_thread_vs_event_loop_p50` divides the headline by it; `udp_pairs`: iperf3 UDP at
  60k and 66k pkt/s through both labs, alternating (what auto costs at high rates);
  `_at_2kpps`: the same at 2k/s;
- veth_sendto_p50_us: how long the direct probe's `sendto` took (median over the 10k rounds): on
  veth the kernel carries the datagram through the receiver's stack to its socket, and wakes the
  receiver, inside the send, so this is what one hop's send costs on this machine (the duplicated
  tunnel makes three per packet, the direct path one);
- packet_thread_per_wakeup: per node (h1, h2, r1), over the duplicated probe at 10k pkt/s, the
  packet thread's wake-ups and, per wake-up, the microseconds it waited for the GIL and held it
  (its reads, seals, sends and TUN writes), from the nodes' /status; medians over the rounds;
- python_*: with `reference`, the lab deployed again with `TOPOMIRROR_DATAPLANE=python` (the
  pure-Python reference data plane) for the duplicated TCP goodput and the lossless UDP rate, so
  the native loop's gain is a ratio from one run.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from topomirror.api.client import fetch
from topomirror.lab.plan import compile_lab
from topomirror.lab.realize import deploy, destroy
from topomirror.lab.registry import LabRegistry
from topomirror.lab.spec import load_lab
from topomirror.lab.traffic import ProbeResult, TrafficError, in_node, iperf3_tcp, udp_probe, wait_listening
from topomirror.node.launch import api_socket

EXAMPLES = Path(__file__).resolve().parents[3] / "examples" / "labs"
H2_OVERLAY = "172.16.2.1"


def run(*, seconds: float = 5.0, quick: bool = False, reference: bool = True,
        progress: Callable[[str], None] = lambda _: None) -> dict[str, object]:
    spec = load_lab(EXAMPLES / "two-path-mirror.yaml")
    spec = spec.model_copy(update={"name": "bn-dataplane"})
    plan = compile_lab(spec)
    if quick:
        seconds = 2.0
    h2_direct = str(plan.nodes["h2"].ifaces["eth1"].address.ip)
    results: dict[str, object] = {}
    progress("deploying the two-path lab with node daemons")
    deploy(spec, "bench", force=True)
    try:
        time.sleep(0.5)  # let the mirror virtual connections be acknowledged
        progress("direct veth TCP")
        results["direct_tcp_gbps"] = iperf3_tcp(plan, "h1", "h2", seconds=seconds,
                                                dst_address=h2_direct).bits_per_second / 1e9
        progress("tunnel TCP, one path")
        results["tunnel_tcp_gbps"] = iperf3_tcp(plan, "h1", "h2", seconds=seconds, dst_address=H2_OVERLAY,
                                                port=5202).bits_per_second / 1e9
        progress("tunnel TCP, duplicated")
        results["dup_tcp_gbps"] = iperf3_tcp(plan, "h1", "h2", seconds=seconds, dst_address=H2_OVERLAY,
                                             port=5201).bits_per_second / 1e9
        results["dup_udp_pps_lossless"], results["udp_trials"] = _lossless_pps(
            plan, seconds=min(seconds, 3.0), steps=4 if quick else 7, progress=progress)
        # The same with iperf3's default socket buffers (212 kB at the receiver): the tunnel hands
        # over what arrived during a scheduling gap in one burst, which a small buffer drops.
        results["dup_udp_pps_lossless_default_buffers"], results["udp_trials_default_buffers"] = _lossless_pps(
            plan, seconds=min(seconds, 3.0), steps=4 if quick else 6, progress=progress, buffer=None)
        progress("deploying a second copy of the lab, its nodes' packet loops on the event loop")
        loop_spec = spec.model_copy(update={"name": "bn-dploop"})
        with _environment(TOPOMIRROR_PACKET_THREAD="off"):
            deploy(loop_spec, "bench", force=True)
        try:
            time.sleep(0.5)
            loop_plan = compile_lab(loop_spec)
            results.update(_latency(plan, h2_direct, rounds=2 if quick else 5, seconds=1.5, progress=progress,
                                    loop_plan=loop_plan))
            results["udp_pairs"] = _udp_pairs(plan, loop_plan, rounds=1 if quick else 2, progress=progress)
        finally:
            destroy(loop_spec)
    finally:
        progress("destroying the lab")
        destroy(spec)
    if reference:
        results.update(_python_reference(spec, plan, seconds=seconds, quick=quick, progress=progress))
    for key in ("direct_tcp_gbps", "tunnel_tcp_gbps", "dup_tcp_gbps"):
        results[key] = round(float(results[key]), 3)  # type: ignore[arg-type]
    direct_gbps = float(results["direct_tcp_gbps"])  # type: ignore[arg-type]
    results["ratios"] = {
        "tunnel_vs_direct": round(float(results["tunnel_tcp_gbps"]) / direct_gbps, 4),  # type: ignore[arg-type]
        "dup_vs_direct": round(float(results["dup_tcp_gbps"]) / direct_gbps, 4),  # type: ignore[arg-type]
    }
    if results.get("added_latency_event_loop_p50_us") and results.get("added_latency_p50_us"):
        results["ratios"]["packet_thread_vs_event_loop_p50"] = round(  # type: ignore[index]
            float(results["added_latency_p50_us"]) / float(results["added_latency_event_loop_p50_us"]), 2)  # type: ignore[arg-type]
    if reference and results.get("python_dup_udp_pps_lossless"):
        results["ratios"]["native_vs_python_pps"] = round(  # type: ignore[index]
            int(results["dup_udp_pps_lossless"]) / int(results["python_dup_udp_pps_lossless"]), 2)  # type: ignore[call-overload]
        results["ratios"]["native_vs_python_dup_tcp"] = round(  # type: ignore[index]
            float(results["dup_tcp_gbps"]) / float(results["python_dup_tcp_gbps"]), 2)  # type: ignore[arg-type]
    return results


PROBES = ("direct", "floor", "floor_dup", "single", "tunnel_dup", "loop_dup")


@contextlib.contextmanager
def _environment(**values: str) -> Iterator[None]:
    """Variables the node daemons started meanwhile inherit; restored after."""
    previous = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _latency(plan, h2_direct: str, *, rounds: int, seconds: float,  # type: ignore[no-untyped-def]
             progress: Callable[[str], None], loop_plan=None) -> dict[str, object]:
    """One-way delay at 10k and 2k packets/s: the direct path, the floor (two bare forwarders),
    the tunnel on one path and duplicated, in `rounds` alternating rounds (a figure is the median
    over the rounds of the tunnel's minus the direct path's, so a noisy minute hits both). The
    probes are evenly paced (one datagram per wake-up of the sender), so no datagram waits behind
    earlier ones of its own burst at every hop."""
    results: dict[str, object] = {}
    probes: dict[str, list[ProbeResult]] = {}
    per_wakeup: list[dict[str, dict[str, float]]] = []  # the packet threads over each duplicated probe at 10k
    # The floor: h1 127.0.0.1:9501 -> forwarder -> h2's underlay :9502 -> forwarder -> 127.0.0.1:9503.
    # Duplicated: h1 127.0.0.1:9511 -> forwarder -> (h2 :9512, r1 :9514 -> forwarder -> h2 :9512)
    # -> forwarder keeping the first copy -> 127.0.0.1:9513.
    r1_address = str(plan.nodes["r1"].ifaces["eth1"].address.ip)
    h2_from_r1 = str(plan.nodes["h2"].ifaces["eth2"].address.ip)
    module = [sys.executable, "-m", "topomirror.lab.forward"]
    forwarders = [
        ("h1", module + ["--listen", "127.0.0.1:9501", "--to", f"{h2_direct}:9502"], 9501),
        ("h2", module + ["--listen", f"{h2_direct}:9502", "--to", "127.0.0.1:9503"], 9502),
        ("h1", module + ["--listen", "127.0.0.1:9511", "--to", f"{h2_direct}:9512",
                         "--to", f"{r1_address}:9514"], 9511),
        ("r1", module + ["--listen", f"{r1_address}:9514", "--to", f"{h2_from_r1}:9512"], 9514),
        ("h2", module + ["--listen", "0.0.0.0:9512", "--to", "127.0.0.1:9513", "--first-copy"], 9512),
    ]
    targets = {"direct": (9401, h2_direct, None), "floor": (9501, "127.0.0.1", 9503),
               "floor_dup": (9511, "127.0.0.1", 9513),
               "single": (9402, H2_OVERLAY, None), "tunnel_dup": (9400, H2_OVERLAY, None),
               "loop_dup": (9400, H2_OVERLAY, None)}
    with contextlib.ExitStack() as running:
        for node, argv, port in forwarders:
            running.enter_context(in_node(plan, node, argv))
            wait_listening(plan, node, port, "udp")
        for rate, suffix in ((10_000, ""), (2_000, "_at_2kpps")):
            for round_ in range(rounds):
                progress(f"latency at {rate // 1000}k packets/s, round {round_ + 1}/{rounds}")
                for name in PROBES:
                    if name == "loop_dup" and loop_plan is None:
                        continue
                    port, address, recv_port = targets[name]
                    threads = _packet_threads(plan) if name == "tunnel_dup" and not suffix else None
                    probe = udp_probe(loop_plan if name == "loop_dup" else plan, "h1", "h2",
                                      count=int(rate * seconds), rate_pps=rate, size=200,
                                      port=port, dst_address=address, recv_port=recv_port, even=True)
                    if probe.owd_p50_us is None:
                        raise TrafficError(f"the {name} latency probe received nothing: is the lab's data plane up?")
                    probes.setdefault(name + suffix, []).append(probe)
                    if threads is not None:
                        per_wakeup.append(_per_wakeup(threads, _packet_threads(plan)))
    for suffix in ("", "_at_2kpps"):
        direct, tunnel = probes["direct" + suffix], probes["tunnel_dup" + suffix]
        floor, single = probes["floor" + suffix], probes["single" + suffix]
        results["added_latency_p50_us" + suffix] = _added(tunnel, direct, "owd_p50_us")
        results["added_latency_p99_us" + suffix] = _added(tunnel, direct, "owd_p99_us")
        # At the receiving socket (kernel arrival stamps): the receiver's own wake-up left out.
        results["added_latency_socket_p50_us" + suffix] = _added(tunnel, direct, "owd_kernel_p50_us")
        results["added_latency_socket_p99_us" + suffix] = _added(tunnel, direct, "owd_kernel_p99_us")
        # What two bare user-space hops add on this machine, and the tunnel on one path only.
        results["floor_two_hops_p50_us" + suffix] = _added(floor, direct, "owd_p50_us")
        results["floor_two_hops_socket_p50_us" + suffix] = _added(floor, direct, "owd_kernel_p50_us")
        # The same duplicated: a copy through a bare forwarder on the relay, the first copy kept.
        results["floor_duplicated_p50_us" + suffix] = _added(probes["floor_dup" + suffix], direct, "owd_p50_us")
        results["added_latency_single_path_p50_us" + suffix] = _added(single, direct, "owd_p50_us")
        if "loop_dup" + suffix in probes:
            # the other lab's direct path is the same veth pair on the same machine
            results["added_latency_event_loop_p50_us" + suffix] = _added(probes["loop_dup" + suffix], direct,
                                                                          "owd_p50_us")
    # What one send costs the kernel here: the direct path's sendto, which carries the datagram
    # through the veth and the receiver's stack to its socket inside the system call.
    results["veth_sendto_p50_us"] = _median([p.sendto_p50_us for p in probes["direct"]])
    # Each node's packet thread over the duplicated probe at 10k pkt/s: per wake-up, the time it
    # waited for the GIL and held it (its reads, seals and sends), medians over the rounds.
    results["packet_thread_per_wakeup"] = {
        node: {key: _median([round_[node][key] for round_ in per_wakeup if node in round_])
               for key in ("wakeups", "gil_wait_us", "gil_held_us")}
        for node in sorted({node for round_ in per_wakeup for node in round_})}
    results["latency_rounds"] = rounds
    results["latency_detail"] = {
        name: [{"p50_us": probe.owd_p50_us, "p99_us": probe.owd_p99_us, "socket_p50_us": probe.owd_kernel_p50_us,
                "socket_p99_us": probe.owd_kernel_p99_us, "loss": round(probe.loss, 5)} for probe in runs]
        for name, runs in probes.items()
    }
    return results


def _median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return round(statistics.median(present), 1) if present else None


def _packet_threads(plan) -> dict[str, dict[str, int]]:  # type: ignore[no-untyped-def]
    """Each node's `packet_thread` counters from its /status (nodes without a thread left out)."""
    registry = LabRegistry.load(plan.spec.name)
    if registry is None:
        raise TrafficError(f"lab {plan.spec.name} is not deployed")
    out = {}
    for node in ("h1", "h2", "r1"):
        thread = fetch("/status", socket_path=api_socket(registry, node), timeout=10).get("packet_thread")
        if thread:
            out[node] = thread
    return out


def _per_wakeup(before: dict[str, dict[str, int]], after: dict[str, dict[str, int]]) -> dict[str, dict[str, float]]:
    out = {}
    for node, b in before.items():
        a = after.get(node)
        if not a:
            continue
        wakeups = a["rx_wakeups"] + a["tx_wakeups"] - b["rx_wakeups"] - b["tx_wakeups"]
        if wakeups > 0:
            out[node] = {"wakeups": float(wakeups),
                         "gil_wait_us": round((a["gil_wait_us"] - b["gil_wait_us"]) / wakeups, 1),
                         "gil_held_us": round((a["gil_held_us"] - b["gil_held_us"]) / wakeups, 1)}
    return out


def _added(path: list[ProbeResult], direct: list[ProbeResult], field: str) -> float | None:
    """The median over the rounds of what `path` took more than the direct path in the same round."""
    differences = [getattr(p, field) - getattr(d, field) for p, d in zip(path, direct, strict=True)
                   if getattr(p, field) is not None and getattr(d, field) is not None]
    return round(statistics.median(differences), 1) if differences else None


def _python_reference(spec, plan, *, seconds: float, quick: bool,  # type: ignore[no-untyped-def]
                      progress: Callable[[str], None]) -> dict[str, object]:
    """The same lab with the pure-Python data plane in every node (they inherit the variable)."""
    progress("deploying the lab again with the pure-Python data plane")
    with _environment(TOPOMIRROR_DATAPLANE="python"):
        deploy(spec, "bench", force=True)
    out: dict[str, object] = {}
    try:
        time.sleep(0.5)
        progress("python data plane: tunnel TCP, duplicated")
        out["python_dup_tcp_gbps"] = round(iperf3_tcp(plan, "h1", "h2", seconds=seconds, dst_address=H2_OVERLAY,
                                                      port=5201).bits_per_second / 1e9, 3)
        out["python_dup_udp_pps_lossless"], out["python_udp_trials"] = _lossless_pps(
            plan, seconds=min(seconds, 3.0), steps=3 if quick else 5, progress=progress, start=20_000,
            high=60_000, label="python data plane")
    finally:
        progress("destroying the lab")
        destroy(spec)
    return out


def _udp_pairs(plan, loop_plan, *, rounds: int,  # type: ignore[no-untyped-def]
               progress: Callable[[str], None]) -> list[dict[str, object]]:
    """iperf3 UDP (1200 B, 4 MB buffers, 3 s) at 60k and 66k pkt/s through the lab with the default
    packet thread (auto) and through the one whose nodes call the loops from the event loop, alternating."""
    trials: list[dict[str, object]] = []
    for round_ in range(rounds):
        order = (("auto", plan), ("event_loop", loop_plan))
        for mode, lab in order if round_ % 2 == 0 else order[::-1]:
            for rate in (60_000, 66_000):
                progress(f"UDP at {rate} packets/s, {mode.replace('_', ' ')}, round {round_ + 1}/{rounds}")
                trials.append({"mode": mode, **_udp_trial(lab, rate, seconds=3.0, buffer="4M")})
    return trials


def _udp_trial(plan, rate: int, *, seconds: float, buffer: str | None) -> dict[str, float]:  # type: ignore[no-untyped-def]
    """1200-byte UDP datagrams at `rate` per second through the duplicating tunnel (iperf3; `buffer`
    is its `-w`, the sender's and receiver's socket buffer, None for iperf3's default)."""
    window = ["-w", buffer] if buffer else []
    result = iperf3_tcp(plan, "h1", "h2", seconds=seconds, dst_address=H2_OVERLAY, port=9400,
                        extra=["-u", "-l", "1200", *window, "-b", str(rate * 1200 * 8)])
    end = result.raw["end"]["sum"]
    return {"offered_pps": rate, "received_pps": round(end["bits_per_second"] / 8 / 1200),
            "loss_pct": round(end.get("lost_percent", 100.0), 4)}


def _lossless_pps(plan, *, seconds: float, steps: int,  # type: ignore[no-untyped-def]
                  progress: Callable[[str], None], buffer: str | None = "4M", start: int = 40_000,
                  high: int = 160_000, label: str = "lossless UDP rate") -> tuple[int, list[dict[str, float]]]:
    """Bisect the highest 1200-byte UDP rate with <= 0.1 % loss through the duplicating tunnel.

    `buffer` is iperf3's `-w` (socket buffer of sender and receiver application); None keeps
    iperf3's default.
    """
    low = 0
    trials = []
    rate = start
    for step in range(steps):
        progress(f"{label} ({'socket buffers ' + buffer if buffer else 'default buffers'}): "
                 f"trial {step + 1}/{steps} at {rate} packets/s")
        trial = _udp_trial(plan, rate, seconds=seconds, buffer=buffer)
        trials.append(trial)
        if trial["loss_pct"] <= 0.1 and trial["received_pps"] >= 0.97 * rate:
            low = rate
        else:
            high = rate
        rate = (low + high) // 2
    return low, trials
