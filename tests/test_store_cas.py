"""Compare-and-set, the one primitive of the commit protocol, on every store.

The same scenarios run on the local disk, on S3 (moto's server over real HTTP) and on
the test double (``tests/memstore.py``), so the double is held to what the real stores
do. The local store's atomicity is then shown with real processes racing on one object.
What moto does and does not check is written down in ``tests/s3_server.py``; S3's own
multipart cases are in ``tests/test_s3_store.py``.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harvester.errors import Conflict, StorageError
from harvester.retry import RetryPolicy
from harvester.s3 import S3Store
from harvester.storage import ABSENT, Absent, Expect, LocalStore, ObjectInfo, Store

from memstore import MemoryStore

FAST = RetryPolicy(attempts=3, timeout=30.0, initial=0.01, maximum=0.02, jitter=0.0)


@pytest.fixture(params=["local", "s3", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """Each kind of store, empty."""
    if request.param == "local":
        yield LocalStore(tmp_path / "lake")
    elif request.param == "s3":
        endpoint, bucket = request.getfixturevalue("s3_bucket")
        yield S3Store(bucket, "lake", endpoint_url=endpoint, policy=FAST)
    else:
        yield MemoryStore()


def run(store: Store, scenario: Callable[[Store], Awaitable[Any]]) -> Any:
    """Run ``scenario(store)`` in a fresh event loop and always close the store."""

    async def main() -> Any:
        try:
            return await scenario(store)
        finally:
            await store.close()

    return asyncio.run(main())


def test_absent_is_a_singleton() -> None:
    """``Absent()`` is ``ABSENT``, also after a trip through pickle (to another process)."""
    import pickle

    assert Absent() is ABSENT
    assert pickle.loads(pickle.dumps(ABSENT)) is ABSENT
    assert repr(ABSENT) == "ABSENT"


def test_write_absent_creates_once(store: Store) -> None:
    """expect=ABSENT creates a missing object, and refuses to replace an existing one."""

    async def scenario(s: Store) -> None:
        info = await s.write("_manifest/head.json", b"first", expect=ABSENT)
        assert (info.key, info.size) == ("_manifest/head.json", 5)
        with pytest.raises(Conflict):
            await s.write("_manifest/head.json", b"second", expect=ABSENT)
        blob = await s.read("_manifest/head.json")
        assert blob is not None
        assert blob.data == b"first"
        assert blob.info.version == info.version

    run(store, scenario)


def test_write_if_match_replaces_only_the_version_read(store: Store) -> None:
    """expect=version replaces exactly that version; a stale or missing one is a Conflict."""

    async def scenario(s: Store) -> None:
        v1 = await s.write("lease/ips", b"owner=a")
        v2 = await s.write("lease/ips", b"owner=b", expect=v1.version)
        assert v2.version != v1.version
        with pytest.raises(Conflict):
            await s.write("lease/ips", b"owner=c", expect=v1.version)  # stale
        with pytest.raises(Conflict):
            await s.write("lease/domains", b"owner=c", expect=v2.version)  # missing
        assert await s.get_bytes("lease/ips") == b"owner=b"
        assert await s.read("lease/domains") is None
        v3 = await s.write("lease/ips", b"owner=c", expect=v2.version)
        assert await s.get_bytes("lease/ips") == b"owner=c"
        assert (await s.read("lease/ips")).info.version == v3.version  # type: ignore[union-attr]

    run(store, scenario)


def test_commit_is_conditional_like_write(store: Store) -> None:
    """A staged file is committed under the same conditions; a refused one changes nothing."""

    async def commit(s: Store, key: str, data: bytes, expect: Any) -> ObjectInfo:
        async with s.staging(key) as staged:
            staged.write_bytes(data)
            return await s.commit(staged, key, expect=expect)

    async def scenario(s: Store) -> None:
        key = "ips/dt=2024-01-01/part-0.parquet"
        first = await commit(s, key, b"day v1", ABSENT)
        assert first.size == 6
        with pytest.raises(Conflict):
            await commit(s, key, b"day vX", ABSENT)
        second = await commit(s, key, b"day v2!", first.version)
        assert second.size == 7
        with pytest.raises(Conflict):
            await commit(s, key, b"day vY", first.version)
        assert await s.get_bytes(key) == b"day v2!"
        assert [i.key for i in await s.list("ips")] == [key]  # no staging leftovers visible

    run(store, scenario)


def test_write_many_is_each_write_and_hands_back_each_outcome(store: Store) -> None:
    """A group of writes: each under its own condition, a refused one in its place only."""

    async def scenario(s: Store) -> None:
        taken = await s.write("ips/dt=2024-01-02/part-0.parquet", b"already there")
        kept = await s.write("ips/dt=2024-01-03/part-0.parquet", b"v1")
        items: list[tuple[str, bytes, Expect]] = [
            ("ips/dt=2024-01-01/part-0.parquet", b"day one", ABSENT),
            ("ips/dt=2024-01-02/part-0.parquet", b"day two", ABSENT),  # exists
            ("ips/dt=2024-01-03/part-0.parquet", b"v2", kept.version),
            ("ips/dt=2024-01-04/part-0.parquet", b"day four", "no-such-version"),
        ]
        outcomes = await s.write_many(items)
        assert isinstance(outcomes[0], ObjectInfo) and outcomes[0].size == 7
        assert isinstance(outcomes[1], Conflict)
        assert isinstance(outcomes[2], ObjectInfo) and outcomes[2].version != kept.version
        assert isinstance(outcomes[3], Conflict)
        assert await s.get_bytes("ips/dt=2024-01-01/part-0.parquet") == b"day one"
        blob = await s.read("ips/dt=2024-01-02/part-0.parquet")
        assert blob is not None
        assert (blob.data, blob.info.version) == (b"already there", taken.version)
        assert await s.get_bytes("ips/dt=2024-01-03/part-0.parquet") == b"v2"
        assert await s.read("ips/dt=2024-01-04/part-0.parquet") is None
        assert [i.key for i in await s.list("ips")] == [k for k, _, _ in items[:3]]
        assert await s.write_many([]) == []

    run(store, scenario)


def test_read_many_is_each_read(store: Store) -> None:
    """A group of reads: each key's bytes and version as read() gives them, None if absent."""

    async def scenario(s: Store) -> None:
        one = await s.write("_manifest/ips/2024-01.json", b"january")
        two = await s.write("_manifest/ips/2024-03.json", b"march")
        keys = [f"_manifest/ips/2024-0{m}.json" for m in (1, 2, 3)]
        first, missing, third = await s.read_many(keys)
        assert first is not None and (first.data, first.info.version) == (b"january", one.version)
        assert missing is None
        assert third is not None and (third.data, third.info.version) == (b"march", two.version)
        assert await s.read_many([]) == []

    run(store, scenario)


