"""The fenced composition (Hydra internals, no ``hydra:`` node) equals Hydra's public API.

For every option of every shipped config group, with a set of overrides, the
fast path and ``hydra.compose`` give the same config (values and the structured
types behind each node); with the internals made unavailable, composition falls
back to the public API and still validates.
"""

from __future__ import annotations

import copy
from importlib import resources
from typing import Any

import pytest
from omegaconf import DictConfig, OmegaConf

from hpc.spec import compose as config
from hpc.spec import hydra_internals
from hpc.spec.errors import ConfigError
from hpc.spec.schema import register_configs


def shipped_options() -> list[str]:
    root = resources.files(config.CONFIG_MODULE)
    found = []
    for group in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("_")):
        for option in sorted(group.iterdir()):
            if option.name.endswith(".yaml"):
                found.append(f"{group.name}={option.name.removesuffix('.yaml')}")
    return found


EXTRA_OVERRIDES = [
    [],
    ["job.epochs=3", "resources.nodes=2", "resources.tasks_per_node=4"],
    ["+nccl.env.NCCL_IB_TIMEOUT=22", "checkpoint.every_steps=7", "tracking.enabled=false"],
    ["resources.mem=16G", "resources.time=01:00:00", "dry_run=true"],
]


def shape(node: Any) -> Any:
    """Values plus the structured-config type of every dict node."""
    if isinstance(node, DictConfig):
        kind = OmegaConf.get_type(node)
        return {
            "__type__": getattr(kind, "__qualname__", str(kind)),
            **{str(k): shape(node._get_node(k)) for k in node},
        }
    if OmegaConf.is_list(node):
        return [shape(v) for v in node]
    return OmegaConf.to_container(OmegaConf.create({"v": node}))["v"]


def test_every_group_option_is_found() -> None:
    options = shipped_options()
    assert {"cluster=slurm", "cluster=k8s", "nccl=infiniband", "job=digits"} <= set(options)


@pytest.mark.parametrize("extra", EXTRA_OVERRIDES, ids=lambda e: ",".join(e) or "none")
@pytest.mark.parametrize("option", shipped_options())
def test_fast_composition_equals_public_compose(option: str, extra: list[str]) -> None:
    register_configs()
    path, root, overrides = config.composition_inputs([option, *extra])
    fast = hydra_internals.compose(path, root, overrides)
    public = hydra_internals.compose_public(path, root, overrides)
    assert "hydra" not in fast and "hydra" not in public
    assert shape(fast) == shape(public)
    assert OmegaConf.is_struct(fast) and OmegaConf.is_struct(public)


OVERRIDE_SETS = [
    ["job.lr=0.5"],
    ["+nccl.env.NCCL_DEBUG=WARN"],
    ["++checkpoint.keep=5"],
    ["+nccl.env.X=1", "~nccl.env.X"],
    ["resources.partition=gpu", "+cluster.extra=1"],
]


@pytest.mark.parametrize("overrides", OVERRIDE_SETS, ids=lambda o: ",".join(o))
def test_apply_overrides_fallback_equals_internals(
    overrides: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    register_configs()
    base = hydra_internals.compose(*config.composition_inputs(["cluster=slurm"]))
    with_internals = copy.deepcopy(base)
    hydra_internals.apply_overrides(with_internals, overrides)
    monkeypatch.setattr(hydra_internals, "_internals", lambda: None)
    with_public = copy.deepcopy(base)
    hydra_internals.apply_overrides(with_public, overrides)
    assert shape(with_public) == shape(with_internals)


def test_fallback_composes_and_validates_without_internals(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fast = config.to_container(config.compose(["cluster=slurm", "job.epochs=2"]))
    monkeypatch.setattr(hydra_internals, "_internals", lambda: None)
    assert not hydra_internals.internals_available()
    slow = config.to_container(config.compose(["cluster=slurm", "job.epochs=2"]))
    assert slow == fast
    with pytest.raises(ConfigError) as err:
        config.compose(["job.epochz=2"])
    assert "job.epochz" in str(err.value)
    with pytest.raises(ConfigError) as err:
        config.compose(["cluster=nosuch"])
    assert str(err.value).startswith("cluster: unknown choice 'nosuch'")


def test_public_fallback_keeps_an_initialised_hydra(monkeypatch: pytest.MonkeyPatch) -> None:
    """Inside a Hydra app (the plugin's route), the app's GlobalHydra survives a fallback."""
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from hydra.version import VersionBase

    # initialize_config_module itself sets the process's version base: put it back after
    monkeypatch.setattr(VersionBase.instance(), "version_base", VersionBase.instance().getbase())
    monkeypatch.setattr(hydra_internals, "_internals", lambda: None)
    with initialize_config_module(
        config_module=config.CONFIG_MODULE, **hydra_internals.version_base()
    ):
        config.compose(["job.epochs=2"])
        assert GlobalHydra.instance().is_initialized()
    assert not GlobalHydra.instance().is_initialized()
    # Nor does a fallback change the process's version base (an app's hydra.job.chdir
    # default follows it: a launcher's sweep would run in the wrong directory).
    before = VersionBase.instance().getbase()
    config.compose(["job.epochs=2"])
    assert VersionBase.instance().getbase() == before


def test_hydra_overrides_are_refused_on_both_paths(monkeypatch: pytest.MonkeyPatch) -> None:
    for internals in (True, False):
        if not internals:
            monkeypatch.setattr(hydra_internals, "_internals", lambda: None)
        with pytest.raises(ConfigError, match=r"^hydra\.run\.dir: hydra\.\* settings"):
            config.compose(["hydra.run.dir=/tmp/x"])
