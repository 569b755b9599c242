"""Run one harvest in this process and ``kill -9`` it at an exact store operation.

Used by tests as a real process: ``python tests/killpoint.py SPEC`` where SPEC is JSON
``{"options": {...make_config options...}, "key": API key, "kill": [method, glob, n]}``.
The process sends itself SIGKILL just before the ``n``-th (1-based) call of ``method``
(``write``, ``commit``, ``delete``) on a key matching ``glob``: the store then holds
exactly what the operations before it left, as after a real crash there. Each item of a
``write_many`` counts as a ``write``.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from fnmatch import fnmatchcase
from typing import Any

import orjson

from harvester import api
from harvester.storage import Store, open_store

MUTATIONS = ("write", "commit", "delete")


def killing(store: Any, method: str, glob: str, n: int) -> Any:
    """``store`` whose ``n``-th matching ``method`` call kills the process first.

    ``method`` ``"any"`` counts writes, commits and deletes together.
    """
    seen = 0

    def wrap(name: str) -> None:
        real = getattr(store, name)

        async def wrapped(*args: Any, **kwargs: Any) -> Any:
            nonlocal seen
            key = args[1] if name == "commit" else args[0]
            if fnmatchcase(key, glob):
                seen += 1
                if seen == n:
                    sys.stdout.flush()
                    os.kill(os.getpid(), signal.SIGKILL)
            return await real(*args, **kwargs)

        setattr(store, name, wrapped)

    def wrap_many() -> None:
        real = store.write_many

        async def wrapped(items: Any) -> Any:
            nonlocal seen
            for index, (key, _, _) in enumerate(items):
                if fnmatchcase(key, glob):
                    seen += 1
                    if seen == n:
                        # The group's earlier files are written, as the store writes
                        # them in order; this one and the rest are not.
                        if index:
                            await real(items[:index])
                        sys.stdout.flush()
                        os.kill(os.getpid(), signal.SIGKILL)
            return await real(items)

        store.write_many = wrapped

    for name in MUTATIONS if method == "any" else (method,):
        wrap(name)
    # A group of writes counts as its writes, one by one. The base write_many calls
    # write() for each item (counted there already); only a store's own one is wrapped.
    if method in ("any", "write") and type(store).write_many is not Store.write_many:
        wrap_many()
    return store


async def main(spec: dict[str, Any]) -> None:
    """Harvest as ``spec`` says, dying where it says."""
    config = api.make_config(env={}, **spec["options"])
    store = open_store(config.out, s3_endpoint_url=config.s3_endpoint_url)
    method, glob, n = spec["kill"]
    killing(store, method, glob, int(n))
    try:
        await api.aharvest(config, api_key=spec["key"], store=store)
    finally:
        await store.close()
    print("finished without reaching the kill point", flush=True)


if __name__ == "__main__":
    asyncio.run(main(orjson.loads(sys.argv[1])))
