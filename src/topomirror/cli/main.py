"""The `topomirror` command line. Thin: parse arguments, call a module, print the result."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
import yaml
from rich.console import Console
from rich.table import Table

from topomirror.lab.spec import LabFileError, LabSpec, load_lab

app = typer.Typer(
    help="topomirror: adaptive, predictive packet mirroring over ephemeral relay paths.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
lab_app = typer.Typer(help="Build, inspect, change and destroy namespace labs.",
                      no_args_is_help=True)
app.add_typer(lab_app, name="lab")
bench_app = typer.Typer(help="Benchmarks: print and save JSON.", no_args_is_help=True)
app.add_typer(bench_app, name="bench")
node_app = typer.Typer(help="The per-host node daemon.", no_args_is_help=True)
app.add_typer(node_app, name="node")
keys_app = typer.Typer(help="Pair keys for the wire protocol.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")

console = Console(stderr=True)
out = Console()

LabFile = Annotated[Path, typer.Argument(help="lab topology file (YAML)", show_default=False)]
JsonFlag = Annotated[bool, typer.Option("--json", help="print machine-readable JSON")]


def fail(message: str, code: int = 2) -> NoReturn:
    console.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(code)


def _load(file: Path) -> LabSpec:
    try:
        return load_lab(file)
    except LabFileError as exc:
        fail(str(exc))


def _need_root(what: str) -> None:
    if os.geteuid() != 0:
        fail(f"{what} needs root (network namespaces, tc, nftables): run it with sudo")


def _guard(func):  # type: ignore[no-untyped-def]
    """Turn the errors we expect into one clear line and a non-zero exit."""
    from topomirror.lab.realize import LabError
    from topomirror.node.config import ConfigError
    from topomirror.node.launch import LaunchError
    from topomirror.store.db import StoreCorrupt

    def wrapper(*args, **kwargs):  # type: ignore[no-untyped-def]
        try:
            return func(*args, **kwargs)
        except (LabError, LabFileError, ConfigError, LaunchError, StoreCorrupt, ValueError) as exc:
            fail(str(exc))

    wrapper.__name__ = func.__name__
    wrapper.__doc__ = func.__doc__
    wrapper.__wrapped__ = func  # type: ignore[attr-defined]
    return wrapper


@lab_app.command("check")
def lab_check(file: LabFile, json_out: JsonFlag = False) -> None:
    """Validate a lab file without touching the system."""
    from topomirror.lab.plan import compile_lab

    spec = _load(file)
    try:
        plan = compile_lab(spec)
    except LabFileError as exc:
        fail(f"{file}: {exc}")
    summary = {"file": str(file), "name": spec.name, "nodes": len(spec.nodes),
               "links": len(spec.links), "routes": sum(len(n.routes) for n in plan.nodes.values()),
               "ok": True}
    if json_out:
        out.print_json(json.dumps(summary))
    else:
        out.print(f"[green]ok[/] {file}: lab {spec.name!r}, {summary['nodes']} nodes, "
                  f"{summary['links']} links, {summary['routes']} routes")


@lab_app.command("deploy")
@_guard
def lab_deploy(
    file: LabFile,
    force: Annotated[bool, typer.Option("--force", help="destroy an existing copy first")] = False,
    json_out: JsonFlag = False,
) -> None:
    """Create the lab's namespaces, links, addresses, shaping, loss rules and routes."""
    from topomirror.lab.realize import deploy

    spec = _load(file)
    _need_root("lab deploy")
    start = time.perf_counter()
    with console.status(f"deploying lab {spec.name}") as status:
        registry = deploy(spec, str(file), force=force, progress=lambda m: status.update(f"{spec.name}: {m}"))
    nodes = [p.role.split(":", 1)[1] for p in registry.processes if p.role.startswith("node:")]
    elapsed = time.perf_counter() - start
    result = {"name": spec.name, "nodes": len(spec.nodes), "links": len(spec.links),
              "daemons": nodes, "seconds": round(elapsed, 3)}
    if json_out:
        out.print_json(json.dumps(result))
    else:
        extra = f", {len(nodes)} node daemons" if nodes else ""
        out.print(f"[green]deployed[/] lab {spec.name!r}: {len(spec.nodes)} nodes, "
                  f"{len(spec.links)} links{extra} in {elapsed:.2f}s")


