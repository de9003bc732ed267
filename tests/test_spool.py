"""Unit tests of the durable metric spool (hpc.runtime.spool.MetricSpool)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from hpc.runtime.spool import OFFSET, SPOOL, MetricSpool


def metric(step: int, value: float | None = None, key: str = "loss") -> dict[str, Any]:
    return {
        "k": "m",
        "key": key,
        "v": float(step if value is None else value),
        "ts": step,
        "s": step,
    }


def param(key: str, value: str = "x") -> dict[str, Any]:
    return {"k": "p", "key": key, "v": value}


def tag(key: str, value: str = "x") -> dict[str, Any]:
    return {"k": "t", "key": key, "v": value}


def sendable(spool: MetricSpool, final: bool = False) -> list[dict[str, Any]]:
    return [record for _, record in spool.pending(final=final)]


def no_commits(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in records if r["k"] != "c"]


def send_all(spool: MetricSpool, final: bool = False) -> list[dict[str, Any]]:
    """What a sender does: take the sendable records, then advance the sent offset."""
    batch = list(spool.pending(final=final))
    if batch:
        spool.set_sent_offset(batch[-1][0])
    return [record for _, record in batch]


@pytest.fixture
def spool(tmp_path: Path) -> MetricSpool:
    s = MetricSpool(tmp_path / "tracking")
    yield s
    if not s._fh.closed:
        s.close()


def test_order_is_kept_across_appends(spool: MetricSpool) -> None:
    records = [param("job.lr", "0.1"), tag("host", "n1")]
    records += [metric(step) for step in range(1, 201)]
    records += [metric(200, 0.9, key="accuracy"), tag("late")]
    for i in range(0, len(records), 7):  # many appends of a few records each
        spool.append(records[i : i + 7])
    spool.commit(200)
    got = sendable(spool)
    assert no_commits(got) == records
    assert got[-1] == {"k": "c", "s": 200}
    ends = [end for end, _ in spool.pending()]
    assert ends == sorted(ends) and ends[-1] == spool.path.stat().st_size


def test_empty_append_writes_nothing(spool: MetricSpool) -> None:
    spool.append([])
    assert spool.path.stat().st_size == 0
    assert sendable(spool, final=True) == []


def test_uncommitted_metrics_are_not_sendable(spool: MetricSpool) -> None:
    spool.append([metric(1), metric(2)])
    assert sendable(spool) == []
    assert no_commits(sendable(spool, final=True)) == [metric(1), metric(2)]
    spool.commit(2)
    spool.append([metric(3)])
    assert no_commits(sendable(spool)) == [metric(1), metric(2)]
    assert no_commits(sendable(spool, final=True)) == [metric(1), metric(2), metric(3)]


def test_params_and_tags_before_the_first_uncommitted_metric_are_sendable(
    spool: MetricSpool,
) -> None:
    spool.append([param("a"), tag("b")])
    assert sendable(spool) == [param("a"), tag("b")]  # no commit yet: still sendable
    spool.append([metric(1), tag("after-metric")])
    assert sendable(spool) == [param("a"), tag("b")]  # the tag waits behind the metric
    spool.commit(1)
    spool.append([tag("c"), param("d"), metric(2), tag("e")])
    assert sendable(spool) == [
        param("a"),
        tag("b"),
        metric(1),
        tag("after-metric"),
        {"k": "c", "s": 1},
        tag("c"),
        param("d"),
    ]
    assert no_commits(sendable(spool, final=True))[-2:] == [metric(2), tag("e")]


def test_sending_in_rounds_sends_each_record_once(spool: MetricSpool) -> None:
    sent: list[dict[str, Any]] = []
    expected: list[dict[str, Any]] = [param("p")]
    spool.append([param("p")])
    for step in range(1, 101):
        spool.append([metric(step)])
        expected.append(metric(step))
        if step % 10 == 0:
            spool.commit(step)
        if step % 7 == 0:
            sent += send_all(spool)
    sent += send_all(spool, final=True)
    assert no_commits(sent) == expected
    assert send_all(spool, final=True) == []


def test_rewind_drops_uncommitted_metrics_past_the_step_and_keeps_the_rest(
    spool: MetricSpool,
) -> None:
    spool.append([param("p"), metric(1), metric(2)])
    spool.commit(2)
    spool.append([metric(3), tag("t"), metric(4), metric(5), param("q")])
    # The job resumes from the checkpoint at step 3: 4 and 5 will be produced again.
    assert spool.rewind(3) == 2
    assert no_commits(sendable(spool)) == [
        param("p"),
        metric(1),
        metric(2),
        metric(3),
        tag("t"),
        param("q"),
    ]
    assert sendable(spool)[-1] == {"k": "c", "s": 3}  # the resume step is committed
    spool.append([metric(4, 40.0), metric(5, 50.0)])
    spool.commit(5)
    steps = [r["s"] for r in sendable(spool) if r["k"] == "m"]
    assert steps == [1, 2, 3, 4, 5]
    assert [r["v"] for r in sendable(spool) if r["k"] == "m"][-2:] == [40.0, 50.0]


def test_rewind_with_nothing_to_drop_and_on_an_empty_spool(spool: MetricSpool) -> None:
    assert spool.rewind(0) == 0
    assert sendable(spool) == [{"k": "c", "s": 0}]
    spool.append([metric(1)])
    spool.commit(1)
    assert spool.rewind(1) == 0
    assert no_commits(sendable(spool)) == [metric(1)]


def test_rewind_keeps_the_sent_offset_valid(spool: MetricSpool) -> None:
    spool.append([param("p"), metric(1), metric(2)])
    spool.commit(2)
    spool.append([tag("t")])
    sent = send_all(spool)  # everything committed plus the tag after the commit
    assert no_commits(sent) == [param("p"), metric(1), metric(2), tag("t")]
    spool.append([metric(3), metric(4)])
    assert spool.rewind(2) == 2
    spool.append([metric(3, 30.0)])
    spool.commit(3)
    assert no_commits(send_all(spool)) == [metric(3, 30.0)]  # nothing re-sent, nothing lost


def test_rewind_then_reopen_keeps_appending(tmp_path: Path) -> None:
    s = MetricSpool(tmp_path)
    s.append([metric(1), metric(2)])
    s.commit(1)
    s.close()
    s = MetricSpool(tmp_path)
    assert s.rewind(1) == 1
    s.append([metric(2, 20.0)])
    s.commit(2)
    s.close()
    s = MetricSpool(tmp_path)
    assert [r["v"] for r in sendable(s) if r["k"] == "m"] == [1.0, 20.0]
    s.close()


def torn_spool(directory: Path) -> None:
    """A spool whose last line was cut off by a crash in the middle of a write."""
    s = MetricSpool(directory)
    s.append([param("p"), metric(1)])
    s.commit(1)
    s.append([metric(2)])
    s.close()
    with open(directory / SPOOL, "a", encoding="utf-8") as fh:
        fh.write('{"k":"m","key":"loss","v":3.0,"ts"')  # no newline: the crash


def test_a_torn_last_line_is_ignored(tmp_path: Path) -> None:
    torn_spool(tmp_path)
    s = MetricSpool(tmp_path)
    assert no_commits(sendable(s, final=True)) == [param("p"), metric(1), metric(2)]
    assert no_commits(sendable(s)) == [param("p"), metric(1)]
    assert s.rewind(1) in (1, 2)  # metric 2 (past the checkpoint) [+ the torn line]
    assert no_commits(sendable(s, final=True)) == [param("p"), metric(1)]
    s.append([metric(2, 22.0)])
    s.commit(2)
    assert no_commits(sendable(s)) == [param("p"), metric(1), metric(2, 22.0)]
    s.close()


def test_a_torn_last_line_does_not_swallow_the_next_record(tmp_path: Path) -> None:
    torn_spool(tmp_path)
    s = MetricSpool(tmp_path)
    s.append([tag("launcher", "local"), tag("host", "n1")])  # what Session does first
    got = no_commits(sendable(s, final=True))
    s.close()
    assert got == [param("p"), metric(1), metric(2), tag("launcher", "local"), tag("host", "n1")]


def test_rewind_to_an_older_checkpoint_leaves_sent_records_alone(tmp_path: Path) -> None:
    # The newest checkpoint (step 4) fails its checksum, the job resumes from step 2.
    s = MetricSpool(tmp_path)
    s.append([metric(1), metric(2)])
    s.commit(2)
    s.append([metric(3), metric(4)])
    s.commit(4)
    assert no_commits(send_all(s)) == [metric(1), metric(2), metric(3), metric(4)]
    sent_bytes = s.path.read_bytes()
    s.append([metric(5)])
    s.rewind(2)
    after = s.path.read_bytes()
    resent = no_commits(send_all(s))
    s.close()
    assert after.startswith(sent_bytes), "rewind rewrote bytes before the sent offset"
    assert resent == [], "records already sent were sent again"


def test_sent_offset_survives_reopening(tmp_path: Path) -> None:
    s = MetricSpool(tmp_path)
    s.append([param("p"), metric(1), metric(2)])
    s.commit(2)
    sent = send_all(s)
    size_at_send = s.path.stat().st_size
    s.append([metric(3)])
    s.commit(3)
    s.close()
    assert (tmp_path / OFFSET).read_text() == str(size_at_send)
    again = MetricSpool(tmp_path)
    assert again.sent_offset() == size_at_send
    rest = send_all(again)
    again.close()
    assert no_commits(sent) == [param("p"), metric(1), metric(2)]
    assert no_commits(rest) == [metric(3)]


def test_a_missing_or_garbled_offset_file_means_nothing_sent(tmp_path: Path) -> None:
    s = MetricSpool(tmp_path)
    s.append([metric(1)])
    s.commit(1)
    assert s.sent_offset() == 0
    (tmp_path / OFFSET).write_text("garbage")
    assert s.sent_offset() == 0
    assert no_commits(sendable(s)) == [metric(1)]
    s.close()


def test_a_line_being_written_is_not_sent_yet(tmp_path: Path) -> None:
    s = MetricSpool(tmp_path)
    s.append([param("p")])
    with open(s.path, "a", encoding="utf-8") as fh:
        fh.write('{"k":"p","key":"q"')  # another writer is in the middle of this line
    assert sendable(s, final=True) == [param("p")]
    assert send_all(s, final=True) == [param("p")]
    with open(s.path, "a", encoding="utf-8") as fh:
        fh.write(',"v":"x"}\n')  # ... and finishes it
    assert send_all(s, final=True) == [param("q")]
    s.close()
