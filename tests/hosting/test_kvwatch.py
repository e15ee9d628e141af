"""KvWatcher and ConsulHealth without sockets: a scripted fake client."""
from __future__ import annotations

import asyncio
import logging

import pytest

from trunkproxy.hosting.consul import Backoff, ConsulUnavailable, KvValue
from trunkproxy.hosting.kvwatch import ConsulHealth, KvWatcher, read_cache

from .conftest import KV_KEY, TELEKOM_JSON


class ScriptedClient:
    """Answers kv_get from a script of KvValue / exceptions; records the index asked for."""

    address = "http://consul.test:8500"

    def __init__(self, script):
        self.script = list(script)
        self.asked: list[int | None] = []

    async def kv_get(self, key, *, index=None, wait=None):
        self.asked.append(index)
        if not self.script:
            await asyncio.sleep(3600)
        step = self.script.pop(0)
        if isinstance(step, Exception):
            raise step
        return step


async def run_until_script_done(watcher, client):
    task = asyncio.create_task(watcher.run())
    for _ in range(200):
        if not client.script:
            break
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_after_an_outage_the_first_read_does_not_block(tmp_path):
    """A restarted agent has lower indexes: reusing the old index would block for `wait` seconds."""
    client = ScriptedClient([KvValue(TELEKOM_JSON.encode(), 500), ConsulUnavailable("down"),
                             KvValue(TELEKOM_JSON.encode(), 7)])
    received = []
    watcher = KvWatcher(client, KV_KEY, received.append, backoff=Backoff(initial=0.01), cache_path=tmp_path / "c.json")
    await run_until_script_done(watcher, client)
    assert client.asked[:3] == [None, 500, None]
    assert len(received) == 1  # same value after the outage: no second callback
    assert read_cache(tmp_path / "c.json", KV_KEY) == (True, TELEKOM_JSON.encode())


async def test_invalid_value_keeps_previous_and_deleted_key_means_no_rules(caplog):
    client = ScriptedClient([KvValue(TELEKOM_JSON.encode(), 2), KvValue(b"[]", 3), KvValue(None, 4)])
    received = []
    watcher = KvWatcher(client, KV_KEY, received.append)
    caplog.set_level(logging.ERROR, logger="trunkproxy.hosting.consul")
    await run_until_script_done(watcher, client)
    assert [list(r) for r in received] == [["tel.t-online.de"], []]
    [error] = [r.getMessage() for r in caplog.records]
    assert error.startswith(f"consul:{KV_KEY}:1: top level is a list")


async def test_async_callback_is_awaited_and_its_failure_does_not_stop_the_watch():
    client = ScriptedClient([KvValue(b"{}", 2), KvValue(TELEKOM_JSON.encode(), 3)])
    seen = []

    async def callback(rules):
        seen.append(rules)
        if len(seen) == 1:
            raise RuntimeError("supervisor bug")

    await run_until_script_done(KvWatcher(client, KV_KEY, callback), client)
    assert len(seen) == 2


def test_flapping_agent_is_one_outage(caplog):
    health = ConsulHealth("http://consul.test:8500")
    caplog.set_level(logging.DEBUG, logger="trunkproxy.hosting.consul")
    health.down(ConsulUnavailable("refused"), "watching")
    health.down(ConsulUnavailable("refused"), "registering")
    health.up()
    health.down(ConsulUnavailable("refused"), "watching")
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1
    assert health.reachable is False
    health.quiet = 0
    health.up()
    health.down(ConsulUnavailable("refused"), "watching")
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 2


def test_backoff_grows_and_resets():
    backoff = Backoff(initial=1, maximum=4, jitter=0)
    assert [backoff.next() for _ in range(4)] == [1, 2, 4, 4]
    backoff.reset()
    assert backoff.next() == 1