@lab_app.command("destroy")
@_guard
def lab_destroy(file: LabFile, json_out: JsonFlag = False) -> None:
    """Remove exactly what deploy created (also after a crash or a half-finished deploy)."""
    from topomirror.lab.realize import destroy

    spec = _load(file)
    _need_root("lab destroy")
    start = time.perf_counter()
    removed = destroy(spec)
    elapsed = time.perf_counter() - start
    if json_out:
        out.print_json(json.dumps({"name": spec.name, **removed, "seconds": round(elapsed, 3)}))
    elif removed["namespaces"] == 0:
        out.print(f"lab {spec.name!r} was not deployed: nothing to remove")
    else:
        out.print(f"[green]destroyed[/] lab {spec.name!r}: {removed['namespaces']} namespaces, "
                  f"{removed['processes']} processes in {elapsed:.2f}s")


@lab_app.command("inspect")
@_guard
def lab_inspect(file: LabFile, json_out: JsonFlag = False) -> None:
    """Show nodes, interfaces, addresses, links with their shaping, and routes."""
    from topomirror.lab.realize import inspect

    spec = _load(file)
    info: dict[str, Any] = inspect(spec)
    if json_out:
        out.print_json(json.dumps(info))
        return
    out.print(f"lab [bold]{info['name']}[/]: {'deployed' if info['deployed'] else 'not deployed'}")
    nodes = Table("node", "kind", "namespace", "loopback", "interfaces", title="nodes")
    for name, node in info["nodes"].items():  # type: ignore[union-attr]
        ifaces = ", ".join(
            f"{i}={d['address']}" + (f" ({d['state']})" if str(d.get("state", "UP")).upper() != "UP" else "")
            for i, d in node["interfaces"].items()
        )
        nodes.add_row(name, node["kind"], node["namespace"] if node["present"] else "-",
                      node["loopback"], ifaces)
    out.print(nodes)
    links = Table("link", "endpoints", "subnet", "up", "egress shaping", title="links")
    for name, link in info["links"].items():  # type: ignore[union-attr]
        shaping = "\n".join(
            f"{d}: bw={s['bw'] or '-'} loss={s['loss_pct']:g}% queue={s['queue'] or '-'}"
            for d, s in link["egress"].items()
        )
        links.add_row(name, " -- ".join(link["endpoints"]), link["subnet"],
                      "yes" if link["up"] else "[red]no[/]", shaping)
    out.print(links)
    routes = Table("node", "destination", "via", "dev", "source", title="routes")
    for name, node in info["nodes"].items():  # type: ignore[union-attr]
        for route in node["routes"]:
            routes.add_row(name, route["dst"], route["via"], route["dev"], route["source"])
    out.print(routes)


@lab_app.command("exec", context_settings={"allow_extra_args": True,
                                           "ignore_unknown_options": True})
def lab_exec(
    file: LabFile,
    node: Annotated[str, typer.Argument(help="node to run in")],
    command: Annotated[list[str], typer.Argument(help="command and its arguments (after --)")],
) -> None:
    """Run a command inside a node; its exit code is passed through."""
    from topomirror.lab.plan import compile_lab

    spec = _load(file)
    _need_root("lab exec")
    try:
        namespace = compile_lab(spec).namespace(node)
    except LabFileError as exc:
        fail(str(exc))
    if not Path(f"/run/netns/{namespace}").exists():
        fail(f"node {node!r} of lab {spec.name!r} is not running: deploy the lab first")
    argv = ["ip", "netns", "exec", namespace, *command]
    sys.stdout.flush()
    try:
        os.execvp(argv[0], argv)
    except OSError as exc:
        fail(f"cannot run {' '.join(command)}: {exc.strerror}", 127)


@lab_app.command("set")
@_guard
def lab_set(
    file: LabFile,
    link: Annotated[str, typer.Argument(help="link name (see 'lab inspect')")],
    bw: Annotated[str | None, typer.Option(help="rate, e.g. 50mbit")] = None,
    no_bw: Annotated[bool, typer.Option("--no-bw", help="remove the rate limit")] = False,
    loss: Annotated[float | None, typer.Option(help="random loss, percent")] = None,
    queue: Annotated[str | None, typer.Option(help="queue limit: 100p or 64kb")] = None,
    direction: Annotated[
        str | None,
        typer.Option(help="only the egress of this end (node or node:iface); default both"),
    ] = None,
    json_out: JsonFlag = False,
) -> None:
    """Change a running link's bandwidth, loss or queue (takes effect at once)."""
    from dataclasses import asdict

    from topomirror.lab.realize import set_link

    spec = _load(file)
    _need_root("lab set")
    if bw is None and loss is None and queue is None and not no_bw:
        fail("nothing to change: give --bw, --no-bw, --loss or --queue")
    state = set_link(spec, str(file), link, bw=bw, loss=loss, queue=queue, direction=direction,
                     clear_bw=no_bw)
    if json_out:
        out.print_json(json.dumps({"link": link, **asdict(state)}))
    else:
        out.print(f"[green]set[/] {link}: bw={state.bw or '-'} loss={state.loss:g}% "
                  f"queue={state.queue or '-'}" + (f" ends={state.ends}" if state.ends else ""))


