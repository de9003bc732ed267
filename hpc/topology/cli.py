"""``hpc topo`` commands: ``show`` this machine's topology, ``plan`` a node's placement."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import NoReturn

from rich.console import Console
from rich.table import Table

from hpc.nccl import PROFILES, nccl_env
from hpc.topology.discover import discover
from hpc.topology.model import Topology, TopologyError, format_cpulist, link_distance
from hpc.topology.nvsmi import read_nvsmi
from hpc.topology.placement import PlacementError, RankPlacement, compute_hcas, plan_node

__all__ = ["main", "plan_json"]


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line instead of usage + exit
        raise _UsageError(message)


def _build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="hpc topo", description="Node topology and rank placement.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    sub.add_parser("show", help="show this machine's GPUs, NICs and CPUs")
    plan = sub.add_parser("plan", help="plan GPU/CPU/NIC placement of the ranks of one node")
    plan.add_argument(
        "--topo-file", help="saved 'nvidia-smi topo -m' output (default: this machine)"
    )
    plan.add_argument("--ranks-per-node", type=int, required=True, metavar="N")
    plan.add_argument(
        "--nccl-profile",
        default="default",
        metavar="NAME",
        help=f"one of: {', '.join(PROFILES)} (default: default)",
    )
    plan.add_argument("--format", choices=("table", "json"), default="table")
    return parser


def main(argv: list[str]) -> int:
    """Run ``hpc topo`` with ``argv`` (without the ``topo`` word). Returns the exit code."""
    try:
        args = _build_parser().parse_args(argv)
    except _UsageError as e:
        return _fail(str(e))
    except SystemExit as e:  # --help
        return int(e.code or 0)
    try:
        if args.command == "show":
            _show(discover(), Console())
            return 0
        return _plan(args)
    except (TopologyError, ValueError) as e:
        return _fail(str(e))


def _fail(message: str) -> int:
    print(f"hpc topo: error: {' '.join(message.split())}", file=sys.stderr)
    return 2


def _plan(args: argparse.Namespace) -> int:
    if args.nccl_profile not in PROFILES:
        return _fail(
            f"argument --nccl-profile: unknown profile {args.nccl_profile!r}; "
            f"valid profiles: {', '.join(PROFILES)}"
        )
    if args.ranks_per_node < 1:
        return _fail(f"argument --ranks-per-node: must be at least 1, got {args.ranks_per_node}")
    topo = read_nvsmi(args.topo_file) if args.topo_file else discover()
    layer = PROFILES[args.nccl_profile].link_layer
    try:
        plan = plan_node(topo, args.ranks_per_node, link_layer=layer)
    except PlacementError as e:
        where = f" ({args.topo_file})" if args.topo_file else ""
        return _fail(f"argument --ranks-per-node: {e}{where}")
    env = nccl_env(args.nccl_profile, compute_hcas(topo, layer), {}, os.environ)
    if args.format == "json":
        print(json.dumps(plan_json(plan, env)))
    else:
        _print_plan(plan, env, topo, Console())
    return 0


def plan_json(plan: list[RankPlacement], env: dict[str, str]) -> dict:
    """The ``topo plan --format json`` document."""
    return {
        "ranks": [
            {
                "local_rank": p.local_rank,
                "gpu": p.gpu,
                "cpus": list(p.cpus),
                "numa_node": p.numa_node,
                "nics": list(p.nics),
            }
            for p in plan
        ],
        "nccl_env": dict(env),
    }


def _print_plan(
    plan: list[RankPlacement], env: dict[str, str], topo: Topology, console: Console
) -> None:
    for note in topo.notes:
        console.print(f"[yellow]note:[/] {note}")
    table = Table(title=f"Placement ({topo.source})")
    for col in ("rank", "GPU", "NUMA", "CPUs", "cores", "workers", "nearest NICs"):
        table.add_column(col)
    for p in plan:
        near = p.nearest_nics
        nics = ", ".join(near)
        if near and p.nic_links[0]:
            nics += f" ({p.nic_links[0]})"
        if len(p.nics) > len(near):
            nics += f"; +{len(p.nics) - len(near)} farther"
        table.add_row(
            str(p.local_rank),
            _opt(p.gpu),
            _opt(p.numa_node),
            format_cpulist(p.cpus) or "-",
            str(p.num_cores),
            str(p.dataloader_workers),
            nics or "-",
        )
    console.print(table)
    env_table = Table(title="NCCL environment")
    env_table.add_column("variable")
    env_table.add_column("value")
    for k, v in env.items():
        env_table.add_row(k, v)
    console.print(env_table)


def _opt(value: object) -> str:
    return "-" if value is None else str(value)


def _show(topo: Topology, console: Console) -> None:
    if not topo.gpus:
        console.print("[bold yellow]No GPUs found on this machine[/]: showing the CPU-only view.")
    for note in topo.notes:
        console.print(f"[yellow]note:[/] {note}")
    if topo.gpus:
        gt = Table(title=f"GPUs ({topo.source})")
        for col in ("GPU", "PCI bus id", "NUMA", "local CPUs", "nearest NICs", "GPU links"):
            gt.add_column(col)
        for g in topo.gpus:
            links = {n.name: topo.nic_link(g.index, n.name) for n in topo.nics}
            best = min((link_distance(x) for x in links.values()), default=None)
            near = [f"{n} ({x})" for n, x in links.items() if x and link_distance(x) == best]
            peers = " ".join(
                f"{j}:{topo.gpu_links[(g.index, j)]}"
                for j in sorted(o.index for o in topo.gpus)
                if j != g.index and (g.index, j) in topo.gpu_links
            )
            gt.add_row(
                str(g.index),
                g.pci_bus_id or "-",
                _opt(g.numa_node),
                format_cpulist(g.cpu_affinity) or "-",
                ", ".join(near) or "-",
                peers or "-",
            )
        console.print(gt)
    if topo.nics:
        nt = Table(title="NICs")
        for col in ("NIC", "state", "link layer", "PCI bus id", "NUMA"):
            nt.add_column(col)
        for n in topo.nics:
            nt.add_row(
                n.name,
                n.port_state or "?",
                n.link_layer or "?",
                n.pci_bus_id or "-",
                _opt(n.numa_node),
            )
        console.print(nt)
    ct = Table(title="CPUs")
    ct.add_column("NUMA node")
    ct.add_column("CPUs")
    ct.add_column("allowed")
    ct.add_column("cores")
    nodes: dict[int | None, frozenset[int]] = {k: v for k, v in topo.numa_cpus.items()}
    nodes = nodes or {None: topo.cpus}
    for node, cpus in sorted(nodes.items(), key=lambda kv: -1 if kv[0] is None else kv[0]):
        allowed = cpus & topo.allowed_cpus
        ct.add_row(
            _opt(node),
            format_cpulist(cpus) or "-",
            format_cpulist(allowed) or "-",
            str(len(topo.cores(allowed))),
        )
    console.print(ct)
