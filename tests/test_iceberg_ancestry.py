"""The manifest's check against the table: after a rollback units are redone, after expiry not."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from harvester.iceberg.ancestry import Ancestry, ancestry_of
from harvester.iceberg.catalog import open_catalog
from harvester.iceberg.commit import CommitInfo, commit_windows
from harvester.iceberg.maintain import expire_snapshots
from harvester.iceberg.tables import ensure_table
from harvester.sim.data import Dataset, DatasetSpec

from icebergcheck import day, hours, truth, write_group

DATA = Dataset(DatasetSpec(seed=21, rows_per_day=40))
FEED = "paths"


@st.composite
def histories(draw: st.DrawFn) -> tuple[list[int], int, int]:
    """A linear history of sequence numbers 1..n, a rollback target and an expiry cut."""
    length = draw(st.integers(1, 12))
    target = draw(st.integers(1, length))  # rolled back to this one (== length: no rollback)
    cut = draw(st.integers(1, target))  # snapshots before this one are expired
    return list(range(1, length + 1)), target, cut


@given(histories())
def test_rule_keeps_exactly_the_units_of_the_current_lineage(
    history: tuple[list[int], int, int],
) -> None:
    """Snapshot ids equal sequence numbers here; the rule must not need that."""
    sequences, target, cut = history
    ancestors = frozenset(s for s in sequences if cut <= s <= target)
    known = frozenset(s for s in sequences if s >= cut)  # rolled-back ones stay known
    ancestry = Ancestry(ancestors=ancestors, known=known, oldest_sequence=cut)
    for sequence in sequences:
        committed_id = sequence * 1000 + 7  # ids are arbitrary
        ancestry_ids = Ancestry(
            ancestors=frozenset(s * 1000 + 7 for s in ancestors),
            known=frozenset(s * 1000 + 7 for s in known),
            oldest_sequence=cut,
        )
        assert ancestry_ids.is_current(committed_id, sequence) == (sequence <= target)
    assert ancestry.is_current(10_000, 0)  # expired long ago
    assert not ancestry.is_current(10_000, 10_000)  # unknown, younger than the lineage


def test_rule_on_an_empty_table_keeps_nothing() -> None:
    empty = Ancestry(ancestors=frozenset(), known=frozenset(), oldest_sequence=None)
    assert not empty.is_current(1, 1)
    with pytest.raises(ValueError, match="ancestor"):
        Ancestry(ancestors=frozenset({1}), known=frozenset(), oldest_sequence=1)


def test_after_a_rollback_later_units_are_not_current_after_expiry_old_ones_are(
    tmp_path: Path,
) -> None:
    table = ensure_table(open_catalog(str(tmp_path / "lake"), None, create=True), FEED)
    infos: list[CommitInfo] = []
    for offset in range(4):
        windows = hours(day("2024-02-01") + timedelta(days=offset), 4)
        files = write_group(table, FEED, truth(DATA, FEED, windows))
        info = commit_windows(table, windows=windows, files=files, properties={})
        assert info is not None
        infos.append(info)
    assert all(
        ancestry_of(table.metadata).is_current(i.snapshot_id, i.sequence_number) for i in infos
    )

    # Roll back to the second commit: the third and fourth groups are no longer there.
    table.manage_snapshots().rollback_to_snapshot(infos[1].snapshot_id).commit()
    table.refresh()
    rule = ancestry_of(table.metadata)
    assert [rule.is_current(i.snapshot_id, i.sequence_number) for i in infos] == [
        True, True, False, False,
    ]  # fmt: skip

    # A new commit on top, then expire everything older than it (the rolled-back ones too).
    windows = hours(day("2024-02-10"), 4)
    files = write_group(table, FEED, truth(DATA, FEED, windows))
    newest = commit_windows(table, windows=windows, files=files, properties={})
    assert newest is not None
    expired = expire_snapshots(table, datetime.now(UTC) + timedelta(days=1), dry_run=False)
    assert set(expired) == {i.snapshot_id for i in infos}
    table.refresh()
    assert [s.snapshot_id for s in table.metadata.snapshots] == [newest.snapshot_id]
    rule = ancestry_of(table.metadata)
    # The first two were in the lineage and expired: still done. The rolled-back two are
    # gone from the metadata with it: the rule cannot tell them apart (module docstring).
    assert rule.is_current(infos[0].snapshot_id, infos[0].sequence_number)
    assert rule.is_current(infos[1].snapshot_id, infos[1].sequence_number)
    assert rule.is_current(newest.snapshot_id, newest.sequence_number)
    assert rule.is_current(infos[3].snapshot_id, infos[3].sequence_number)  # the blind spot


def test_expiry_keeps_a_rollback_visible_while_the_lineage_is_retained(tmp_path: Path) -> None:
    """Expiring old ancestors but not the rollback target: rolled-back units still redone."""
    table = ensure_table(open_catalog(str(tmp_path / "lake"), None, create=True), FEED)
    infos = []
    for offset in range(3):
        windows = hours(day("2024-02-01") + timedelta(days=offset), 2)
        files = write_group(table, FEED, truth(DATA, FEED, windows))
        info = commit_windows(table, windows=windows, files=files, properties={})
        assert info is not None
        infos.append(info)
    table.manage_snapshots().rollback_to_snapshot(infos[1].snapshot_id).commit()
    table.maintenance.expire_snapshots().by_ids(
        [infos[0].snapshot_id, infos[2].snapshot_id]
    ).commit()
    table.refresh()
    rule = ancestry_of(table.metadata)
    assert rule.is_current(infos[0].snapshot_id, infos[0].sequence_number)  # expired ancestor
    assert rule.is_current(infos[1].snapshot_id, infos[1].sequence_number)
    assert not rule.is_current(infos[2].snapshot_id, infos[2].sequence_number)  # rolled back