@lab_app.command("link")
@_guard
def lab_link(
    file: LabFile,
    link: Annotated[str, typer.Argument(help="link name")],
    state: Annotated[str, typer.Argument(help="up or down")],
) -> None:
    """Bring a running link up or down (both ends)."""
    from topomirror.lab.realize import set_link_state

    if state not in ("up", "down"):
        fail(f"state must be 'up' or 'down', not {state!r}")
    spec = _load(file)
    _need_root("lab link")
    set_link_state(spec, str(file), link, state == "up")
    out.print(f"link {link} is {state}")


@lab_app.command("node")
@_guard
def lab_node(
    file: LabFile,
    node: Annotated[str, typer.Argument(help="lab node running a topomirror daemon")],
    action: Annotated[str, typer.Argument(help="stop or restart")],
    cold: Annotated[bool, typer.Option("--cold", help="restart by stopping the daemon first, as after a crash "
                                       "(default: warm, the new daemon loads first and then takes over)")] = False,
) -> None:
    """Stop or restart one node daemon of a running lab (fault injection; the state folder is kept)."""
    from topomirror.lab.plan import compile_lab
    from topomirror.lab.realize import require_registry
    from topomirror.node.launch import restart_lab_node, stop_lab_node

    if action not in ("stop", "restart"):
        fail(f"action must be 'stop' or 'restart', not {action!r}")
    spec = _load(file)
    _need_root("lab node")
    registry = require_registry(spec, str(file))
    if action == "stop":
        count = stop_lab_node(registry, node)
        out.print(f"stopped {count} daemon(s) on {node}")
    else:
        restart_lab_node(compile_lab(spec), registry, node, warm=not cold)
        out.print(f"restarted the daemon on {node} ({'cold' if cold else 'warm'})")


@lab_app.command("graph")
@_guard
def lab_graph(
    file: LabFile,
    output: Annotated[Path | None, typer.Option("-o", "--output",
                                                help="picture to write (.svg, .png or .dot)")] = None,
) -> None:
    """Draw the topology (SVG or PNG via Graphviz)."""
    from topomirror.lab.graph import GraphvizMissing, render
    from topomirror.lab.plan import compile_lab

    spec = _load(file)
    target = output or Path(f"{spec.name}.svg")
    try:
        render(compile_lab(spec), target)
    except GraphvizMissing as exc:
        fail(str(exc))
    out.print(f"wrote {target}")


@lab_app.command("gen")
@_guard
def lab_gen(
    kind: Annotated[str, typer.Argument(help="fat-tree or ring")],
    k: Annotated[int, typer.Option("-k", help="fat-tree arity")] = 4,
    nodes: Annotated[int, typer.Option(help="ring: number of nodes")] = 32,
    bw: Annotated[str | None, typer.Option(help="fat-tree: rate on every link")] = None,
    output: Annotated[Path | None, typer.Option("-o", "--output")] = None,
) -> None:
    """Generate a larger lab file (fat-tree of arity k, or a ring of N nodes)."""
    from topomirror.lab.generate import fat_tree, ring

    if kind == "fat-tree":
        data = fat_tree(k, bw=bw)
    elif kind == "ring":
        data = ring(nodes)
    else:
        fail(f"unknown generator {kind!r}: use fat-tree or ring")
    text = yaml.safe_dump(data, sort_keys=False, default_flow_style=None)
    if output:
        output.write_text(text)
        out.print(f"wrote {output}")
    else:
        sys.stdout.write(text)


@node_app.command("run")
@_guard
def node_run(
    config: Annotated[Path, typer.Option("--config", "-c", help="node config (YAML)")],
    ready_file: Annotated[Path | None, typer.Option(help="write the PID here once running")] = None,
    log_level: Annotated[str, typer.Option(help="debug, info, warning")] = "info",
    recover_db: Annotated[bool, typer.Option("--recover-db", help="move an unreadable node database aside and "
                                             "start with a new one")] = False,
    replace_pid: Annotated[int | None, typer.Option(
        "--replace", help="warm restart: load first, then stop the node daemon with this PID (it must run the "
                          "same config) and take over its TUN, socket and state")] = None,
) -> None:
    """Run the node daemon in the foreground (stop with SIGTERM or Ctrl-C)."""
    import logging
    import time

    from topomirror.node.config import load_config
    from topomirror.node.daemon import run_node
    from topomirror.store.db import Store, StoreCorrupt

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    cfg = load_config(config)
    if replace_pid is not None:
        from topomirror.node.replace import ReplaceError, check, preload, replace

        try:
            check(replace_pid, config)  # before two seconds of loading, not after
            began = time.monotonic()
            preload()
            loaded = time.monotonic() - began
            gone = replace(replace_pid, config)
        except ReplaceError as exc:
            fail(str(exc))
        logging.getLogger("topomirror.node").info(
            "loaded in %.2f s, then stopped daemon %d (gone after %.2f s); taking over", loaded, replace_pid, gone)
    if recover_db and cfg.state_dir is not None:
        db = cfg.state_dir / "node.db"
        try:
            Store(db).close()
        except StoreCorrupt:
            moved = Store.recover(db)
            console.print(f"moved the unreadable database to {moved}; starting with a new one")
    run_node(cfg, ready_file)