@pytest.mark.parametrize("grouped", [True, False], ids=["syncfs", "file-by-file"])
def test_local_write_many_leaves_no_dot_file_and_versions_that_read_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, grouped: bool
) -> None:
    """Synced as a group (syncfs) or file by file, the files and versions are the same."""
    from harvester import syncfs

    if grouped and not syncfs.AVAILABLE:
        pytest.skip("syncfs(2) is Linux-only")
    monkeypatch.setattr(syncfs, "AVAILABLE", grouped)
    store = LocalStore(tmp_path / "lake")

    async def scenario(s: Store) -> None:
        await s.write("ips/dt=2024-01-02/part-0.parquet", b"taken")
        items = [(f"ips/dt=2024-01-0{d}/part-0.parquet", b"x" * d, ABSENT) for d in (1, 2, 3)]
        outcomes = await s.write_many(items)
        assert isinstance(outcomes[1], Conflict)
        for (key, data, _), info in zip(items, outcomes, strict=True):
            blob = await s.read(key)
            assert blob is not None
            if isinstance(info, ObjectInfo):
                assert (blob.data, blob.info.version) == (data, info.version)

    run(store, scenario)
    assert not list((tmp_path / "lake").rglob(".*")), "a dot-file was left behind"


def test_a_group_syncs_the_lakes_file_system_and_a_missing_folder_is_an_error(
    tmp_path: Path,
) -> None:
    """A group on a local folder can sync; a folder that is not there is an OSError."""
    from harvester import syncfs

    if not syncfs.AVAILABLE:
        pytest.skip("syncfs(2) needs Linux 5.8 or later")
    with syncfs.Group(tmp_path) as group:
        assert group.device == os.stat(tmp_path).st_dev
        if group.usable:  # a local file system, as a test's temporary folder is
            group.sync()
    with pytest.raises(FileNotFoundError), syncfs.Group(tmp_path / "missing"):
        pass


