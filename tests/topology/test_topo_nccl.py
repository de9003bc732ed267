"""NCCL profiles. Golden files: tests/golden/nccl/<profile>.env.

Regenerate after an intended change with ``UPDATE_GOLDEN=1 pytest tests/topology`` and
review the diff.
"""

from __future__ import annotations

import warnings

import pytest

from hpc.nccl import (
    KNOWN_NCCL_VARS,
    PROFILES,
    UnknownNcclVariableWarning,
    format_env,
    nccl_env,
)

HCAS = ["mlx5_0", "mlx5_1"]


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_profile_golden(profile: str, golden) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # profiles use only known NCCL names
        env = nccl_env(profile, HCAS, {}, {})
    golden(f"nccl/{profile}.env", format_env(env))
    assert env["TORCH_NCCL_ASYNC_ERROR_HANDLING"] == "1"
    assert all(k in KNOWN_NCCL_VARS for k in env if k.startswith("NCCL_"))


def test_default_forces_nothing_else() -> None:
    assert nccl_env("default", HCAS, {}, {}) == {"TORCH_NCCL_ASYNC_ERROR_HANDLING": "1"}


def test_hca_exact_match_form_where_it_applies() -> None:
    for name, prof in PROFILES.items():
        env = nccl_env(name, ["mlx5_0", "mlx5_1"], {}, {})
        assert ("NCCL_IB_HCA" in env) == prof.set_ib_hca
        if prof.set_ib_hca:
            assert env["NCCL_IB_HCA"] == "=mlx5_0,mlx5_1"
    assert "NCCL_IB_HCA" not in nccl_env("infiniband", [], {}, {})


def test_profile_specific_choices() -> None:
    assert nccl_env("tcp-only", [], {}, {})["NCCL_IB_DISABLE"] == "1"
    assert nccl_env("roce", HCAS, {}, {})["NCCL_IB_GID_INDEX"] == "3"
    efa = nccl_env("aws-efa", HCAS, {}, {})
    assert efa["FI_PROVIDER"] == "efa" and efa["NCCL_PROTO"] == "simple"
    azure = nccl_env("azure-ndv5", HCAS, {}, {})
    assert azure["NCCL_IB_TIMEOUT"] == "22" and azure["NCCL_TOPO_FILE"].endswith(".xml")
    debug = nccl_env("debug", HCAS, {}, {})
    assert debug["NCCL_DEBUG"] == "INFO" and debug["NCCL_DEBUG_SUBSYS"]


def test_user_env_wins_and_overrides_apply() -> None:
    user = {"NCCL_IB_HCA": "=mlx5_4", "NCCL_SOCKET_IFNAME": "ens", "PATH": "/bin"}
    env = nccl_env("infiniband", HCAS, {"NCCL_IB_TIMEOUT": "20", "NCCL_NET_GDR_LEVEL": "PHB"}, user)
    assert "NCCL_IB_HCA" not in env and "NCCL_SOCKET_IFNAME" not in env
    assert env["NCCL_IB_TIMEOUT"] == "20" and env["NCCL_NET_GDR_LEVEL"] == "PHB"
    # The user's environment also beats overrides.
    env = nccl_env("default", [], {"CUDA_DEVICE_MAX_CONNECTIONS": "1"}, {})
    assert env["CUDA_DEVICE_MAX_CONNECTIONS"] == "1"
    env = nccl_env("default", [], {"CUDA_DEVICE_MAX_CONNECTIONS": "1"},
                   {"CUDA_DEVICE_MAX_CONNECTIONS": "8"})  # fmt: skip
    assert "CUDA_DEVICE_MAX_CONNECTIONS" not in env


def test_unknown_nccl_variable_warns() -> None:
    with pytest.warns(UnknownNcclVariableWarning, match="NCCL_IB_HCAS in overrides"):
        env = nccl_env("default", [], {"NCCL_IB_HCAS": "mlx5_0"}, {})
    assert env["NCCL_IB_HCAS"] == "mlx5_0"  # still passed through
    with pytest.warns(UnknownNcclVariableWarning, match="NCCL_DEBUGG in the environment"):
        nccl_env("default", [], {}, {"NCCL_DEBUGG": "INFO"})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        nccl_env("default", [], {"NCCL_ALGO": "Ring"}, {"NCCL_DEBUG": "WARN", "FOO_BAR": "1"})


def test_unknown_profile() -> None:
    with pytest.raises(ValueError, match=r"unknown NCCL profile 'ib'; valid profiles: default, "):
        nccl_env("ib", [], {}, {})
    with pytest.raises(ValueError, match="tcp-only"):
        nccl_env("ib", [], {}, {})
