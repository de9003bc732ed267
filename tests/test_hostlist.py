"""Hostlist expansion against public test vectors (Slurm, LLNL lineage, python-hostlist)."""

from __future__ import annotations

import json

import pytest

from hpc.hostlist import HostlistError, collect, expand, first_host

from support import FIXTURES

CASES = json.loads((FIXTURES / "hostlist" / "expand_cases_combined.json").read_text())["cases"]
# python-hostlist's own vectors assume its dedup/sort defaults; we follow Slurm, so use
# only those of them whose caveat does not say the result differs from Slurm.
SLURM_LIKE = [c for c in CASES if c["semantics"] != "python-hostlist" or "caveat" not in c]


@pytest.mark.parametrize("case", SLURM_LIKE, ids=[c["input"][:40] for c in SLURM_LIKE])
def test_vectors(case: dict) -> None:
    if "expect_error" in case:
        with pytest.raises(HostlistError):
            expand(case["input"])
        return
    hosts = expand(case["input"])
    if "expected_count" in case:
        assert len(hosts) == case["expected_count"]
    elif case.get("ordered"):
        assert hosts == case["expected"]
    else:
        assert sorted(hosts) == sorted(case["expected"])


def test_three_groups_follow_libslurm_order() -> None:
    # Order from src/common/hostlist.c::_push_range_list, as test2.20 lists it.
    assert expand("row[0,1]_rack[2-3]_blade[4,5]") == [
        "row0_rack2_blade4",
        "row0_rack2_blade5",
        "row1_rack2_blade4",
        "row1_rack2_blade5",
        "row0_rack3_blade4",
        "row0_rack3_blade5",
        "row1_rack3_blade4",
        "row1_rack3_blade5",
    ]


def test_slurm_specifics() -> None:
    assert expand("n1,n3,n1") == ["n1", "n3", "n1"]  # duplicates kept, order kept
    assert len(expand("n[1-5,3-8]")) == 11
    assert expand("gpu[08-11]-ib,cpu7") == ["gpu08-ib", "gpu09-ib", "gpu10-ib", "gpu11-ib", "cpu7"]
    assert first_host("n[2,1]") == "n2"
    assert collect(["n1", "n2", "n3"]) == "n[1-3]"
    for bad in ("n[3-1]", "n[1-2", "n]1["):
        with pytest.raises(HostlistError):
            expand(bad)