@pytest.mark.parametrize("failing", [1, 2], ids=["first-sync", "second-sync"])
def test_a_group_whose_sync_fails_records_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: int
) -> None:
    """The first sync failing fails every item and leaves no file; the second raises."""
    from harvester import syncfs

    if not syncfs.AVAILABLE:
        pytest.skip("syncfs(2) needs Linux 5.8 or later")
    calls = {"n": 0}
    real = syncfs.Group.sync

    def sync(group: syncfs.Group) -> None:
        calls["n"] += 1
        if calls["n"] == failing:
            raise OSError(5, "Input/output error")
        real(group)

    with syncfs.Group(tmp_path) as probe:
        if not probe.usable:
            pytest.skip("the temporary folder is not on a local file system")
    monkeypatch.setattr(syncfs.Group, "sync", sync)
    store = LocalStore(tmp_path / "lake")
    items: list[tuple[str, bytes, Expect]] = [
        (f"ips/dt=2024-01-0{d}/part-0.parquet", b"x" * d, ABSENT) for d in (1, 2)
    ]

    async def scenario(s: Store) -> list[Any]:
        return await s.write_many(items)

    if failing == 1:
        outcomes = run(store, scenario)
        assert all(isinstance(o, StorageError) for o in outcomes)
        assert not list((tmp_path / "lake").rglob("*.parquet"))
    else:
        with pytest.raises(StorageError, match="durable"):
            run(store, scenario)
    assert not list((tmp_path / "lake").rglob(".*")), "a dot-file was left behind"


def test_delete_if_match(store: Store) -> None:
    """A conditional delete removes only the version read; an unconditional one is lenient."""

    async def scenario(s: Store) -> None:
        v1 = await s.write("lease/ips", b"a")
        v2 = await s.write("lease/ips", b"b")
        with pytest.raises(Conflict):
            await s.delete("lease/ips", expect=v1.version)
        assert await s.get_bytes("lease/ips") == b"b"
        await s.delete("lease/ips", expect=v2.version)
        assert await s.read("lease/ips") is None
        with pytest.raises(Conflict):
            await s.delete("lease/ips", expect=v2.version)
        await s.delete("lease/ips")
        await s.delete("never/was")

    run(store, scenario)


def test_read_list_and_fetch_agree_on_versions(store: Store) -> None:
    """write, read, list and fetch give one version token; list is sorted and skips.

    A listing is of a folder (``ips`` is not ``ips2``), skips dot-files, and can start
    after a key.
    """

    async def scenario(s: Store) -> None:
        written = {}
        for key in (
            "_log/ips/000002.json",
            "_log/ips/000001.json",
            "_log/ips/000010.json",
            "_log/ips/sub/000003.json",
            "_log/ips2/000001.json",
            "_log/ips/.000004.json.tmp",
        ):
            written[key] = await s.write(key, key.encode())
        listed = await s.list("_log/ips")
        assert [i.key for i in listed] == [
            "_log/ips/000001.json",
            "_log/ips/000002.json",
            "_log/ips/000010.json",
            "_log/ips/sub/000003.json",
        ]
        assert listed == await s.list("_log/ips/")
        for info in listed:
            assert (info.size, info.version) == (written[info.key].size, written[info.key].version)
        after = await s.list("_log/ips", start_after="_log/ips/000002.json")
        assert [i.key for i in after] == ["_log/ips/000010.json", "_log/ips/sub/000003.json"]
        everything = await s.list("", start_after="_log/ips/sub")
        assert [i.key for i in everything] == ["_log/ips/sub/000003.json", "_log/ips2/000001.json"]
        assert await s.list("_log/none") == []
        assert await s.list_keys("_log/ips2") == ["_log/ips2/000001.json"]
        async with s.fetch("_log/ips/000010.json") as fetched:
            assert fetched is not None
            path, info = fetched
            assert path.read_bytes() == b"_log/ips/000010.json"
            assert info.version == written["_log/ips/000010.json"].version
        async with s.fetch("_log/ips/missing.json") as missing:
            assert missing is None
        blob = await s.read("_log/ips/000001.json")
        assert blob is not None
        assert blob.info == written["_log/ips/000001.json"]

    run(store, scenario)


# -- the local store ------------------------------------------------------------------


