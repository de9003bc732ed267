"""A researcher's own Hydra project, in a temporary directory, through the public CLI.

Composition with the user's groups and free keys, Hydra's flags, search path entries,
the user's structured config, profiles (user, site, project, package) with their
precedence, ``hpc config``'s origins, bad input (exit 2, one line naming the key), a
local 2-rank run, and Slurm dry runs (one job, a sweep over a user group as one array).
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import yaml

from slurm_helpers import require_cluster, wait_for_job
from support import hpc, hpc_launch


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))


TRAIN = """\
import json, os, sys
cfg_file = os.environ["HPC_CONFIG_FILE"]
import yaml
cfg = yaml.safe_load(open(cfg_file))
rank = os.environ.get("RANK")
out = os.path.join(os.path.dirname(cfg_file), f"seen-{rank}.json")
json.dump({"model": cfg["model"], "data": cfg["data"], "rank": rank,
           "world": os.environ.get("WORLD_SIZE"), "argv": sys.argv[1:],
           "node": os.environ.get("SLURMD_NODENAME")}, open(out, "w"))
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """conf/config.yaml with groups model/ and optim/, a data section, and train.py."""
    write(
        tmp_path / "conf/config.yaml",
        """\
        defaults:
          - model: small
          - optim: sgd
          - _self_
        job:
          name: myproj
          entrypoint: train.py
        data:
          seq_len: 128
          tokens: ${data.seq_len}
        """,
    )
    write(tmp_path / "conf/model/small.yaml", "layers: 2\nhidden: 64\n")
    write(tmp_path / "conf/model/large.yaml", "layers: 12\nhidden: 512\n")
    write(tmp_path / "conf/optim/sgd.yaml", "lr: 0.1\n")
    write(tmp_path / "conf/optim/adam.yaml", "lr: 0.001\nbetas: [0.9, 0.999]\n")
    write(tmp_path / "train.py", TRAIN)
    (tmp_path / "xdg" / "home").mkdir(parents=True)
    (tmp_path / "xdg" / "dirs").mkdir(parents=True)
    (tmp_path / "xdg" / "etc").mkdir(parents=True)
    return tmp_path


def env_of(project: Path) -> dict[str, str]:
    return {
        "XDG_CONFIG_HOME": str(project / "xdg" / "home"),
        "XDG_CONFIG_DIRS": str(project / "xdg" / "dirs"),
        "HPC_LAUNCH_SITE_DIR": str(project / "xdg" / "etc"),
        "HPC_LAUNCH_CONFIG_PATH": "",
    }


def resolved(project: Path, *args: str) -> dict:
    proc = hpc_launch(["--cfg", *args], project, **env_of(project))
    assert proc.returncode == 0, proc.stderr
    return yaml.safe_load(proc.stdout)


def refused(project: Path, *args: str) -> str:
    proc = hpc_launch(["dry_run=true", *args], project, **env_of(project))
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert not (project / "outputs").exists()  # nothing planned, nothing written
    return lines[0]


def test_user_groups_and_free_keys_compose(project: Path) -> None:
    cfg = resolved(project, "--config-dir", "conf", "model=large", "data.seq_len=256")
    assert cfg["model"] == {"layers": 12, "hidden": 512}
    assert cfg["data"] == {"seq_len": 256, "tokens": 256}  # interpolation resolved
    assert cfg["optim"] == {"lr": 0.1}
    assert cfg["job"]["name"] == "myproj"
    # the framework's sections are all there, with their defaults
    assert cfg["resources"]["nodes"] == 1 and cfg["cluster"]["kind"] == "local"
    for section in ("tracking", "checkpoint", "preemption", "placement", "nccl", "accounting"):
        assert section in cfg
    # the same with Hydra's other spellings
    assert resolved(project, "-cd", "conf", "model=large")["model"]["layers"] == 12
    assert resolved(project, "--config-dir=conf", "+job.model.layers=3")["job"]["model"] == {
        "layers": 3
    }
    assert resolved(project, "-cp", str(project / "conf"), "-cn", "config")["optim"]["lr"] == 0.1


