"""Draw a lab as a picture: Graphviz DOT text (pure), rendered by the `dot` program."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from topomirror.lab.plan import LabPlan
from topomirror.lab.spec import format_rate

_SHAPES = {"host": "box", "router": "ellipse", "relay": "diamond"}
_COLOURS = {"host": "#dbeafe", "router": "#e5e7eb", "relay": "#fde68a"}


def to_dot(plan: LabPlan) -> str:
    lines = [f'graph "{plan.spec.name}" {{', "  layout=neato; overlap=false; splines=true;",
             '  node [style=filled, fontname="Helvetica"]; edge [fontname="Helvetica", fontsize=9];']
    for node in plan.nodes.values():
        lines.append(
            f'  "{node.name}" [shape={_SHAPES[node.kind]}, fillcolor="{_COLOURS[node.kind]}", '
            f'label="{node.name}\\n{node.loopback}"];'
        )
    for link in plan.links:
        label = [link.name]
        if link.spec.bw:
            label.append(format_rate(link.spec.bw))
        if link.spec.loss:
            label.append(f"loss {link.spec.loss:g}%")
        label_text = "\\n".join(label)
        lines.append(
            f'  "{link.a.node}" -- "{link.b.node}" [label="{label_text}", '
            f'taillabel="{link.a.name}", headlabel="{link.b.name}"];'
        )
    lines.append("}")
    return "\n".join(lines) + "\n"


class GraphvizMissing(RuntimeError):
    pass


def render(plan: LabPlan, out: Path) -> Path:
    """Write `out` (.svg, .png or .dot)."""
    dot_text = to_dot(plan)
    fmt = out.suffix.lstrip(".").lower() or "svg"
    if fmt == "dot":
        out.write_text(dot_text)
        return out
    if fmt not in ("svg", "png"):
        raise ValueError(f"unsupported picture format {fmt!r}: use .svg, .png or .dot")
    if shutil.which("dot") is None:
        raise GraphvizMissing(
            "the 'dot' program (Debian package graphviz) is needed to draw; "
            "run 'make setup' or 'apt-get install graphviz', or write a .dot file instead"
        )
    subprocess.run(["dot", f"-T{fmt}", "-o", str(out)], input=dot_text, text=True, check=True)
    return out