@node_app.command("check-config")
@_guard
def node_check_config(config: Annotated[Path, typer.Argument(help="node config (YAML)")]) -> None:
    """Validate a node config (and read its keys) without starting anything."""
    from topomirror.node.config import load_config, peer_key

    cfg = load_config(config)
    for peer in cfg.peers:
        peer_key(peer)
    out.print(f"[green]ok[/] {config}: node {cfg.name} (id {cfg.node_id}), {len(cfg.peers)} peers, "
              f"{len(cfg.targets)} targets, {len(cfg.filters)} filters")


@keys_app.command("gen")
def keys_gen(
    output: Annotated[Path | None, typer.Option("-o", "--output", help="write to this file (mode 600)")] = None,
) -> None:
    """Generate a 32-byte pair key (base64) for two nodes."""
    from topomirror.wire.crypto import generate_key

    key = generate_key()
    if output is None:
        out.print(key, highlight=False)
        return
    output.write_text(key + "\n")
    output.chmod(0o600)
    console.print(f"wrote {output}")


@app.command("status")
@_guard
def status(
    api: Annotated[str | None, typer.Option(help="node API URL (default http://127.0.0.1:7781)")] = None,
    lab: Annotated[Path | None, typer.Option(help="lab file: reach a lab node's API through its socket")] = None,
    node: Annotated[str | None, typer.Option(help="lab node name (with --lab)")] = None,
    view: Annotated[str, typer.Option(help="status, flows, paths, sessions or metrics")] = "status",
    token: Annotated[str | None, typer.Option(envvar="TOPOMIRROR_API_TOKEN", help="API bearer token")] = None,
    json_out: JsonFlag = False,
) -> None:
    """Show a running node's status, flows, paths, sessions or Prometheus metrics."""
    if view not in ("status", "flows", "paths", "sessions", "metrics"):
        fail(f"unknown view {view!r}: use status, flows, paths, sessions or metrics")
    _node_view(view, api, lab, node, token, json_out)


def _node_view(view: str, api: str | None, lab: Path | None, node: str | None, token: str | None,
               json_out: bool, query: str = "") -> None:
    from topomirror.api.client import ApiError, fetch, render

    socket_path = None
    if lab is not None:
        if node is None:
            fail("--lab needs --node NAME")
        from topomirror.lab.registry import LabRegistry
        from topomirror.node.launch import api_socket

        spec = _load(lab)
        registry = LabRegistry.load(spec.name)
        if registry is None:
            fail(f"lab {spec.name!r} is not deployed")
        socket_path = api_socket(registry, node)
    try:
        data = fetch(f"/{view}{query}", url=api, socket_path=socket_path, token=token)
    except ApiError as exc:
        fail(str(exc))
    if view == "metrics":
        sys.stdout.write(str(data))
        return
    if json_out:
        out.print_json(json.dumps(data))
    else:
        render(view, data, out)


ApiOpt = Annotated[str | None, typer.Option(help="node API URL (default http://127.0.0.1:7781)")]
LabOpt = Annotated[Path | None, typer.Option(help="lab file: reach a lab node's API through its socket")]
NodeOpt = Annotated[str | None, typer.Option(help="lab node name (with --lab)")]
TokenOpt = Annotated[str | None, typer.Option(envvar="TOPOMIRROR_API_TOKEN", help="API bearer token")]


@app.command("sessions")
def sessions_cmd(api: ApiOpt = None, lab: LabOpt = None, node: NodeOpt = None, token: TokenOpt = None,
                 json_out: JsonFlag = False) -> None:
    """Mirror sessions of a node (state, relays, lease, reason) and the relay's virtual connections."""
    _node_view("sessions", api, lab, node, token, json_out)


@app.command("flows")
def flows_cmd(api: ApiOpt = None, lab: LabOpt = None, node: NodeOpt = None, token: TokenOpt = None,
              json_out: JsonFlag = False,
              limit: Annotated[int, typer.Option(min=1, help="show the N most recently active flows")] = 1000) -> None:
    """The node's flow table: class, mirror state and the reason for it."""
    _node_view("flows", api, lab, node, token, json_out, query=f"?limit={limit}")


