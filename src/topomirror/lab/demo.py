"""`topomirror lab demo`: deploy an example lab, push real traffic across it, report, destroy.

This is the lab-only demo (issue: foundation). It shows the ground everything else stands on:
a shaped, lossy path and a clean one, measured with iperf3 and UDP probes.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from topomirror.lab.plan import compile_lab
from topomirror.lab.realize import deploy, destroy, set_link
from topomirror.lab.spec import LabSpec, load_lab
from topomirror.lab.traffic import iperf3_tcp, udp_probe

EXAMPLES = Path(__file__).resolve().parents[3] / "examples" / "labs"


def run_lab_demo(lab_file: Path | None = None, *, seconds: float = 3.0,
                 progress: Callable[[str], None] = lambda _: None) -> dict[str, object]:
    file = lab_file or EXAMPLES / "two-path.yaml"
    spec: LabSpec = load_lab(file)
    spec = spec.model_copy(update={"name": "demo-" + spec.name[:15]})
    plan = compile_lab(spec)
    if "direct" not in {plan.links[i].name for i in range(len(plan.links))}:
        raise ValueError(f"{file}: the lab demo needs a link named 'direct' (see two-path.yaml)")
    rows = []
    progress(f"deploying {spec.name}")
    deploy(spec, str(file), force=True)
    try:
        h2_direct = str(plan.nodes["h2"].ifaces["eth1"].address.ip)
        for label, bw, loss in (("unshaped", None, 0.0), ("bw 50mbit", "50mbit", 0.0),
                                ("bw 50mbit, loss 5%", "50mbit", 5.0)):
            progress(f"direct link: {label}")
            if bw is None:
                set_link(spec, str(file), "direct", loss=loss, clear_bw=True)
            else:
                set_link(spec, str(file), "direct", bw=bw, loss=loss)
            tcp = iperf3_tcp(plan, "h1", "h2", seconds=seconds, dst_address=h2_direct)
            probe = udp_probe(plan, "h1", "h2", count=2000, rate_pps=4000, dst_address=h2_direct)
            rows.append({"setting": label, "tcp_mbps": round(tcp.bits_per_second / 1e6, 1),
                         "tcp_retransmits": tcp.retransmits,
                         "udp_probe_loss_pct": round(probe.loss * 100, 2)})
    finally:
        progress("destroying the lab")
        destroy(spec)
    return {"lab": spec.name, "file": str(file), "path": "h1 -> h2 over link 'direct'",
            "rows": rows}
