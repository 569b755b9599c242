"""A gzip-encoded big page: Content-Length counts the compressed bytes, not the body's.

aiohttp asks for gzip by default (``Accept-Encoding: gzip, deflate``) and decompresses
what it reads, while ``response.content_length`` is the header: the compressed size.
"""

from __future__ import annotations

import asyncio
import gzip
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from harvester import bigpage
from harvester.sim.data import DatasetSpec

from harvesting import harvest
from lakecheck import assert_lake_exact

START, END = datetime(2024, 1, 1, tzinfo=UTC), datetime(2024, 1, 2, tzinfo=UTC)


class GzipProxy:
    """A real HTTP server that forwards to ``target`` and answers gzipped, with a length."""

    def __init__(self, target: str) -> None:
        self.target = target.rstrip("/")
        self.url = ""
        self.gzipped = 0
        self.limits: list[int] = []
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._start())
        self._ready.set()
        self._loop.run_forever()

    async def _start(self) -> None:
        self._session = aiohttp.ClientSession(auto_decompress=True)
        app = web.Application()
        app.router.add_route("GET", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"

    async def _handle(self, request: web.Request) -> web.Response:
        self.limits.append(int(request.query.get("limit", "0")))
        headers = {k: v for k, v in request.headers.items() if k.lower() in ("authorization",)}
        async with self._session.get(self.target + request.path_qs, headers=headers) as answer:
            body = await answer.read()
            status = answer.status
            kind = answer.headers.get("Content-Type", "application/json")
        out: dict[str, str] = {"Content-Type": kind}
        if "gzip" in request.headers.get("Accept-Encoding", ""):
            body = gzip.compress(body)
            out["Content-Encoding"] = "gzip"
            self.gzipped += 1
        return web.Response(status=status, body=body, headers=out)

    def __enter__(self) -> GzipProxy:
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        async def stop() -> None:
            await self._session.close()
            await self._runner.cleanup()

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


def test_a_gzipped_big_page_is_read_whole_not_called_cut_short(
    make_sim: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A big page (here: over a lowered threshold) sent gzipped lands exactly.

    Content-Length counts the compressed bytes: it neither sizes the body's buffer nor
    says whether the body arrived whole.
    """
    monkeypatch.setattr(bigpage, "THRESHOLD", 1024)  # real pages: 16 MiB compressed
    server = make_sim(max_limit=1000)
    with GzipProxy(server.url) as proxy:
        result = harvest(
            proxy.url,
            str(tmp_path),
            feeds="ips",
            before="2024-01-02",
            limit=1000,
            attempts=2,
            confidence=0,
            severity=0,
        )
    assert proxy.gzipped > 0
    assert result.ok, [f.reason for f in result.failures][:1]
    want = server.dataset.truth("ips", START, END, confidence=0, severity=0)
    assert_lake_exact(str(tmp_path), {"ips": want})


def test_a_small_gzip_that_inflates_past_the_cap_is_asked_again_smaller(
    make_sim: Any, tmp_path: Path
) -> None:
    """--max-page-bytes bounds the body held, gzipped on the wire or not.

    Padded 1,000-item pages are about 2 MB but a few KB gzipped, under a 256 KiB cap on
    the wire: the cap applies to the decoded body, so they are asked for again smaller.
    """
    spec = DatasetSpec(seed=3, rows_per_day=900, item_padding=2000)
    server = make_sim(dataset=spec, max_limit=1000)
    with GzipProxy(server.url) as proxy:
        result = harvest(
            proxy.url,
            str(tmp_path),
            feeds="urls",
            before="2024-01-02",
            confidence=0,
            severity=0,
            max_page_bytes=256 * 1024,
        )
    assert proxy.gzipped > 0
    assert result.ok
    want = server.dataset.truth("urls", START, END, confidence=0, severity=0)
    assert_lake_exact(str(tmp_path), {"urls": want})
    # The first request asks for one item (a probe); a 2 MB page is asked again smaller.
    assert any(1 < limit < 1000 for limit in proxy.limits), proxy.limits
