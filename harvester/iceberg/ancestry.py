"""Does the table still hold what a unit committed? The manifest's check against rollbacks.

Our manifest records, for each complete unit, the snapshot id and sequence number of
the commit that wrote it (:class:`~harvester.iceberg.commit.CommitInfo`). Someone may
since have rolled the table back, or expired old snapshots. The rule:

    a unit committed in snapshot S is still current iff S is an ancestor of the current
    snapshot (or the current snapshot itself), or S is no longer in the table's metadata
    and its sequence number is lower than the oldest retained ancestor's.

The second case is expiry: expiring removes old snapshots, never the current one, and
sequence numbers only grow along the history, so an expired S older than everything
retained was part of the history that led here. A rolled-back S was committed after the
snapshot rolled back to, so its sequence number is higher than that one's, which is an
ancestor: the unit is harvested again. So is a unit whose S is still in the metadata
but off the current branch.

One case cannot be told apart: a rollback followed by the expiry of the abandoned
snapshots *and* of every ancestor older than them, before any run looked. The metadata
then holds no trace of the rollback, and the rule keeps the unit (it errs on the side of
not re-harvesting what may be there).

:class:`Ancestry` is the rule as plain data, built once per table with
:func:`ancestry_of` and asked once per unit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pyiceberg.table.metadata import TableMetadata


@dataclass(frozen=True, kw_only=True)
class Ancestry:
    """What the rule needs of a table's metadata."""

    ancestors: frozenset[int]
    """Ids of the current snapshot and all its retained ancestors."""
    known: frozenset[int]
    """Ids of every snapshot in the metadata, on any branch."""
    oldest_sequence: int | None
    """The lowest sequence number among ``ancestors``; None if there is no snapshot."""

    def __post_init__(self) -> None:
        if not self.ancestors <= self.known:
            raise ValueError("every ancestor is a known snapshot")
        if (self.oldest_sequence is None) != (not self.ancestors):
            raise ValueError("oldest_sequence is given exactly when there are ancestors")

    def is_current(self, snapshot_id: int, sequence_number: int) -> bool:
        """Whether a unit committed in ``snapshot_id`` still holds in the table."""
        if snapshot_id in self.ancestors:
            return True
        if snapshot_id in self.known or self.oldest_sequence is None:
            return False  # off the current branch (rolled back), or the table is empty
        return sequence_number < self.oldest_sequence


def ancestry_of(metadata: TableMetadata) -> Ancestry:
    """The :class:`Ancestry` of a table's metadata (``table.metadata``, refreshed first)."""
    from pyiceberg.table.snapshots import ancestors_of

    lineage = list(ancestors_of(metadata.current_snapshot(), metadata))
    return Ancestry(
        ancestors=frozenset(s.snapshot_id for s in lineage),
        known=frozenset(s.snapshot_id for s in metadata.snapshots),
        oldest_sequence=min((s.sequence_number or 0 for s in lineage), default=None),
    )