@app.command("paths")
def paths_cmd(api: ApiOpt = None, lab: LabOpt = None, node: NodeOpt = None, token: TokenOpt = None,
              json_out: JsonFlag = False) -> None:
    """Paths to each peer with what the peer's feedback says about them."""
    _node_view("paths", api, lab, node, token, json_out)


@app.command("explain")
def explain_cmd(
    subject: Annotated[str, typer.Argument(help="a session ('session:12') or part of a flow ('7000', 'tcp 172.16')")],
    api: ApiOpt = None, lab: LabOpt = None, node: NodeOpt = None, token: TokenOpt = None,
    json_out: JsonFlag = False,
) -> None:
    """Every stored decision about a session or flow, with its reason, in order."""
    from urllib.parse import quote

    _node_view("explain", api, lab, node, token, json_out, query=f"?subject={quote(subject)}")


@app.command("record")
@_guard
def record_cmd(
    lab: Annotated[Path, typer.Option(help="lab file with topomirror hosts h1-h4 (e.g. diamond-mirror.yaml)")],
    minutes: Annotated[float, typer.Option(help="how long to record")] = 2.0,
    out_file: Annotated[Path, typer.Option("--out", help="SQLite file for the telemetry")]
    = Path("data/telemetry/recorded.sqlite"),
    seed: Annotated[int, typer.Option(help="workload random seed")] = 1,
    feedback_ms: Annotated[int, typer.Option(help="feedback cadence while recording")] = 50,
    json_out: JsonFlag = False,
) -> None:
    """Run a realistic workload mix on a lab and store its path telemetry for the predictor."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from topomirror.lab.record import record

    _need_root("record")
    with Progress(TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(), console=console,
                  transient=True) as bar:
        task = bar.add_task("record", total=1.0)
        summary: dict[str, Any] = record(lab, minutes, out_file, seed=seed, feedback_ms=feedback_ms,
                         progress=lambda m, f: bar.update(task, description=m, completed=f))
    if json_out:
        out.print_json(json.dumps(summary))
    else:
        out.print(f"recorded {summary['samples']} samples of {summary['paths']} paths to {summary['file']} "
                  f"({100 * float(summary['congested_share']):.1f} % congested, "
                  f"{100 * float(summary['announced_share']):.1f} % with announced bytes)")


model_app = typer.Typer(help="Train, evaluate and inspect the congestion predictor.", no_args_is_help=True)
app.add_typer(model_app, name="model")
DEFAULT_TELEMETRY = Path("data/telemetry/diamond.sqlite")


@model_app.command("train")
@_guard
def model_train(
    telemetry: Annotated[Path, typer.Option(help="telemetry SQLite (from 'topomirror record')")] = DEFAULT_TELEMETRY,
    store: Annotated[Path, typer.Option(help="where to save the trained model")] = Path("data/models.sqlite"),
    horizon_ms: Annotated[float, typer.Option(help="prediction horizon")] = 100.0,
    json_out: JsonFlag = False,
) -> None:
    """Replay stored telemetry through the online learner (labels delayed by the horizon) and save it."""
    from topomirror.analysis.predict import CongestionPredictor, PredictorConfig, PredictorStore

    if not telemetry.exists():
        fail(f"{telemetry} does not exist: record some with 'topomirror record --lab ...'")
    with PredictorStore(telemetry) as source:
        samples = source.telemetry()
    predictor = CongestionPredictor(PredictorConfig(horizon_ms=horizon_ms))
    for sample in samples:
        predictor.observe(sample)
    store.parent.mkdir(parents=True, exist_ok=True)
    with PredictorStore(store) as target:
        target.save_model("online", horizon_ms, predictor, time.time() * 1000)
    summary = {"samples": len(samples), "labels_learned": predictor.labels_learned, "gate": predictor.gate.active,
               "store": str(store), "horizon_ms": horizon_ms}
    if json_out:
        out.print_json(json.dumps(summary))
    else:
        out.print(f"trained on {len(samples)} samples ({predictor.labels_learned} labels); the gate serves "
                  f"{predictor.gate.active}; saved to {store}")


@model_app.command("eval")
@_guard
def model_eval(
    telemetry: Annotated[Path | None, typer.Option(help="telemetry SQLite; default: synthetic data only")] = None,
    quick: Annotated[bool, typer.Option("--quick", help="60 s of synthetic data instead of 600 s")] = False,
    json_out: JsonFlag = False,
) -> None:
    """AUC, onset AUC, TPR at 5 % FPR and lead time per method and horizon."""
    from topomirror.benchmarks import predictor as bench

    with console.status("evaluating the predictor"):
        result = bench.run(quick=quick, telemetry=telemetry)
    if json_out:
        out.print_json(json.dumps(result, default=str))
    else:
        out.print(bench.format_table(result), highlight=False)


@model_app.command("show")
@_guard
def model_show(store: Annotated[Path, typer.Option(help="model store")] = Path("data/models.sqlite"),
               json_out: JsonFlag = False) -> None:
    """List the saved models."""
    from topomirror.analysis.predict import PredictorStore

    if not store.exists():
        fail(f"{store} does not exist: train a model with 'topomirror model train'")
    with PredictorStore(store) as source:
        models: list[dict[str, Any]] = [
            {"name": n, "horizon_ms": h, "saved": time.strftime("%Y-%m-%d %H:%M", time.localtime(s / 1000))}
            for n, h, s in source.models()]
    if json_out:
        out.print_json(json.dumps(models))
        return
    table = Table("model", "horizon ms", "saved")
    for model in models:
        table.add_row(model["name"], str(model["horizon_ms"]), model["saved"])
    out.print(table)


@bench_app.command("predictor")
@_guard
def bench_predictor(
    telemetry: Annotated[Path | None, typer.Option(help="recorded telemetry SQLite")] = DEFAULT_TELEMETRY,
    quick: Annotated[bool, typer.Option("--quick", help="60 s of synthetic data instead of 600 s")] = False,
    out_dir: Annotated[Path | None, typer.Option("--out", help="folder for the JSON result")] = None,
    json_out: JsonFlag = False,
) -> None:
    """Predictor quality (synthetic and recorded lab telemetry) and cost, per method and horizon."""
    from topomirror.benchmarks import predictor as bench

    if telemetry is not None and not telemetry.exists():
        fail(f"{telemetry} does not exist: record with 'topomirror record' or pass --telemetry ''")
    with console.status("benchmarking the predictor (minutes for the full run)"):
        result = bench.run(quick=quick, telemetry=telemetry)
    data = {"benchmark": "predictor", "date": time.strftime("%Y-%m-%d"), **result}
    path = _save_json(data, "predictor", out_dir)
    if json_out:
        out.print_json(json.dumps(data, default=str))
    else:
        out.print(bench.format_table(result), highlight=False)
    console.print(f"saved {path}")


@bench_app.command("extraction")
@_guard
def bench_extraction(
    count: Annotated[int, typer.Option(help="first packets to extract")] = 200_000,
    out_dir: Annotated[Path | None, typer.Option("--out", help="folder for the JSON result")] = None,
    json_out: JsonFlag = False,
) -> None:
    """Offline metadata extraction rate on a mix of first packets."""
    from topomirror.benchmarks import extraction

    with console.status("benchmarking metadata extraction"):
        result = extraction.run(count)
    data = {"benchmark": "extraction", "date": time.strftime("%Y-%m-%d"), **result}
    path = _save_json(data, "extraction", out_dir)
    out.print_json(json.dumps(data if json_out else result, default=str))
    console.print(f"saved {path}")


@app.command("demo")
@_guard
def demo(
    lab: Annotated[Path | None, typer.Option(help="lab file (default: examples/labs/diamond-mirror.yaml)")] = None,
    quick: Annotated[bool, typer.Option("--quick", help="short schedule (about 90 s)")] = False,
    out_dir: Annotated[Path, typer.Option("--out", help="folder for demo.json and report.html")] = Path("out/demo"),
    policies: Annotated[str, typer.Option(help="comma-separated subset of off,always,reactive,predictive")]
    = "off,always,reactive,predictive",
    fixed_order: Annotated[bool, typer.Option(
        "--fixed-order", help="run the policies in the order given (default: the list rotated by the clock's second, "
                              "so over several runs no policy always gets the same minutes of a noisy machine)")]
    = False,
    json_out: JsonFlag = False,
) -> None:
    """Run the same workload under each mirroring policy on a real namespace lab; print and save a report."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from topomirror.demo.runner import COLUMNS_HELP, run_demo

    _need_root("demo")
    chosen = tuple(p.strip() for p in policies.split(",") if p.strip())
    unknown = [p for p in chosen if p not in ("off", "always", "reactive", "predictive")]
    if unknown:
        fail(f"unknown policies {unknown}: choose from off, always, reactive, predictive")
    with Progress(TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(), console=console,
                  transient=True) as bar:
        task = bar.add_task("demo", total=1.0)
        result = run_demo(lab, quick=quick, out_dir=out_dir, policies=chosen, rotation=0 if fixed_order else None,
                          progress=lambda message, fraction: bar.update(task, description=message,
                                                                         completed=fraction))
    if json_out:
        out.print_json(json.dumps(result))
        return
    from topomirror.demo.report import COLUMNS, table_rows

    table = Table("policy", *(title for _, title in COLUMNS),
                  title=f"topomirror demo on lab {result['lab']} ({'quick' if quick else 'default'} run)")
    for name, summary in table_rows(result):
        table.add_row(name, *("-" if summary.get(key) is None else str(summary[key]) for key, _ in COLUMNS))
    out.print(table)
    out.print(COLUMNS_HELP)
    for key, value in result["verdict"].items():
        out.print(f"  {key}: {value}")
    out.print(f"report: [bold]{result.get('report')}[/] (JSON: {out_dir / 'demo.json'})")


