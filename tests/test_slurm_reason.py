"""Slurm's reason for an interruption, from sacct and scontrol output (issue 11, item 11).

The NODE_FAIL rows are real sacct output (tests/fixtures/sacct, see SOURCES.md);
the cluster tests are in test_interruption_slurm.py.
"""

from __future__ import annotations

from hpc.launchers.slurm.reason import (
    MANUAL_REQUEUE,
    parse_attempt_states,
    parse_scontrol_job,
    previous_attempt_state,
    reason_for,
)

from support import FIXTURES

HBJOBINFO = FIXTURES / "sacct" / "hbjobinfo_parsable_snowman-delim_gpu-tresusage_steps_arrays.txt"
STATE_COLUMN = 8  # JobID,JobName,User,Partition,NodeList,NNodes,NCPUs,NTasks,State,...


def job_rows(job_id: str) -> str:
    """The job-level rows of one job (as ``sacct -X`` prints them)."""
    lines = HBJOBINFO.read_text(encoding="utf-8").splitlines()
    return "\n".join(line for line in lines if line.split("☃")[0] == job_id)


def test_a_node_failure_in_real_sacct_output_is_node_fail() -> None:
    states = parse_attempt_states(job_rows("7336818"), sep="☃", column=STATE_COLUMN)
    assert states == ["NODE_FAIL"]
    assert reason_for(previous_attempt_state(states), recorded="preemption") == "node_fail"


def test_cancelled_by_uid_parses_to_its_state() -> None:
    states = parse_attempt_states(job_rows("4034541"), sep="☃", column=STATE_COLUMN)
    assert states == ["CANCELLED"]


def test_the_previous_attempt_is_the_last_ended_one() -> None:
    # sacct -D -X -P -o State on the test cluster (22.05) after a requeue and restart.
    assert previous_attempt_state(parse_attempt_states("REQUEUED\nRUNNING\n")) == "REQUEUED"
    assert previous_attempt_state(parse_attempt_states("NODE_FAIL\nREQUEUED\nPENDING\n")) == (
        "REQUEUED"
    )
    assert previous_attempt_state([]) is None


def test_a_requeue_is_the_batch_shells_reason_else_by_hand() -> None:
    assert reason_for("REQUEUED", recorded="time_limit") == "time_limit"
    assert reason_for("REQUEUED", recorded=None) == MANUAL_REQUEUE
    assert reason_for("PREEMPTED", recorded=None) == "preemption"
    assert reason_for("TIMEOUT", recorded="preemption") == "time_limit"
    assert reason_for(None, recorded="preemption") == "preemption"


def test_scontrol_fields() -> None:
    # The fields this project reads, in scontrol show job -o's Key=Value form.
    text = "JobId=3 JobName=he-trap2 JobState=COMPLETING Reason=None Dependency=(null) Restarts=1"
    fields = parse_scontrol_job(text)
    assert (fields["JobState"], fields["Restarts"], fields["Reason"]) == ("COMPLETING", "1", "None")
