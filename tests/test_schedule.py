"""``hpc sweep schedule|list|remove`` on the real test cluster (and cron arithmetic)."""

from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from slurm_helpers import require_cluster, wait_for_job
from support import hpc

TINY = "import os\nprint('tiny task', os.environ.get('HPC_RUN_DIR'), flush=True)\n"


def sweep_cli(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return hpc(["sweep", *args], cwd, timeout=180, **env)


def listing(cwd: Path, **env: str) -> dict:
    proc = sweep_cli(["list", "--json"], cwd, **env)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def squeue_names(name: str) -> list[str]:
    out = subprocess.run(
        ["squeue", "-h", "-n", name, "-o", "%i|%T|%r"], capture_output=True, text=True
    ).stdout
    return [ln for ln in out.splitlines() if ln.strip()]


def sweep_overrides(workdir: Path, name: str) -> list[str]:
    script = workdir / "tiny.py"
    script.write_text(TINY)
    return [
        "cluster=slurm",
        f"job.name={name}",
        f"job.entrypoint={script}",
        "tracking.enabled=false",
        "resources.tasks_per_node=1",
        "job.lr=0.1,0.2",
    ]


# -- no cluster needed --------------------------------------------------------------


def test_cron_next_times_in_zone_and_dst() -> None:
    from hpc.slurm_schedules import cron

    berlin = "Europe/Berlin"
    start = _dt.datetime(2026, 11, 26, 10, 0, tzinfo=cron.zone(berlin))
    assert cron.next_time("30 3 * * *", berlin, start).isoformat() == "2026-11-27T03:30:00+01:00"
    assert cron.next_time("*/15 * * * *", berlin, start).isoformat() == "2026-11-26T10:15:00+01:00"
    # Clocks go back on 25 Oct 2026: 02:30 happens twice, the schedule fires once.
    before = _dt.datetime(2026, 10, 25, 2, 30, tzinfo=cron.zone(berlin))  # first 02:30 (+02)
    after = cron.next_time("30 2 * * *", berlin, before)
    assert after.isoformat() == "2026-10-26T02:30:00+01:00"
    # Clocks go forward on 29 Mar 2026: 02:30 does not exist that day.
    spring = cron.next_time(
        "30 2 * * *", berlin, _dt.datetime(2026, 3, 29, 1, 0, tzinfo=cron.zone(berlin))
    )
    assert spring.date() >= _dt.date(2026, 3, 29)
    assert cron.wall_clock(after) == "2026-10-26T02:30:00"


@pytest.mark.parametrize(
    ("expr", "message"),
    [
        ("61 * * * *", "minute 61 is out of range (0-59)"),
        ("0 3 * *", "expected 5 fields"),
        ("0 3 30 2 *", "never matches a real date"),
        ("*/0 * * * *", "minute step 0 is not valid"),
        ("0 0 L * *", "day of month field 'L' is not valid"),
        ("@daily", "expected 5 fields"),
        ("0 0 1 13 *", "month 13 is out of range (1-12)"),
    ],
)
def test_bad_cron_rejected(workdir: Path, expr: str, message: str) -> None:
    proc = sweep_cli(
        ["schedule", "--cron", expr, "--name", "bad", "--", "cluster=slurm", "job.lr=0.1,0.2"],
        workdir,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr
    assert lines[0].startswith("hpc sweep: error: --cron:")
    assert not (workdir / ".state" / "schedules" / "bad.json").exists()


def test_bad_overrides_and_names_rejected(workdir: Path) -> None:
    cases = [
        (["--name", "x", "--", "cluster=slurm", "job.lr=-1,0.1"], "job.lr: must be > 0"),
        (["--name", "x", "--", "job.lr=0.1,0.2"], "cluster: a schedule launches through Slurm"),
        (["--name", "x", "--", "cluster=slurm", "job.nope=1,2"], "job.nope"),
        (["--name", "a b", "--", "cluster=slurm", "job.lr=0.1,0.2"], "--name: 'a b'"),
        (["--name", "x"], "give the hpc-launch overrides"),
    ]
    for args, message in cases:
        proc = sweep_cli(["schedule", "--cron", "0 3 * * *", *args], workdir)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1 and message in lines[0], (args, proc.stderr)
    assert listing(workdir)["schedules"] == []


# -- the real cluster ----------------------------------------------------------------


@pytest.mark.slurm
def test_resubmit_schedule_fires_resubmits_and_is_removed(workdir: Path) -> None:
    require_cluster()
    from croniter import croniter

    from hpc.slurm_schedules import cron

    name = f"t{uuid.uuid4().hex[:8]}"
    job_name = f"hpc-sched-{name}"
    expr = "17 3 * * *"
    overrides = sweep_overrides(workdir, name)
    try:
        proc = sweep_cli(
            [
                "schedule",
                "--cron",
                expr,
                "--name",
                name,
                "--mechanism",
                "resubmit",
                "--",
                *overrides,
            ],
            workdir,
        )
        assert proc.returncode == 0, proc.stderr
        assert "the cluster's local time" in proc.stderr
        first_job = proc.stdout.strip()
        assert first_job.isdigit()

        zone = cron.zone_name()
        expected = croniter(expr, _dt.datetime.now(cron.zone(zone))).get_next(_dt.datetime)
        data = listing(workdir)
        assert data["zone"] == zone
        (entry,) = data["schedules"]
        assert entry["name"] == name and entry["mechanism"] == "resubmit"
        assert _dt.datetime.fromisoformat(entry["next_run"]) == expected
        (queued,) = entry["slurm_jobs"]
        assert queued["job_id"] == first_job and queued["state"] == "PENDING"
        assert queued["start"] == expected.strftime("%Y-%m-%dT%H:%M:%S")
        table = sweep_cli(["list"], workdir)
        assert f"times are the cluster's local time ({zone})" in table.stdout
        assert expected.strftime("%Y-%m-%d %H:%M") in table.stdout

        duplicate = sweep_cli(
            ["schedule", "--cron", expr, "--name", name, "--", *overrides], workdir
        )
        assert duplicate.returncode == 2
        assert "a schedule with this name exists" in duplicate.stderr
        assert len(duplicate.stderr.strip().splitlines()) == 1

        # Fire the pending occurrence now, as if its time had come.
        subprocess.run(["scontrol", "update", f"JobId={first_job}", "StartTime=now"], check=True)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            entry = listing(workdir)["schedules"][0]
            if entry["history"]:
                break
            time.sleep(1)
        (launch,) = entry["history"]
        assert launch["exit_code"] == 0 and launch["job_id"] == first_job, launch
        (array_id,) = launch["arrays"]
        sweep = json.loads((Path(launch["sweep_dir"]) / "sweep.json").read_text())
        assert {t["array_id"] for t in sweep["tasks"]} == {array_id} and len(sweep["tasks"]) == 2
        # The next occurrence was queued before the launch, for the following cron time.
        assert entry["pending_job_id"] not in (None, first_job)
        assert _dt.datetime.fromisoformat(entry["next_run"]) == expected
        pending = [j for j in entry["slurm_jobs"] if j["job_id"] == entry["pending_job_id"]]
        assert pending and pending[0]["state"] == "PENDING"
        assert wait_for_job(first_job, timeout=60) == "COMPLETED"
        for index in range(2):
            assert wait_for_job(f"{array_id}_{index}", timeout=180) == "COMPLETED"
        log = next((workdir / ".state" / "schedules" / "logs").glob(f"{name}-{first_job}.out"))
        text = log.read_text()
        assert text.index("next occurrence: job") < text.index("queued as array(s)")

        removed = sweep_cli(["remove", name], workdir)
        assert removed.returncode == 0, removed.stderr
        assert f"scancel {entry['pending_job_id']}" in removed.stderr
        assert listing(workdir)["schedules"] == []
        assert squeue_names(job_name) == [] and squeue_names(name) == []
        again = sweep_cli(["remove", name], workdir)
        assert again.returncode == 2 and "no such schedule" in again.stderr
    finally:
        subprocess.run(["scancel", "-n", job_name], check=False)
        subprocess.run(["scancel", "-n", name], check=False)


@pytest.mark.slurm
def test_failing_launch_does_not_end_the_schedule(workdir: Path) -> None:
    """The next occurrence is queued before hpc-launch runs: a failing launch keeps it."""
    require_cluster()
    name = f"f{uuid.uuid4().hex[:8]}"
    overrides = sweep_overrides(workdir, name)
    try:
        proc = sweep_cli(
            [
                "schedule",
                "--cron",
                "0 4 * * *",
                "--name",
                name,
                "--mechanism",
                "resubmit",
                "--",
                *overrides,
                "resources.partition=nosuchpartition",
            ],
            workdir,
        )
        # Partitions are checked by Slurm only, at the sweep's sbatch.
        assert proc.returncode == 0, proc.stderr
        first_job = proc.stdout.strip()
        subprocess.run(["scontrol", "update", f"JobId={first_job}", "StartTime=now"], check=True)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            entry = listing(workdir)["schedules"][0]
            if entry["history"]:
                break
            time.sleep(1)
        (launch,) = entry["history"]
        assert launch["exit_code"] == 1 and "invalid partition" in launch["error"]
        assert entry["pending_job_id"] not in (None, first_job)
        assert [
            j["state"] for j in entry["slurm_jobs"] if j["job_id"] == entry["pending_job_id"]
        ] == ["PENDING"]
        wait_for_job(first_job, timeout=60)
        assert "invalid partition" in sweep_cli(["list"], workdir).stdout
        assert sweep_cli(["remove", name], workdir).returncode == 0
        assert squeue_names(f"hpc-sched-{name}") == []
    finally:
        subprocess.run(["scancel", "-n", f"hpc-sched-{name}"], check=False)


@pytest.mark.slurm
def test_scrontab_schedule_on_the_cluster(workdir: Path) -> None:
    require_cluster()
    if shutil.which("scrontab") is None:
        pytest.skip("no scrontab binary on this host (Debian's Slurm packages do not ship it)")
    name = f"s{uuid.uuid4().hex[:8]}"
    overrides = sweep_overrides(workdir, name)
    before = subprocess.run(["scrontab", "-l"], capture_output=True, text=True)
    try:
        proc = sweep_cli(
            [
                "schedule",
                "--cron",
                "23 2 * * *",
                "--name",
                name,
                "--mechanism",
                "scrontab",
                "--",
                *overrides,
            ],
            workdir,
        )
        assert proc.returncode == 0, proc.stderr
        text = subprocess.run(["scrontab", "-l"], capture_output=True, text=True).stdout
        assert f"# >>> hpc-launch schedule {name} " in text
        if before.returncode == 0:
            assert text.startswith(before.stdout)
        entry = listing(workdir)["schedules"][0]
        assert entry["mechanism"] == "scrontab"
        assert sweep_cli(["remove", name], workdir).returncode == 0
        after = subprocess.run(["scrontab", "-l"], capture_output=True, text=True).stdout
        assert name not in after
    finally:
        subprocess.run(["scancel", "-n", f"hpc-sched-{name}"], check=False)


# -- scrontab's read-modify-write, against a stand-in scrontab -------------------------

FAKE_SCRONTAB = """#!{python}
# Stand-in for Slurm's scrontab: -l prints the crontab ("no crontab for USER" and
# exit 1 when none); -e runs $VISUAL (else $EDITOR) on a temp copy and stores it
# unless the editor fails; -r removes it. FAKE_SCRONTAB_RACE: a file whose text is
# appended to the crontab right after the next -l (someone editing concurrently).
import os, subprocess, sys, tempfile
store = os.environ["FAKE_SCRONTAB_FILE"]
args = sys.argv[1:]
if args == ["-l"]:
    if not os.path.exists(store):
        print("no crontab for root")
        sys.exit(1)
    sys.stdout.write(open(store).read())
    sys.stdout.flush()
    race = os.environ.get("FAKE_SCRONTAB_RACE")
    if race and os.path.exists(race):
        line = open(race).read()
        os.unlink(race)
        with open(store, "a") as fh:
            fh.write(line)
    sys.exit(0)
if args == ["-r"]:
    os.path.exists(store) and os.unlink(store)
    sys.exit(0)
if args == ["-e"]:
    current = open(store).read() if os.path.exists(store) else "# Welcome to scrontab\\n"
    fd, tmp = tempfile.mkstemp()
    os.write(fd, current.encode())
    os.close(fd)
    editor = os.environ.get("VISUAL") or os.environ.get("EDITOR") or "vi"
    if subprocess.call([editor, tmp]):
        print("scrontab: fatal: editor returned non-zero exit code", file=sys.stderr)
        sys.exit(1)
    os.replace(tmp, store)
    sys.exit(0)
sys.exit(2)
"""

USER_CRONTAB = (
    "# my own jobs\n"
    "#SCRON --partition=long\n"
    "0 1 * * * /home/me/backup.sh   --keep  7\n"
    "\n"
    "*/5 * * * *\techo 'tabs and  spaces'\n"
)


@pytest.mark.slurm
def test_scrontab_edits_keep_user_lines_under_concurrency(workdir: Path) -> None:
    require_cluster()  # the mechanism checks ScronParameters with scontrol
    bindir = workdir / "bin"
    bindir.mkdir()
    fake = bindir / "scrontab"
    fake.write_text(FAKE_SCRONTAB.replace("{python}", sys.executable))
    fake.chmod(0o755)
    store_file = workdir / "crontab.txt"
    store_file.write_text(USER_CRONTAB)
    race = workdir / "race.txt"
    race.write_text("30 6 * * 1 echo added-by-the-user-meanwhile\n")
    env = {
        "PATH": f"{bindir}:{os.environ['PATH']}",
        "FAKE_SCRONTAB_FILE": str(store_file),
        "FAKE_SCRONTAB_RACE": str(race),
    }
    overrides = sweep_overrides(workdir, "cronjob")
    names = ["c1", "c2", "c3"]
    results: dict[str, subprocess.CompletedProcess[str]] = {}

    def schedule(name: str) -> None:
        results[name] = sweep_cli(
            ["schedule", "--cron", "0 5 * * *", "--name", name, "--", *overrides], workdir, **env
        )

    threads = [threading.Thread(target=schedule, args=(n,)) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for name in names:
        assert results[name].returncode == 0, results[name].stderr
    text = store_file.read_text()
    assert text.startswith(USER_CRONTAB), "the user's lines changed"
    assert "30 6 * * 1 echo added-by-the-user-meanwhile\n" in text, "a concurrent edit was lost"
    assert not race.exists()
    for name in names:
        assert text.count(f"# >>> hpc-launch schedule {name} ") == 1
        assert f"#SCRON --job-name=hpc-sched-{name}\n" in text
        assert f"-m hpc.slurm_schedules.fire {name} " in text
    assert {s["mechanism"] for s in listing(workdir, **env)["schedules"]} == {"scrontab"}

    duplicate = sweep_cli(
        ["schedule", "--cron", "0 5 * * *", "--name", "c2", "--", *overrides], workdir, **env
    )
    assert duplicate.returncode == 2 and "exists" in duplicate.stderr

    removed = sweep_cli(["remove", "c2"], workdir, **env)
    assert removed.returncode == 0, removed.stderr
    after = store_file.read_text()
    assert "hpc-launch schedule c2 " not in after and "hpc.slurm_schedules.fire c2 " not in after
    assert after.startswith(USER_CRONTAB)
    assert "added-by-the-user-meanwhile" in after
    for name in ("c1", "c3"):
        assert f"hpc-launch schedule {name} " in after
    # slurmctld comments out the line of a cron job that was scancel'd: list says so.
    lines = after.splitlines(keepends=True)
    i = next(n for n, ln in enumerate(lines) if "-m hpc.slurm_schedules.fire c1 " in ln)
    lines[i] = "#DISABLED: " + lines[i]
    store_file.write_text("".join(lines))
    problems = {s["name"]: s["problem"] for s in listing(workdir, **env)["schedules"]}
    assert "disabled" in problems["c1"] and problems["c3"] is None
    for name in ("c1", "c3"):
        assert sweep_cli(["remove", name], workdir, **env).returncode == 0
    assert store_file.read_text() == USER_CRONTAB + "30 6 * * 1 echo added-by-the-user-meanwhile\n"


def test_schedule_validates_a_users_project(workdir: Path) -> None:
    """Config flags travel with a schedule's overrides; a user project's bad choice is named."""
    (workdir / "conf" / "model").mkdir(parents=True)
    (workdir / "conf" / "config.yaml").write_text(
        "defaults: [{model: small}, _self_]\njob: {name: mine, entrypoint: train.py}\n"
    )
    (workdir / "conf" / "model" / "small.yaml").write_text("layers: 2\n")
    (workdir / "train.py").write_text("print('hi')\n")
    cases = [
        (["-cd", "conf", "cluster=slurm", "model=big,small"], "model: unknown choice 'big'"),
        (["-cd", "conf", "--frobnicate", "cluster=slurm"], "--frobnicate: give hpc-launch"),
        (["-cd", "nowhere", "cluster=slurm"], "-cd: config dir 'nowhere' does not exist"),
    ]
    for overrides, message in cases:
        args = ["schedule", "--cron", "0 3 * * *", "--name", "x", "--", *overrides]
        proc = sweep_cli(args, workdir)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1 and message in lines[0], proc.stderr
    assert listing(workdir)["schedules"] == []