def test_framework_choices_in_the_users_defaults_list(project: Path) -> None:
    write(
        project / "conf/slurmy.yaml",
        """\
        defaults:
          - model: small
          - cluster: slurm
          - _self_
        job: {name: slurmy, entrypoint: train.py}
        resources: {nodes: 2, partition: long}
        """,
    )
    cfg = resolved(project, "-cd", "conf", "-cn", "slurmy")
    assert cfg["cluster"]["kind"] == "slurm"
    assert cfg["resources"]["nodes"] == 2 and cfg["resources"]["partition"] == "long"
    # the command line still wins over the user's config
    assert (
        resolved(project, "-cd", "conf", "-cn", "slurmy", "resources.nodes=1")["resources"]["nodes"]
        == 1
    )


def test_bad_framework_values_and_user_choices_are_named(project: Path) -> None:
    assert refused(project, "-cd", "conf", "resources.nodes=0").startswith(
        "hpc-launch: error: resources.nodes: must be >= 1"
    )
    line = refused(project, "-cd", "conf", "resources.nodez=1")
    assert "resources.nodez" in line
    line = refused(project, "-cd", "conf", "model=larg")
    assert line == "hpc-launch: error: model: unknown choice 'larg' (one of large, small)"
    line = refused(project, "-cd", "conf", "dry_run=maybe")
    assert line.startswith("hpc-launch: error: dry_run:")
    line = refused(project, "-cd", "conf", "data.nosuch=1")
    assert "data.nosuch" in line and "+data.nosuch" in line  # a new key needs +
    line = refused(project, "-cd", str(project / "nowhere"))
    assert line == f"hpc-launch: error: -cd: config dir {str(project / 'nowhere')!r} does not exist"
    line = refused(project, "-cd", "conf", "-cn", "nosuch")
    assert line.startswith("hpc-launch: error: --config-name: nosuch.yaml not found in")
    write(project / "conf/broken.yaml", "job: [unclosed\n")
    line = refused(project, "-cd", "conf", "-cn", "broken")
    assert f"{project / 'conf' / 'broken.yaml'}: not a YAML config" in line


SCHEMA = """\
from dataclasses import dataclass
from hydra.core.config_store import ConfigStore

@dataclass
class ModelSchema:
    layers: int = 2
    hidden: int = 64

ConfigStore.instance().store(group="model", name="schema", node=ModelSchema)
"""


def test_users_structured_config_checks_their_keys(project: Path) -> None:
    write(project / "myproj_schema/__init__.py", SCHEMA)
    write(project / "conf/model/small.yaml", "defaults: [schema, _self_]\nlayers: 2\n")
    text = (project / "conf/config.yaml").read_text()
    (project / "conf/config.yaml").write_text(
        text.replace(
            "  entrypoint: train.py\n", "  entrypoint: train.py\n  schema: myproj_schema\n"
        )
    )
    assert resolved(project, "-cd", "conf", "model.layers=4")["model"] == {
        "layers": 4,
        "hidden": 64,
    }
    line = refused(project, "-cd", "conf", "model.layers=many")
    assert line.startswith("hpc-launch: error: model.layers: Value 'many'")
    line = refused(project, "-cd", "conf", "+model.depth=3")
    assert line == "hpc-launch: error: model.depth: unknown key (allowed here: hidden, layers)"
    line = refused(project, "-cd", "conf", "job.schema=no_such_module")
    assert line.startswith("hpc-launch: error: job.schema: cannot import 'no_such_module'")