@lab_app.command("demo")
@_guard
def lab_demo(
    lab: Annotated[Path | None, typer.Option(help="lab file (default: examples/labs/two-path.yaml)")] = None,
    seconds: Annotated[float, typer.Option(help="seconds per iperf3 run")] = 3.0,
    json_out: JsonFlag = False,
) -> None:
    """Deploy a lab, measure real traffic across it under shaping and loss, destroy it."""
    from topomirror.lab.demo import run_lab_demo

    _need_root("demo")
    with console.status("demo") as status:
        report: dict[str, Any] = run_lab_demo(lab, seconds=seconds, progress=status.update)
    if json_out:
        out.print_json(json.dumps(report))
        return
    table = Table("direct link", "TCP goodput (Mbit/s)", "TCP retransmits", "UDP probe loss (%)",
                  title=f"lab {report['lab']}: {report['path']}")
    for row in report["rows"]:  # type: ignore[union-attr]
        table.add_row(row["setting"], str(row["tcp_mbps"]), str(row["tcp_retransmits"]),
                      str(row["udp_probe_loss_pct"]))
    out.print(table)
    out.print("The lab was destroyed; nothing of it is left on the machine.")


def _save_json(data: object, name: str, out_dir: Path | None) -> Path:
    folder = out_dir or Path("bench/results")
    folder.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = folder / f"{name}-{stamp}.json"
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path


