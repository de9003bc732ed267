"""DCP checkpoints (checkpoint.format=dcp): resharded resume, corruption, clear failures.

The multi-rank tests start real ranks (one process each, gloo over TCP) running
``tests/dcp_worker.py``: an FSDP2 model whose training is exact in float64 by construction
(see the worker's docstring), so a run that changes its world size must end bitwise equal
to one that never did. Comparisons are on the full state gathered on rank 0
(``full_state_dict=True``): parameters, momentum buffers and param groups.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from hpc.runtime.checkpoint import LATEST, MANIFEST, CheckpointManager
from hpc.runtime.checkpoint_dcp import DcpCheckpointManager

from support import REPO, cli_env, hpc_launch

WORKER = Path(__file__).with_name("dcp_worker.py")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def ranks(
    world: int, *args: object, timeout: float = 240, **extra: str
) -> list[subprocess.CompletedProcess]:
    """Run the worker on ``world`` ranks; every rank's completed process."""
    port = free_port()
    procs = []
    for rank in range(world):
        env = dict(os.environ, RANK=str(rank), WORLD_SIZE=str(world), OMP_NUM_THREADS="1")
        env["PYTHONFAULTHANDLER"] = "1"  # a fatal signal prints every thread's stack
        env.update(extra)
        env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
        procs.append(
            subprocess.Popen(
                [sys.executable, str(WORKER), "train", *map(str, args)],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    done = []
    try:
        for proc in procs:
            out, _ = proc.communicate(timeout=timeout)
            done.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, ""))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    return done


def ok(world: int, *args: object, **extra: str) -> None:
    done = ranks(world, *args, **extra)
    assert [p.returncode for p in done] == [0] * world, done[0].stdout[-3000:]


def flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        items = tree.items()
    elif isinstance(tree, list | tuple):
        items = enumerate(tree)
    else:
        return {prefix: tree}
    out: dict[str, Any] = {}
    for key, value in items:
        out.update(flat(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def assert_bitwise_equal(a: Path, b: Path) -> None:
    left, right = flat(torch.load(a)), flat(torch.load(b))
    assert left.keys() == right.keys(), sorted(left.keys() ^ right.keys())
    for key, value in left.items():
        if isinstance(value, torch.Tensor):
            assert value.dtype == right[key].dtype and torch.equal(value, right[key]), key
        else:
            assert value == right[key], key


@pytest.fixture(scope="module")
def resharded(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """4 ranks train 6 steps (checkpoint at 2); 2 ranks resume at 2 and train to 4
    (checkpoint at 4); 3 ranks resume at 4 and train to 6."""
    root = tmp_path_factory.mktemp("dcp")
    ckpt, out = root / "checkpoints", root / "out"
    out.mkdir()
    ok(4, ckpt, out, 0, 6, "2")
    ok(2, ckpt, out, 2, 4, "4")
    ok(3, ckpt, out, 4, 6, "")
    return ckpt, out


@pytest.mark.slow
def test_resume_4_to_2_to_3_ranks_is_bitwise_equal(resharded: tuple[Path, Path]) -> None:
    ckpt, out = resharded
    # Each reshard loads exactly what was saved: parameters and optimizer state.
    assert_bitwise_equal(out / "saved-2-ws4.pt", out / "loaded-2-ws2.pt")
    assert_bitwise_equal(out / "saved-4-ws2.pt", out / "loaded-4-ws3.pt")
    # The run that changed size twice ends where the one that never did ends.
    assert_bitwise_equal(out / "final-6-ws4.pt", out / "final-6-ws3.pt")
    first, final = torch.load(out / "saved-2-ws4.pt"), torch.load(out / "final-6-ws3.pt")
    assert not torch.equal(first["model"]["weight"], final["model"]["weight"])  # it trained
    assert final["optimizer"]["state"]["weight"]["momentum_buffer"].abs().sum() > 0
    manager = DcpCheckpointManager(ckpt, keep=3)
    assert manager.valid_steps() == [4, 2]
    manifests = {p.name: manager._manifest(p) for p in manager.checkpoints()}
    assert {n: (m["format"], m["world_size"]) for n, m in manifests.items()} == {
        "step-000000002": ("dcp", 4),
        "step-000000004": ("dcp", 2),
    }
    assert (ckpt / LATEST).read_text().strip() == "step-000000004"
    assert sorted(manifests["step-000000002"]["files"]) == [
        ".metadata",
        *(f"__{r}_0.distcp" for r in range(4)),
        *(f"rank{r}.extra.pt" for r in range(4)),
    ]


@pytest.mark.slow
def test_an_optimizer_that_does_not_fit_fails_in_one_line(resharded: tuple[Path, Path]) -> None:
    ckpt, out = resharded
    done = ranks(2, ckpt, out, 4, 5, "", "adam")
    assert [p.returncode for p in done] == [3, 3], done[0].stdout[-3000:]
    errors = [line for line in done[0].stdout.splitlines() if line.startswith("CheckpointError")]
    assert errors == [
        "CheckpointError: checkpoint step-000000004 (saved at world size 2): its optimizer "
        "state is SGD's with 1 param group(s); this run's optimizer is Adam with 1: "
        "cannot be converted"
    ]


def flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    for i in range(len(data) // 2, len(data) // 2 + 8):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.slow
def test_a_flipped_shard_makes_all_ranks_resume_from_the_previous_one(tmp_path: Path) -> None:
    ckpt, out = tmp_path / "checkpoints", tmp_path / "out"
    out.mkdir()
    ok(2, ckpt, out, 0, 2, "1,2")
    # Sizes still match; only the rank whose checksum share holds rank 1's shard sees it.
    flip(ckpt / "step-000000002" / "__1_0.distcp")
    done = ranks(2, ckpt, out, 2, 2, "", "sgd", 1)
    assert [p.returncode for p in done] == [0, 0], done[0].stdout[-3000:]
    assert all("resumed 1" in p.stdout for p in done)
    assert "__1_0.distcp fails its checksum: skipped" in done[0].stdout + done[1].stdout
    assert_bitwise_equal(out / "saved-1-ws2.pt", out / "loaded-1-ws2.pt")


@pytest.mark.slow
def test_asynchronous_saves_hold_the_state_of_their_step(tmp_path: Path) -> None:
    ckpt, out = tmp_path / "checkpoints", tmp_path / "out"
    out.mkdir()
    # Saves at steps 1, 2, 3 return once staged; the next steps update the parameters
    # in place while the shards are written; a new save waits for the previous one.
    ok(2, ckpt, out, 0, 4, "1,2,3", DCP_ASYNC="1")
    manager = DcpCheckpointManager(ckpt, keep=3)
    assert manager.valid_steps() == [3, 2, 1]
    assert (ckpt / LATEST).read_text().strip() == "step-000000003"
    assert not list(ckpt.glob(".*.tmp")), "a save was left uncommitted"
    for step in (1, 2, 3):  # each loads back as the state at its step, at 3 ranks
        ok(3, ckpt, out, step, step, "")
        assert_bitwise_equal(out / f"saved-{step}-ws2.pt", out / f"loaded-{step}-ws3.pt")


# -- one process, no process group (world size 1) ------------------------------------------


def linear(value: float) -> nn.Linear:
    model = nn.Linear(4, 3)
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(value)
    return model


def save_two(directory: Path) -> DcpCheckpointManager:
    manager = DcpCheckpointManager(directory, keep=3)
    for step in (1, 2):
        model = linear(float(step))
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        manager.save(step, {"model": model, "optimizer": opt, "step": step, "note": "x"})
    return manager


@pytest.mark.parametrize(
    ("victim", "how", "message"),
    [
        ("__0_0.distcp", "truncate", "__0_0.distcp has the wrong size"),
        ("__0_0.distcp", "flip", "__0_0.distcp fails its checksum"),
        (".metadata", "flip", ".metadata fails its checksum"),
        ("rank0.extra.pt", "delete", "incomplete or corrupt"),
        (MANIFEST, "delete", "incomplete or corrupt"),
        (MANIFEST, "unlist", "the manifest lists no rank0.extra.pt"),
    ],
)
def test_a_corrupt_newest_dcp_checkpoint_falls_back(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, victim: str, how: str, message: str
) -> None:
    save_two(tmp_path)
    path = tmp_path / "step-000000002" / victim
    if how == "truncate":
        path.write_bytes(path.read_bytes()[:-10])
    elif how == "flip":
        flip(path)
    elif how == "unlist":  # a manifest that misses a rank's file (all sizes still match)
        manifest = json.loads(path.read_text())
        del manifest["files"]["rank0.extra.pt"]
        path.write_text(json.dumps(manifest))
    else:
        path.unlink()
    model = linear(0.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    with caplog.at_level(logging.WARNING, logger="hpc.runtime.checkpoint_dcp"):
        loaded = DcpCheckpointManager(tmp_path).load_latest({"model": model, "optimizer": opt})
    assert loaded is not None and loaded.step == 1 and loaded.state["step"] == 1
    assert loaded.state["note"] == "x" and "rng" not in loaded.state
    assert all(bool(torch.all(p == 1.0)) for p in model.parameters())
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("step-000000002" in w and message in w for w in warnings), warnings


def test_a_torch_format_checkpoint_is_not_read_as_dcp(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    CheckpointManager(tmp_path).save(1, {"step": 1})
    with caplog.at_level(logging.WARNING, logger="hpc.runtime.checkpoint_dcp"):
        assert DcpCheckpointManager(tmp_path).load_latest({"model": linear(0.0)}) is None
    assert any("format 'torch', not 'dcp'" in r.getMessage() for r in caplog.records)


# -- through hpc-launch and the Session ------------------------------------------------------

FSDP_JOB = [
    "job.entrypoint=hpc.jobs.fsdp_digits:main",
    "checkpoint.format=dcp",
    "checkpoint.every_steps=20",
    "tracking.enabled=false",
]


@pytest.mark.slow
def test_the_fsdp_job_resumes_on_fewer_ranks(workdir: Path) -> None:
    first = hpc_launch([*FSDP_JOB, "resources.tasks_per_node=4", "job.epochs=1"], workdir)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "final accuracy" in first.stdout and "after 44 steps (world size 4)" in first.stdout
    (run_dir,) = (workdir / "outputs" / "digits").iterdir()
    again = hpc_launch(
        [
            f"resume={run_dir}",
            "job.epochs=2",
            "resources.tasks_per_node=3",
            "resume_allow_changes=[job.epochs,resources.tasks_per_node]",
        ],
        workdir,
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resumed from step-000000044 at step 44 (resharded from 4 to 3 ranks)" in again.stdout
    assert "after 88 steps (world size 3)" in again.stdout
    accuracy = float(again.stdout.split("final accuracy ")[1].split()[0])
    assert accuracy > 0.85, again.stdout
    # And on one rank: no process group, an unsharded model loads the shards in full.
    single = hpc_launch(
        [
            f"resume={run_dir}",
            "job.epochs=3",
            "resources.tasks_per_node=1",
            "resume_allow_changes=[job.epochs,resources.tasks_per_node]",
        ],
        workdir,
    )
    assert single.returncode == 0, single.stderr[-3000:]
    assert "at step 88 (resharded from 3 to 1 ranks)" in single.stdout
    assert "after 132 steps (world size 1)" in single.stdout


def full_checkpoint(run_dir: Path, out: Path) -> dict[str, Any]:
    """The newest DCP checkpoint of a run as one full state dict (DCP's own converter)."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    latest = (run_dir / "checkpoints" / LATEST).read_text().strip()
    dcp_to_torch_save(run_dir / "checkpoints" / latest, out)
    return torch.load(out, weights_only=False)


@pytest.mark.slow
@pytest.mark.parametrize("asynchronous", [False, True], ids=["sync", "async"])
def test_a_preempted_fsdp_run_resumes_bitwise_at_the_same_world_size(
    tmp_path: Path, asynchronous: bool
) -> None:
    """With ``checkpoint.async=true`` periodic saves are in flight while training goes on,
    and the stop waits for its own one: the result is the same bits either way."""
    job = [*FSDP_JOB, "job.epochs=3", "checkpoint.every_steps=100000"]
    reference = tmp_path / "reference"
    reference.mkdir()
    plain = hpc_launch(job, reference)
    if asynchronous:
        job = [*FSDP_JOB, "job.epochs=3", "checkpoint.every_steps=7", "checkpoint.async=true"]
    assert plain.returncode == 0, plain.stderr[-3000:]
    work = tmp_path / "preempted"
    work.mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-m", "hpc.cli.launch", *job],
        cwd=work,
        env=cli_env(work),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    sent = False
    for line in proc.stdout:  # type: ignore[union-attr]
        lines.append(line)
        if line.startswith("hpc-launch: rank 0/2") and not sent:  # the first start
            time.sleep(0.5)  # some steps into the run
            proc.send_signal(signal.SIGUSR2)
            sent = True
    assert proc.wait(timeout=300) == 0, "".join(lines[-30:])
    text = "".join(lines)
    assert "stopping at step" in text and "resumed from step-" in text, text[-3000:]
    assert "after 132 steps (world size 2)" in text
    (ref_run,) = (reference / "outputs" / "digits").iterdir()
    (run,) = (work / "outputs" / "digits").iterdir()
    want = flat(full_checkpoint(ref_run, tmp_path / "ref.pt"))
    got = flat(full_checkpoint(run, tmp_path / "got.pt"))
    assert want.keys() == got.keys() and any(k.startswith("model.") for k in want)
    for key, value in want.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, got[key]), key