def test_structured_primary_config_from_the_users_module(project: Path) -> None:
    write(
        project / "myproj_primary.py",
        """\
        from dataclasses import dataclass, field
        from hydra.core.config_store import ConfigStore

        @dataclass
        class Job:
            name: str = "typed"
            entrypoint: str = "train.py"

        @dataclass
        class Primary:
            job: Job = field(default_factory=Job)
            steps: int = 10

        ConfigStore.instance().store(name="typed_primary", node=Primary)
        """,
    )
    args = ["-cn", "typed_primary", "job.schema=myproj_primary"]
    cfg = resolved(project, *args, "steps=20", "resources.tasks_per_node=3")
    assert cfg["steps"] == 20 and cfg["job"]["name"] == "typed"
    assert cfg["resources"]["tasks_per_node"] == 3 and cfg["cluster"]["kind"] == "local"
    assert refused(project, *args, "steps=lots").startswith("hpc-launch: error: steps: Value")


def test_users_job_schema_brings_its_value_rules(project: Path) -> None:
    write(
        project / "myproj_job.py",
        """\
        from dataclasses import dataclass
        from hydra.core.config_store import ConfigStore
        from hpc.spec.errors import ConfigError
        from hpc.spec.schema import JobConfig

        @dataclass
        class TrainJob(JobConfig):
            name: str = "typedjob"
            entrypoint: str = "train.py"
            warmup: int = 10

            @classmethod
            def check(cls, job):
                if job["warmup"] < 0:
                    raise ConfigError("job.warmup", f"must be >= 0, got {job['warmup']}")

        ConfigStore.instance().store(group="job", name="train", node=TrainJob)
        """,
    )
    write(project / "conf/typedjob.yaml", "defaults: [{job: train}, {model: small}, _self_]\n")
    args = ["-cd", "conf", "-cn", "typedjob", "job.schema=myproj_job"]
    assert resolved(project, *args, "job.warmup=5")["job"]["warmup"] == 5
    line = refused(project, *args, "job.warmup=-1")
    assert line == "hpc-launch: error: job.warmup: must be >= 0, got -1"
    assert "job.warmupp" in refused(project, *args, "+job.warmupp=1")


def test_searchpath_in_the_users_config(project: Path) -> None:
    write(project / "shared/optim/lamb.yaml", "lr: 0.01\n")
    primary = project / "conf/config.yaml"
    write(primary, primary.read_text() + f"hydra:\n  searchpath: [file://{project / 'shared'}]\n")
    cfg = resolved(project, "-cd", "conf", "optim=lamb")
    assert cfg["optim"] == {"lr": 0.01} and "hydra" not in cfg


def test_search_path_entries_and_team_path(project: Path) -> None:
    write(project / "shared/optim/lamb.yaml", "lr: 0.01\n")
    write(project / "team/model/huge.yaml", "layers: 96\nhidden: 12288\n")
    cfg = resolved(project, "-cd", "conf", f"hydra.searchpath=[{project / 'shared'}]", "optim=lamb")
    assert cfg["optim"] == {"lr": 0.01}
    env = {**env_of(project), "HPC_LAUNCH_CONFIG_PATH": str(project / "team")}
    proc = hpc_launch(["--cfg", "-cd", "conf", "model=huge"], project, **env)
    assert proc.returncode == 0, proc.stderr
    assert yaml.safe_load(proc.stdout)["model"]["layers"] == 96
    # the project's own options win over the team's
    write(project / "team/model/small.yaml", "layers: 1000\nhidden: 1\n")
    proc = hpc_launch(["--cfg", "-cd", "conf"], project, **env)
    assert yaml.safe_load(proc.stdout)["model"]["layers"] == 2


PROFILE = """\
# @package _global_
defaults:
  - /cluster/slurm@cluster
  - _self_
cluster:
  setup: ["module load cuda/12.4"]
  python: {python}
  sbatch_args: ["--exclusive"]
resources:
  partition: {partition}
  account: proj1
nccl:
  profile: infiniband
"""


