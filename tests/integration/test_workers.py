"""Worker processes dying and stopping: SIGKILL mid-stream (clients resume through nginx with
`x-resume-after`, senders retry with the same clientMessageId), SIGTERM under load (exit 0, close
code 1001, nothing receipted lost), and the Procfile's gunicorn command with two workers."""

from __future__ import annotations

import asyncio
import shlex
import sys
import time
from collections import Counter
from functools import partial
from pathlib import Path

import aiohttp

from tests.integration.conftest import (
    ClientFactory,
    Cluster,
    Sender,
    Tally,
    Worker,
    create_group_room,
    has,
    migrate,
    worker_env,
)
from tests.services import LOCALHOST, RedisServer, free_port
from tests.stomp_client import ChatClient
from tests.waiting import eventually

TIMEOUT_S = 20.0
GOING_AWAY = 1001


def tally_rooms(cluster: Cluster, subscribers: list[ChatClient], room_of: dict[str, int]) -> Tally:
    by_room = cluster.seqs_by_room()
    tally = Tally()
    for client in subscribers:
        room = room_of[client.user]
        assert by_room[room] == list(range(1, len(by_room[room]) + 1))
        tally.add(client.user, client.seqs(room), by_room[room])
    return tally


async def test_worker_sigkilled_mid_stream_clients_resume_through_nginx(
    cluster: Cluster, http: aiohttp.ClientSession, clients: ClientFactory
) -> None:
    per_sender = 60
    nginx = cluster.nginx.ws_url
    places = {"n": nginx, "a": cluster.a.ws_url, "b": cluster.b.ws_url}
    everyone: list[ChatClient] = []
    room_of: dict[str, int] = {}
    for r in range(2):
        # Subscribers: four through nginx (round robin: half land on A), one direct to each
        # worker; senders: two through nginx, one direct to A. Whoever drops resumes via nginx.
        names = [f"r{r}-n-sub{i}" for i in range(4)] + [f"r{r}-a-sub", f"r{r}-b-sub"]
        names += [f"r{r}-n-sender{i}" for i in range(2)] + [f"r{r}-a-sender"]
        room = await create_group_room(http, cluster.b.url, names[0], names[1:], f"room {r}")
        for name in names:
            everyone.append(clients(name, places[name.split("-")[1]]))
            room_of[name] = room
    await asyncio.gather(*(client.connect() for client in everyone))
    # x-resume-after:0 from the start: the rooms are new, so this is "everything".
    await asyncio.gather(*(c.subscribe(room_of[c.user], resume_after=0) for c in everyone))
    for client in everyone:
        client.keep_connected(nginx, [room_of[client.user]])
    senders = [
        Sender(client, room_of[client.user], limit=per_sender, reconnect_url=nginx,
               rooms=[room_of[client.user]], receipt_timeout=5.0)
        for client in everyone if "sender" in client.user
    ]
    for sender in senders:
        sender.start()

    def receipted() -> int:
        return sum(len(sender.receipted) for sender in senders)

    def context() -> str:
        return "\n".join([
            *(f"{c.user}: last seq {c.last_seq(room_of[c.user])}, drops {c.drops}, "
              f"errors {c.errors[-2:]}" for c in everyone),
            f"stored: {cluster.seqs_by_room()}", cluster.logs(),
        ])

    total = per_sender * len(senders)
    await eventually(lambda: receipted() >= total // 3, TIMEOUT_S, "load before the kill", context)
    cluster.a.sigkill()
    killed = time.monotonic()
    at_kill = {room: max(seqs) for room, seqs in cluster.seqs_by_room().items()}

    def caught_up(target: dict[int, int]) -> bool:
        return all(c.last_seq(room_of[c.user]) >= target[room_of[c.user]] for c in everyone)

    # A's direct clients certainly drop; nginx's drop at the same moment (the upstream closed).
    on_a = [client for client in everyone if "-a-" in client.user]
    await eventually(lambda: all(c.resumed_at for c in on_a), TIMEOUT_S,
                     "A's direct clients resumed through nginx", context)
    await eventually(lambda: all(c.settled for c in everyone), TIMEOUT_S,
                     "every dropped client resumed", context)
    dropped = [client for client in everyone if client.drops]
    reconnect_s = max(c.resumed_at[0] for c in dropped) - killed
    target = {room: max(seqs) for room, seqs in cluster.seqs_by_room().items()}
    await eventually(lambda: caught_up(target), TIMEOUT_S,
                     "everyone caught up after resuming", context)
    catch_up_s = time.monotonic() - killed
    await asyncio.gather(*(sender.done(TIMEOUT_S * 2) for sender in senders))
    assert receipted() == total
    final = {room: max(seqs) for room, seqs in cluster.seqs_by_room().items()}
    await eventually(lambda: caught_up(final), TIMEOUT_S, "everyone has everything", context)

    # Exactly one row per clientMessageId, whatever the retries (sqlite3 on the shared file).
    stored = cluster.rows()
    cmids = Counter(cmid for *_, cmid in stored)
    expected_cmids = {f"{s.client.user}-{k}" for s in senders for k in range(per_sender)}
    assert set(cmids) == expected_cmids
    assert [cmid for cmid, count in cmids.items() if count != 1] == []
    assert len(stored) == total
    tally = tally_rooms(cluster, everyone, room_of)
    retries = sum(sender.retries for sender in senders)
    print(f"\n{tally.summary('worker SIGKILL')}; messages {total} (one row per "
          f"clientMessageId), {len(dropped)} clients dropped and resumed through nginx "
          f"(all resumed within {reconnect_s:.2f} s of the kill), everyone had every message "
          f"stored by then {catch_up_s:.2f} s after the kill (target 10 s), sender retries "
          f"{retries}, messages stored at the kill {at_kill}")
    assert len(dropped) >= len(on_a) + 2, "A's direct clients and half of nginx's drop"
    assert catch_up_s <= 10.0
    tally.assert_clean(context())


async def test_worker_sigterm_under_load_exits_cleanly_losing_nothing(
    cluster: Cluster, http: aiohttp.ClientSession, clients: ClientFactory
) -> None:
    a, b = cluster.a, cluster.b
    room_of: dict[str, int] = {}
    everyone: list[ChatClient] = []
    for r in range(2):
        names = [f"r{r}-a-sub{i}" for i in range(3)] + [f"r{r}-b-sub"]
        names += [f"r{r}-a-sender{i}" for i in range(2)] + [f"r{r}-b-sender"]
        room = await create_group_room(http, b.url, names[0], names[1:], f"room {r}")
        for name in names:
            everyone.append(clients(name, a.ws_url if "-a-" in name else b.ws_url))
            room_of[name] = room
    await asyncio.gather(*(client.connect() for client in everyone))
    await asyncio.gather(*(c.subscribe(room_of[c.user]) for c in everyone))
    senders = [Sender(c, room_of[c.user]) for c in everyone if "sender" in c.user]
    for sender in senders:
        sender.start()
    on_a = [client for client in everyone if "-a-" in client.user]

    def receipted() -> int:
        return sum(len(sender.receipted) for sender in senders)

    await eventually(lambda: receipted() >= 60, TIMEOUT_S, "load before SIGTERM", cluster.logs)
    a.sigterm()
    signalled = time.monotonic()
    code = await a.wait_exit(20.0)
    exit_s = time.monotonic() - signalled
    assert code == 0, a.output()
    for client in on_a:
        await client.wait_dropped(TIMEOUT_S)
    close_codes = Counter(code for client in on_a for code in client.close_codes)
    assert close_codes == {GOING_AWAY: len(on_a)}, (close_codes, a.output())

    # A's senders stopped at the close; B's go on. Every receipted SEND is in the database.
    await asyncio.gather(*(sender.finish(TIMEOUT_S) for sender in senders))
    stored = cluster.rows()
    cmids = Counter(cmid for *_, cmid in stored)
    receipted_cmids = [cmid for sender in senders for cmid in sender.receipted]
    missing = sorted(set(receipted_cmids) - set(cmids))
    assert missing == [], f"receipted but not stored: {missing}"
    assert max(cmids.values()) == 1
    unreceipted = [s.unreceipted for s in senders if s.unreceipted is not None]
    # Allowed (the client retries with the same id), but counted: committed, RECEIPT never sent.
    stored_unreceipted = sorted(str(c) for c in set(cmids) - set(receipted_cmids))
    # B's subscribers still get every message of their rooms, in order, once.
    on_b = [client for client in everyone if "-b-" in client.user]
    final = {room: max(seqs) for room, seqs in cluster.seqs_by_room().items()}
    await eventually(lambda: all(c.last_seq(room_of[c.user]) >= final[room_of[c.user]]
                                 for c in on_b), TIMEOUT_S, "B's subscribers", cluster.logs)
    tally = tally_rooms(cluster, on_b, room_of)
    print(f"\n{tally.summary('worker SIGTERM, subscribers on B')}; A exited {code} "
          f"{exit_s:.2f} s after SIGTERM, {len(on_a)} clients closed with {dict(close_codes)}, "
          f"{len(receipted_cmids)} receipted all stored, {len(stored)} stored "
          f"(unreceipted in flight at the close: {unreceipted}; of those stored without a "
          f"RECEIPT: {stored_unreceipted})")
    assert exit_s <= 20.0
    tally.assert_clean(cluster.logs())


def gunicorn_command(port: int) -> list[str]:
    """The Procfile's own `web:` line, on 127.0.0.1:`port` with WEB_CONCURRENCY=2."""
    procfile = Path(__file__).resolve().parents[2] / "Procfile"
    web_line = next(line for line in procfile.read_text().splitlines() if line.startswith("web:"))
    expanded = (
        web_line.removeprefix("web:")
        .replace("0.0.0.0:$PORT", f"{LOCALHOST}:{port}")
        .replace("${WEB_CONCURRENCY:-1}", "2")
    )
    words = shlex.split(expanded)
    assert words[0] == "gunicorn" and "$" not in expanded, expanded
    script = Path(sys.executable).with_name("gunicorn")
    runner = [str(script)] if script.exists() else [sys.executable, "-m", "gunicorn"]
    return [*runner, *words[1:]]


async def test_gunicorn_procfile_command_two_workers_chat_and_sigterm(
    tmp_path: Path, http: aiohttp.ClientSession, clients: ClientFactory
) -> None:
    redis = RedisServer(tmp_path)
    port = free_port()
    database_url = f"sqlite:///{tmp_path / 'chat.db'}"
    env = worker_env(database_url, redis.url)
    server = Worker("gunicorn", tmp_path, env, port=port, command=gunicorn_command(port))
    redis.start()
    try:
        migrate(database_url, tmp_path)  # the Procfile's release: step
        server.start()
        room = await create_group_room(http, server.url, "alice", ["bob"])
        alice = clients("alice", server.ws_url)
        bob = clients("bob", server.ws_url)
        await asyncio.gather(alice.connect(), bob.connect())
        await asyncio.gather(alice.subscribe(room), bob.subscribe(room))
        rounds = 10
        for k in range(rounds):
            await alice.send(room, f"hi bob #{k}", f"alice-{k}")
            await bob.wait_until(partial(has, bob, room, 2 * k + 1), TIMEOUT_S)
            await bob.send(room, f"hi alice #{k}", f"bob-{k}")
            await alice.wait_until(partial(has, alice, room, 2 * k + 2), TIMEOUT_S)
        await bob.wait_until(partial(has, bob, room, 2 * rounds), TIMEOUT_S)
        tally = Tally()
        for client in (alice, bob):
            tally.add(client.user, client.seqs(room), list(range(1, 2 * rounds + 1)))
        assert [body["senderId"] for body in bob.messages[room]] == ["alice", "bob"] * rounds
        # Multiprocess metrics: whichever worker answers, it counts both workers' work.
        for _ in range(4):
            async with http.get(f"{server.url}/metrics") as scraped:
                text = await scraped.text()
            assert f"chat_messages_stored_total {2 * rounds}.0" in text, text
            assert "chat_connections 2.0" in text, text

        server.sigterm()
        signalled = time.monotonic()
        code = await server.wait_exit(30.0)
        exit_s = time.monotonic() - signalled
        for client in (alice, bob):
            await client.wait_dropped(TIMEOUT_S)
        assert code == 0, server.output()
        # gunicorn_conf.post_worker_init tuned each worker's garbage collector (gctune.py).
        assert server.output().count("garbage collector tuned") == 2, server.output()
        close_codes = [code for client in (alice, bob) for code in client.close_codes]
        print(f"\n{tally.summary('gunicorn, 2 workers')}; SIGTERM: exit {code} after "
              f"{exit_s:.2f} s, clients closed with {close_codes}")
        assert close_codes == [GOING_AWAY, GOING_AWAY], server.output()
        tally.assert_clean(server.output())
    finally:
        server.stop()
        redis.stop()