def _report_bench(name: str, results: dict[str, Any], out_dir: Path | None, json_out: bool,
                  keys: tuple[str, ...] | None = None) -> None:
    """Save a bench result as JSON; print it whole (`--json`) or as a metric table of `keys`."""
    data = {"benchmark": name, "date": time.strftime("%Y-%m-%d"), **results}
    path = _save_json(data, name, out_dir)
    if json_out or keys is None:
        out.print_json(json.dumps(data if json_out else results))
    else:
        table = Table("metric", "value")
        for key in keys:
            table.add_row(key, str(data[key]))
        out.print(table)
    if not json_out or keys is None:
        console.print(f"saved {path}")


@bench_app.command("lab")
@_guard
def bench_lab(
    files: Annotated[list[Path] | None, typer.Argument(help="lab files (default: fat-tree k=4, ring-32)")] = None,
    repeats: Annotated[int, typer.Option(help="deploy/destroy cycles per lab")] = 3,
    out_dir: Annotated[Path | None, typer.Option("--out", help="folder for the JSON result")] = None,
    json_out: JsonFlag = False,
) -> None:
    """Time deploy and destroy of larger labs (median and max of several cycles)."""
    from topomirror.benchmarks import lab as bench

    _need_root("bench lab")
    with console.status("benchmarking lab deploy/destroy") as status:
        results: dict[str, Any] = bench.run(files, repeats, progress=status.update)
    data = {"benchmark": "lab", "date": time.strftime("%Y-%m-%d"), "results": results}
    path = _save_json(data, "lab", out_dir)
    if json_out:
        out.print_json(json.dumps(data))
        return
    table = Table("lab", "nodes", "links", "deploy median s", "deploy max s", "destroy median s")
    for name, r in results.items():
        table.add_row(name, str(r["nodes"]), str(r["links"]), str(r["deploy_s_median"]),
                      str(r["deploy_s_max"]), str(r["destroy_s_median"]))
    out.print(table)
    console.print(f"saved {path}")