def test_profiles_precedence_user_site_project_package(project: Path) -> None:
    home, site = project / "xdg" / "home" / "hpc-launch", project / "xdg" / "etc"
    write(site / "cluster/mysite.yaml", PROFILE.format(python="/site/python", partition="site"))
    write(
        site / "resources/8xh100.yaml",
        "defaults: [default, _self_]\ngpus_per_node: 8\ntasks_per_node: 8\n",
    )
    cfg = resolved(project, "-cd", "conf", "cluster=mysite", "resources=8xh100")
    assert cfg["cluster"]["kind"] == "slurm"
    assert cfg["cluster"]["python"] == "/site/python"
    assert cfg["cluster"]["setup"] == ["module load cuda/12.4"]
    assert cfg["resources"]["partition"] == "site" and cfg["resources"]["gpus_per_node"] == 8
    assert cfg["nccl"]["profile"] == "infiniband"
    # the project's dir beside the site's: the site wins (profiles first, then the project)
    write(project / "conf/cluster/mysite.yaml", PROFILE.format(python="/p", partition="project"))
    assert resolved(project, "-cd", "conf", "cluster=mysite")["resources"]["partition"] == "site"
    # the user's own profile wins over the site's
    write(home / "cluster/mysite.yaml", PROFILE.format(python="/me", partition="mine"))
    cfg = resolved(project, "-cd", "conf", "cluster=mysite")
    assert cfg["resources"]["partition"] == "mine" and cfg["cluster"]["python"] == "/me"
    # a profile that shadows a package option: cluster=slurm from the user's dir
    write(home / "cluster/slurm.yaml", "defaults: [/schema/cluster/slurm@_here_]\npython: /u\n")
    assert resolved(project, "-cd", "conf", "cluster=slurm")["cluster"]["python"] == "/u"
    # and the user's config and the command line win over any profile
    assert (
        resolved(project, "-cd", "conf", "cluster=mysite", "resources.partition=cli")["resources"][
            "partition"
        ]
        == "cli"
    )
    # a profile dir never supplies the primary config
    write(home / "config.yaml", "job: {name: hijack, entrypoint: train.py}\n")
    assert resolved(project, "-cd", "conf")["job"]["name"] == "myproj"


