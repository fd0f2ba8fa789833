"""The demo's self-contained HTML report: a table, an RPC latency CDF per policy, and a time line
of the RPC server's paths (relative one-way delay) with congestion events and mirror sessions."""

from __future__ import annotations

import html
import io
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

COLOURS = {"uncongested": "#9ca3af", "uncongested_load": "#4b5563", "off": "#dc2626", "always": "#2563eb",
           "reactive": "#d97706", "predictive": "#059669"}
REFERENCES = ("uncongested", "uncongested_load")  # the runs that are not a policy (the second: default run)
COLUMNS = (("rpc_p50_ms", "RPC p50 (ms)"), ("rpc_p99_ms", "RPC p99 (ms)"), ("rpc_p999_ms", "RPC p99.9 (ms)"),
           ("bulk_goodput_mbps", "bulk goodput (Mbit/s)"), ("extra_bytes_pct", "extra bytes (%)"),
           ("sessions", "mirror sessions"), ("lead_time_ms", "median lead time (ms)"),
           ("cpu_steal_pct", "CPU steal (%)"), ("rpc_p99_quiet_ms", "RPC p99 at quiet moments (ms)"),
           ("quiet_requests_pct", "requests at quiet moments (%)"))


def _svg(figure: Any) -> str:
    buffer = io.StringIO()
    figure.savefig(buffer, format="svg", bbox_inches="tight")
    plt.close(figure)
    text = buffer.getvalue()
    return text[text.index("<svg"):]


def cdf_plot(runs: dict[str, Any]) -> str:
    figure, axis = plt.subplots(figsize=(8, 4.2))
    for name, run in runs.items():
        latencies = sorted(lat for _, lat in run.rpc.get("timeline", []))
        if not latencies:
            continue
        ys = [(i + 1) / len(latencies) for i in range(len(latencies))]
        axis.plot(latencies, ys, label=name, color=COLOURS.get(name, "black"), linewidth=1.8)
    axis.set_xscale("log")
    axis.set_xlabel("RPC completion time (ms, log scale)")
    axis.set_ylabel("fraction of requests")
    axis.set_ylim(0.5, 1.001)
    axis.grid(True, which="both", alpha=0.3)
    axis.legend(loc="lower right")
    axis.set_title("RPC latency CDF (upper half), h1 -> h3 across the shared core link")
    return _svg(figure)


def timeline_plot(run: Any, schedule: dict[str, Any]) -> str:
    figure, axis = plt.subplots(figsize=(9, 3.6))
    feedback = (run.paths or {}).get("feedback", {})
    for path_id, reports in sorted(feedback.items(), key=lambda kv: int(kv[0])):
        xs = [r["at"] - run.started_monotonic for r in reports]
        ys = [r["owd_avg_us"] / 1000 for r in reports]
        points = [(x, y) for x, y in zip(xs, ys, strict=True) if -2 <= x <= schedule["seconds"] + 3]
        if not points:
            continue
        label = "standard path (via core)" if path_id == "0" else f"mirror path {path_id} (via relay)"
        axis.plot([p[0] for p in points], [p[1] for p in points], label=label,
                  color="#dc2626" if path_id == "0" else "#059669", linewidth=1.4)
    for transfer in run.bulk:
        axis.axvspan(transfer["start_s"], transfer["start_s"] + transfer["seconds"], color="#fde68a", alpha=0.5,
                     label="bulk transfer (announced)" if transfer is run.bulk[0] else None)
    if schedule.get("failure_at") is not None:
        axis.axvline(schedule["failure_at"], color="black", linestyle="--", linewidth=1, label="core link failure")
    first = True
    for entry in run.sessions:
        if entry["kind"] == "session_state" and entry["reason"].endswith("-> active"):
            x = entry["at"] - run.started_wall
            if -2 <= x <= schedule["seconds"] + 3:
                axis.axvline(x, color="#059669", alpha=0.35, linewidth=0.8,
                             label="mirror session active" if first else None)
                first = False
    axis.set_xlabel("time (s)")
    axis.set_ylabel("relative one-way delay (ms)")
    axis.set_title(f"policy {run.policy}: h3 -> h1 paths as h1's feedback reports them")
    axis.grid(True, alpha=0.3)
    axis.legend(loc="upper right", fontsize=8)
    steal = getattr(run, "steal", None) or []
    if steal:
        # The hypervisor's share of the machine, on its own scale: where it rises, slow requests
        # measured the machine rather than the paths.
        machine = axis.twinx()
        machine.bar([a for a, _, _ in steal], [pct for _, _, pct in steal], width=[b - a for a, b, _ in steal],
                    align="edge", color="#6b7280", alpha=0.25)
        machine.set_ylim(0, 100)
        machine.set_ylabel("CPU steal (%, grey bars)")
        machine.set_zorder(axis.get_zorder() - 1)  # behind the paths and the legend
        axis.patch.set_visible(False)
    return _svg(figure)