def test_local_versions_never_repeat(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Rewrites of one key get ever later mtimes, so no version comes back.

    The clock is frozen here, as a coarse clock is within one tick: ext4 reuses a freed
    inode, so without the stamping a same-size rewrite would repeat an earlier version.
    """
    import harvester.storage

    monkeypatch.setattr(harvester.storage.time, "time_ns", lambda: 1_700_000_000 * 10**9)

    async def scenario(s: Store) -> list[str]:
        versions = []
        for i in range(60):
            versions.append((await s.write("head", b"A" if i % 2 else b"B")).version)
        return versions

    versions = run(LocalStore(tmp_path), scenario)
    assert len(set(versions)) == len(versions)
    stamps = [int(v.rsplit("-", 1)[1]) for v in versions]
    assert stamps == sorted(stamps)


def test_local_fetch_is_the_file_itself(tmp_path: Path) -> None:
    """On local disk fetch hands out the lake's own file (no copy) and leaves it there."""

    async def scenario(s: Store) -> None:
        info = await s.write("ips/dt=2024-01-01/part.parquet", b"rows")
        async with s.fetch("ips/dt=2024-01-01/part.parquet") as fetched:
            assert fetched == (tmp_path / "ips/dt=2024-01-01/part.parquet", info)
        assert (tmp_path / "ips/dt=2024-01-01/part.parquet").read_bytes() == b"rows"

    run(LocalStore(tmp_path), scenario)


def test_local_list_skips_folders_wholly_before_start_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A listing after a key opens no folder whose keys all sort before that key.

    So a long history costs nothing to list past.
    """
    for day in range(1, 31):
        folder = tmp_path / "ips" / f"dt=2024-01-{day:02d}"
        folder.mkdir(parents=True)
        (folder / "part.parquet").write_bytes(b"x")
    opened: list[str] = []
    real = os.scandir

    def scandir(path: Any) -> Any:
        opened.append(Path(path).name)
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    store = LocalStore(tmp_path)
    found = run(store, lambda s: s.list("ips", start_after="ips/dt=2024-01-29/part.parquet"))
    assert [i.key for i in found] == ["ips/dt=2024-01-30/part.parquet"]
    assert sorted(opened) == ["dt=2024-01-29", "dt=2024-01-30", "ips"]


NAMES = st.sampled_from(["a", "b", "a-b", "a0", "ab", "_x", "é", ".h"])
KEYS = st.lists(st.lists(NAMES, min_size=1, max_size=3).map("/".join), max_size=12)


@settings(max_examples=60, deadline=None)
@given(keys=KEYS, prefix=st.sampled_from(["", "a", "a/", "ab", "b"]), after=st.one_of(
    st.none(), KEYS.map(lambda k: k[0] if k else ""), st.text(alphabet="ab/-0._", max_size=6)
))  # fmt: skip
def test_local_list_matches_the_sorted_model(
    keys: list[str], prefix: str, after: str | None
) -> None:
    """The pruned walk lists exactly what filtering a full sort would.

    Whatever the tree, folder and start_after: by folder, dot-name and start_after.
    """
    # a key cannot be both a file and a folder on disk: keep the deeper one
    files = {k for k in keys if not any(o.startswith(f"{k}/") for o in keys)}
    with tempfile.TemporaryDirectory() as root:
        for key in files:
            (Path(root) / key).parent.mkdir(parents=True, exist_ok=True)
            (Path(root) / key).write_bytes(key.encode())
        found = run(LocalStore(root), lambda s: s.list(prefix, start_after=after))
    folder = prefix.strip("/")
    model = sorted(
        k
        for k in files
        if (not folder or k.startswith(f"{folder}/"))
        and not k.rsplit("/", 1)[-1].startswith(".")
        and (after is None or k > after)
    )
    assert [i.key for i in found] == model


WORKER = textwrap.dedent(
    """
    import asyncio, sys, time
    from pathlib import Path
    from harvester.errors import Conflict, StorageError
    from harvester.storage import ABSENT, LocalStore

    root, key, count, go = sys.argv[1], sys.argv[2], int(sys.argv[3]), Path(sys.argv[4])

    async def main() -> int:
        store = LocalStore(root)
        conflicts = 0
        for _ in range(count):
            while True:
                blob = await store.read(key)
                value = int(blob.data) if blob else 0
                expect = blob.info.version if blob else ABSENT
                try:
                    await store.write(key, b"%d" % (value + 1), expect=expect)
                    break
                except Conflict:
                    conflicts += 1
        return conflicts

    while not go.exists():
        time.sleep(0.005)
    print(asyncio.run(main()))
    """
)


@pytest.mark.slow
def test_local_processes_incrementing_one_object_lose_no_update(tmp_path: Path) -> None:
    """4 processes x 60 read-increment-compare-and-set loops on one local object: 240."""
    go = tmp_path / "go"
    lake = tmp_path / "lake"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(lake), "_manifest/head", "60", str(go)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    go.touch()  # all start together, so their loops overlap
    results = [proc.communicate(timeout=120) for proc in procs]
    assert all(proc.returncode == 0 for proc in procs), [err for _, err in results]
    assert (lake / "_manifest/head").read_bytes() == b"240"
    assert sum(int(out) for out, _ in results) > 0, "the processes really raced"
    assert sorted(p.name for p in (lake / "_manifest").iterdir()) == ["head"]