def test_hpc_config_shows_search_path_and_origins(project: Path) -> None:
    site = project / "xdg" / "etc"
    write(site / "cluster/mysite.yaml", PROFILE.format(python="/site/python", partition="gpu"))
    proc = hpc(
        ["config", "-cd", "conf", "cluster=mysite", "preemption.lead_s=60"],
        project,
        **env_of(project),
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert f"file://{project / 'xdg' / 'home' / 'hpc-launch'}   (missing)" in out
    assert f"file://{site}\n" in out and f"file://{project / 'conf'}\n" in out
    assert "pkg://hpc.configs" in out
    assert f"primary config: {project / 'conf' / 'config.yaml'}" in out

    def origin(key: str) -> str:
        (line,) = [ln for ln in out.splitlines() if ln.strip().startswith(f"{key} ")]
        return line.split("# ", 1)[1]

    assert origin("resources.partition") == f"cluster/mysite.yaml ({site})"
    assert origin("preemption.lead_s") == "command line (preemption.lead_s=60)"
    assert origin("tracking.experiment") == "framework default"
    write(
        project / "conf/config.yaml",
        (project / "conf/config.yaml").read_text() + "resources:\n  nodes: 2\n",
    )
    proc = hpc(["config", "-cd", "conf"], project, **env_of(project))
    assert "# " + str(project / "conf" / "config.yaml") in proc.stdout
    bad = hpc(["config", "-cd", "conf", "resources.nodez=1"], project, **env_of(project))
    assert bad.returncode == 2 and "resources.nodez" in bad.stderr


def test_dry_run_shows_the_composed_user_config(project: Path) -> None:
    proc = hpc_launch(
        ["-cd", "conf", "cluster=slurm", "model=large", "dry_run=true"], project, **env_of(project)
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("#!/bin/bash")
    assert "#SBATCH --signal=" in proc.stdout and "#SBATCH --requeue" in proc.stdout
    assert "  model:\n    layers: 12\n    hidden: 512" in proc.stderr
    assert "  data:\n    seq_len: 128" in proc.stderr


def test_local_two_rank_run_of_a_user_script(project: Path) -> None:
    proc = hpc_launch(
        ["-cd", "conf", "model=large", "tracking.enabled=false"],
        project,
        timeout=240,
        **env_of(project),
    )
    assert proc.returncode == 0, proc.stderr
    (run_dir,) = (project / "outputs" / "myproj").iterdir()
    seen = [json.loads((run_dir / f"seen-{r}.json").read_text()) for r in (0, 1)]
    assert [s["rank"] for s in seen] == ["0", "1"] and {s["world"] for s in seen} == {"2"}
    assert all(s["model"] == {"layers": 12, "hidden": 512} for s in seen)
    assert seen[0]["data"] == {"seq_len": 128, "tokens": 128}


def test_sweep_over_a_user_group_is_one_slurm_array(project: Path) -> None:
    proc = hpc_launch(
        [
            "-cd",
            "conf",
            "-m",
            "model=small,large",
            "optim=sgd,adam",
            "cluster=slurm",
            "dry_run=true",
        ],
        project,
        **env_of(project),
    )
    assert proc.returncode == 0, proc.stderr
    submits = [ln for ln in proc.stdout.splitlines() if ln.startswith("# sbatch --array=")]
    assert submits == ["# sbatch --array=0-3 sweep-0.sbatch 0"], proc.stdout


@pytest.mark.slurm
def test_two_node_slurm_run_of_a_user_script(project: Path) -> None:
    require_cluster(min_nodes=2)
    args = ["-cd", "conf", "cluster=slurm", "job.name=hpcU-two-node", "model=large"]
    args += ["resources.nodes=2", "resources.tasks_per_node=1", "tracking.enabled=false"]
    proc = hpc_launch([*args, "wait=true"], project, timeout=600, **env_of(project))
    assert proc.returncode == 0, proc.stderr
    (run_dir,) = (project / "outputs" / "hpcU-two-node").iterdir()
    seen = [json.loads((run_dir / f"seen-{r}.json").read_text()) for r in (0, 1)]
    assert [(s["rank"], s["world"], s["node"]) for s in seen] == [
        ("0", "2", "n1"),
        ("1", "2", "n2"),
    ]
    assert all(s["model"] == {"layers": 12, "hidden": 512} for s in seen)
    assert json.loads((run_dir / "job.json").read_text())["state"] == "COMPLETED"


@pytest.mark.slurm
def test_sweep_over_a_user_group_runs_as_one_slurm_array(project: Path) -> None:
    require_cluster()
    args = ["-cd", "conf", "-m", "model=small,large", "data.seq_len=64,256", "cluster=slurm"]
    args += ["job.name=hpcU-sweep", "resources.tasks_per_node=1", "tracking.enabled=false"]
    proc = hpc_launch(args, project, **env_of(project))
    assert proc.returncode == 0, proc.stderr
    array_id = proc.stdout.strip()
    assert array_id.isdigit(), f"one array id expected, got {proc.stdout!r}"
    sweep_file = next((project / "outputs" / "hpcU-sweep").glob("sweep-*/sweep.json"))
    sweep = json.loads(sweep_file.read_text())
    assert sweep["config_source"]["config_dirs"] == [str(project / "conf")]
    for index in range(4):
        assert wait_for_job(f"{array_id}_{index}", timeout=600) == "COMPLETED"
    seen = {
        (s["model"]["layers"], s["data"]["seq_len"])
        for t in sweep["tasks"]
        for s in [json.loads((Path(t["run_dir"]) / "seen-0.json").read_text())]
    }
    assert seen == {(2, 64), (2, 256), (12, 64), (12, 256)}