def table_rows(result: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(name, summary) for the references the run has, then each policy."""
    return [*((name, result[name]) for name in REFERENCES if name in result), *result["policies"].items()]


def table_html(result: dict[str, Any]) -> str:
    head = "".join(f"<th>{html.escape(title)}</th>" for _, title in COLUMNS)
    rows = []
    for name, summary in table_rows(result):
        cells = "".join(f"<td>{'-' if summary.get(key) is None else summary[key]}</td>" for key, _ in COLUMNS)
        rows.append(f"<tr><th>{html.escape(name)}</th>{cells}</tr>")
    return f"<table><tr><th>policy</th>{head}</tr>{''.join(rows)}</table>"


def write_report(result: dict[str, Any], runs: dict[str, Any], path: Path) -> Path:
    timelines = "".join(f"<figure>{timeline_plot(run, result['schedule'])}</figure>"
                        for name, run in runs.items() if name not in REFERENCES)
    verdict = "".join(f"<li><code>{html.escape(k)}</code>: {html.escape(str(v))}</li>"
                      for k, v in result.get("verdict", {}).items())
    failure_at = result["schedule"]["failure_at"]
    failure = f"and a core link failure at {failure_at} s" if failure_at else ""
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>topomirror demo: {html.escape(result['date'])}</title>
<style>
body {{ font-family: Helvetica, Arial, sans-serif; margin: 2em auto; max-width: 1000px; color: #111; }}
table {{ border-collapse: collapse; margin: 1em 0; }}
th, td {{ border: 1px solid #d1d5db; padding: 4px 10px; text-align: right; }}
th:first-child {{ text-align: left; }}
figure {{ margin: 1.5em 0; }}
svg {{ max-width: 100%; height: auto; }}
</style></head><body>
<h1>topomirror: adaptive mirroring against the alternatives</h1>
<p>Lab <code>{html.escape(result['lab'])}</code>, run {html.escape(result['date'])}
({'quick' if result['quick'] else 'default'} schedule, {result['duration_s']} s). Each policy ran the same
workload on a freshly deployed lab: RPCs h1 -&gt; h3 at {result['schedule']['rpc_rate']:.0f}/s, WebSearch-sized
background flows, announced bulk transfers at {result['schedule']['bulk_at']} s
{failure}.
<b>uncongested</b>: the RPCs alone. <b>uncongested_load</b> (default run): the whole workload under
<b>off</b> with the core link widened so that nothing queues, and no failure: what the load alone
costs the RPCs on this machine's CPUs.
<b>off</b>: plain overlay. <b>always</b>: every packet on two paths (engarde). <b>reactive</b>: mirror after
feedback shows the path degraded (SD-WAN SLA duplication). <b>predictive</b>: topomirror.</p>
{table_html(result)}
<ul>{verdict}</ul>
<figure id="cdf">{cdf_plot(runs)}</figure>
<h2>Paths over time</h2>
{timelines}
</body></html>
"""
    path.write_text(page)
    return path