@bench_app.command("dataplane")
@_guard
def bench_dataplane(
    seconds: Annotated[float, typer.Option(help="seconds per iperf3 run")] = 5.0,
    quick: Annotated[bool, typer.Option("--quick", help="short runs, fewer bisection steps")] = False,
    reference: Annotated[bool, typer.Option(
        "--reference/--no-reference",
        help="also measure the pure-Python reference data plane (TOPOMIRROR_DATAPLANE=python) in the same run")] = True,
    out_dir: Annotated[Path | None, typer.Option("--out", help="folder for the JSON result")] = None,
    json_out: JsonFlag = False,
) -> None:
    """Tunnel vs direct veth on the two-path lab: TCP goodput, lossless UDP rate, added latency."""
    from topomirror.benchmarks import dataplane

    _need_root("bench dataplane")
    with console.status("benchmarking the data plane") as status:
        results = dataplane.run(seconds=seconds, quick=quick, reference=reference, progress=status.update)
    _report_bench("dataplane", results, out_dir, json_out, (
        "direct_tcp_gbps", "tunnel_tcp_gbps", "dup_tcp_gbps", "dup_udp_pps_lossless",
        "added_latency_p50_us", "added_latency_p99_us", "added_latency_single_path_p50_us",
        "floor_two_hops_p50_us", "floor_duplicated_p50_us", "added_latency_event_loop_p50_us"))


@bench_app.command("flows")
@_guard
def bench_flows(
    rate: Annotated[int, typer.Option(help="new flows per second offered")] = 5000,
    seconds: Annotated[float, typer.Option(help="seconds per iperf3 run")] = 5.0,
    repetitions: Annotated[int, typer.Option(
        help="rounds of the four modes (alone, new flows, one flow, new flows past the nodes)")] = 5,
    quick: Annotated[bool, typer.Option("--quick", help="one round of 3 s runs")] = False,
    out_dir: Annotated[Path | None, typer.Option("--out", help="folder for the JSON result")] = None,
    json_out: JsonFlag = False,
) -> None:
    """New flows/s the node decides against TCP throughput through it (issue 5), side by side."""
    from topomirror.benchmarks import flows

    _need_root("bench flows")
    with console.status("benchmarking new flows per second") as status:
        results = flows.run(rate=rate, seconds=seconds, repetitions=repetitions, quick=quick,
                            progress=status.update)
    _report_bench("flows", results, out_dir, json_out, (
        "new_flows_per_s_offered", "new_flows_per_s_decided", "baseline_gbps", "with_flows_gbps",
        "same_flow_gbps", "underlay_gbps", "throughput_drop_pct", "underlay_drop_pct", "decision_drop_pct",
        "decision_drop_pct_quiet", "analysis_dropped",
        "verdict", "verdict_decisions_only"))


@bench_app.command("load")
@_guard
def bench_load(
    pairs: Annotated[int, typer.Option(help="alternations of the reference and the load")] = 3,
    lab: Annotated[Path | None, typer.Option(help="lab file (default: examples/labs/diamond-mirror.yaml)")] = None,
    out_dir: Annotated[Path | None, typer.Option("--out", help="folder for the JSON result")] = None,
    json_out: JsonFlag = False,
) -> None:
    """What the demo's load costs the RPC p99 with nothing congested (core link widened, no failure)."""
    from topomirror.benchmarks import load

    _need_root("bench load")
    if pairs < 1:
        fail("--pairs must be at least 1")
    with console.status("measuring the demo's load without congestion") as status:
        try:
            results = load.run(pairs=pairs, lab_file=lab, progress=status.update)
        except ValueError as exc:
            fail(f"{exc}: bench load widens the demo lab's core link; give a lab with one named 'core'")
    _report_bench("load", results, out_dir, json_out, (
        "pairs", "load_p99_over_reference", "load_p99_over_reference_per_pair", "load_p99_over_reference_quiet",
        "load_p99_over_reference_quiet_per_pair"))


@bench_app.command("restart")
@_guard
def bench_restart(
    rounds: Annotated[int, typer.Option(help="warm and cold restarts each, alternating")] = 3,
    out_dir: Annotated[Path | None, typer.Option("--out", help="folder for the JSON result")] = None,
    json_out: JsonFlag = False,
) -> None:
    """How long a node restart interrupts the traffic through it, warm (load, then replace) and cold."""
    from topomirror.benchmarks import restart

    _need_root("bench restart")
    if rounds < 1:
        fail("--rounds must be at least 1")
    with console.status("restarting a node daemon under pings") as status:
        results = restart.run(rounds=rounds, progress=status.update)
    _report_bench("restart", results, out_dir, json_out, ("rounds", "warm_outage_ms", "cold_outage_ms", "ratios"))


@bench_app.command("planning")
@_guard
def bench_planning(
    samples: Annotated[int, typer.Option(help="random host pairs to plan")] = 2000,
    out_dir: Annotated[Path | None, typer.Option("--out", help="folder for the JSON result")] = None,
    json_out: JsonFlag = False,
) -> None:
    """Mirror planning cost on a k=8 fat-tree with relays (p50/p99, wall and CPU)."""
    from topomirror.benchmarks import planning

    with console.status("planning mirrors on a k=8 fat-tree"):
        results = planning.run(samples)
    _report_bench("planning", results, out_dir, json_out)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
