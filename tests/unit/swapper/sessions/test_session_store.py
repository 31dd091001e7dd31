"""The session store: files, sidecars, the cap, hostile contents; and the slot table."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

from swapper.sessions.keys import CacheKey, KvArgs
from swapper.sessions.store import (
    KEY_RECORD,
    Entry,
    NoRoom,
    SessionStore,
    StoreError,
    parse_sidecar,
    plan_eviction,
)
from swapper.sessions.table import SlotTable, with_slot

K1, K2 = "a" * 32, "b" * 32
S = [f"{i:032x}" for i in range(1, 20)]


def key(hex_: str, ctx: str = "8192") -> CacheKey:
    kv = KvArgs("/bin/llama-server", "/m.gguf", (), ("-c", ctx), (), None)
    return CacheKey(hex_, {"v": 1, "binary": ["/bin/llama-server", 1, 2], "model": ["/m.gguf", 3, 4],
                           "files": [], "args": ["-c", ctx], "env": []}, kv)


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        self.now += 1
        return self.now


def open_store(root: Path, cap: int = 10_000) -> SessionStore:
    store = SessionStore(root, cap, Clock())
    store.open()
    return store


def save(store: SessionStore, key_hex: str, session: str, size: int, tokens: int = 10,
         expected: int = 0) -> Entry:
    """What a child does: the server writes the temporary file, the store commits it."""
    pending = store.begin_save(key_hex, session, expected)
    (pending.directory / pending.filename).write_bytes(b"k" * size)
    return store.commit(pending, tokens)[0]


def disk_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*")
               if p.is_file() and p.name not in (".lock", KEY_RECORD))


# -- pure parts -----------------------------------------------------------------------------


def entry(session: str, last_used: float, size: int = 100) -> Entry:
    return Entry(K1, session, 10, size, last_used, last_used)


def test_plan_eviction_takes_the_least_recently_used_first() -> None:
    entries = [entry(S[0], 30), entry(S[1], 10), entry(S[2], 20)]
    assert plan_eviction(entries, 300, 0) == []
    assert [e.session for e in plan_eviction(entries, 300, 100) or []] == [S[1]]
    assert [e.session for e in plan_eviction(entries, 250, 100) or []] == [S[1], S[2]]
    assert plan_eviction(entries, 250, 251) is None  # bigger than the cap itself


@pytest.mark.parametrize(("change", "error"), [
    ({"v": 2}, "version"), ({"session": S[1]}, "names another"), ({"cache_key": K2}, "names another"),
    ({"bytes": 99}, "says 99 bytes"), ({"tokens": True}, "not a count"), ({"tokens": 0}, "not a count"),
    ({"tokens": 1 << 40}, "not a count"), ({"last_used": "x"}, "not a number"),
    ({"last_used": math.nan}, "not a number"), ({"saved_at": math.inf}, "not a number"),
])
def test_a_sidecar_that_is_not_ours_is_refused(change: dict, error: str) -> None:
    good = {"v": 1, "cache_key": K1, "session": S[0], "tokens": 5, "bytes": 100, "saved_at": 1.0,
            "last_used": 2.0}
    assert parse_sidecar(good, K1, S[0], 100, 10.0) == Entry(K1, S[0], 5, 100, 1.0, 2.0)
    with pytest.raises(ValueError, match=error):
        parse_sidecar({**good, **change}, K1, S[0], 100, 10.0)


def test_a_save_keeps_when_its_session_was_last_used(tmp_path: Path) -> None:
    store = open_store(tmp_path / "root", cap=2000)
    store.adopt("agent", key(K1))
    for session, used in ((S[0], 50.0), (S[1], 10.0), (S[2], 30.0)):  # saved newest first
        pending = store.begin_save(K1, session, 0)
        (pending.directory / pending.filename).write_bytes(b"k" * 500)
        store.commit(pending, 10, last_used=used)
    assert sorted(e.session for e in store.entries()) == sorted([S[0], S[2]])  # S[1] was oldest


def test_a_session_saved_last_but_used_least_recently_never_evicts_a_newer_one(tmp_path: Path) -> None:
    """A stop saves its sessions most recent first: over the cap, the oldest is the one left out."""
    store = open_store(tmp_path / "root", cap=2000)
    store.adopt("agent", key(K1))
    kept = []
    for session, used in ((S[0], 50.0), (S[1], 30.0), (S[2], 10.0)):
        pending = store.begin_save(K1, session, 0, last_used=used)
        (pending.directory / pending.filename).write_bytes(b"k" * 500)
        try:
            kept.append(store.commit(pending, 10, last_used=used)[0].session)
        except NoRoom as exc:
            assert "beside the sessions used more recently" in str(exc)
    assert kept == [S[0], S[1]] and sorted(e.session for e in store.entries()) == sorted(kept)
    assert not list((tmp_path / "root" / K1).glob("*.tmp"))


def test_a_sidecar_from_the_future_reads_as_now() -> None:
    data = {"v": 1, "cache_key": K1, "session": S[0], "tokens": 5, "bytes": 100, "saved_at": 9e18,
            "last_used": 9e18}
    parsed = parse_sidecar(data, K1, S[0], 100, 10.0)
    assert (parsed.saved_at, parsed.last_used) == (10.0, 10.0)


# -- files ----------------------------------------------------------------------------------


def test_a_save_is_renamed_into_place_with_its_sidecar(tmp_path: Path) -> None:
    store = open_store(tmp_path / "root")
    directory, discarded = store.adopt("agent", key(K1))
    assert discarded == [] and oct(directory.stat().st_mode & 0o777) == "0o700"
    assert oct((tmp_path / "root").stat().st_mode & 0o777) == "0o700"
    saved = save(store, K1, S[0], 500, tokens=7)
    assert sorted(p.name for p in directory.iterdir()) == sorted([KEY_RECORD, f"{S[0]}.bin", f"{S[0]}.json"])
    assert store.lookup(K1, S[0]) == saved and saved.tokens == 7 and saved.size == 500
    store.close()
    again = open_store(tmp_path / "root")
    assert again.lookup(K1, S[0]) == saved  # read back from the sidecar


def test_the_cap_holds_with_many_sessions_and_the_oldest_go_first(tmp_path: Path) -> None:
    root = tmp_path / "root"
    store = open_store(root, cap=3000)
    store.adopt("agent", key(K1))
    store.adopt("plan", key(K2))
    kept: list[str] = []
    for i, session in enumerate(S[:12]):
        save(store, (K1, K2)[i % 2], session, 700)
        kept.append(session)
        assert disk_bytes(root) <= 3000 and store.used <= 3000
    assert sorted(e.session for e in store.entries()) == sorted(kept[-3:])
    store.touch(store.lookup(K2, S[9]))  # used again: it outlives the newer S[10]
    save(store, K1, S[12], 700)
    assert sorted(e.session for e in store.entries()) == sorted([S[9], S[11], S[12]])


def test_a_session_bigger_than_the_cap_is_not_kept(tmp_path: Path) -> None:
    store = open_store(tmp_path / "root", cap=1000)
    store.adopt("agent", key(K1))
    save(store, K1, S[0], 400)
    with pytest.raises(NoRoom):
        store.begin_save(K1, S[1], expected=1001)
    pending = store.begin_save(K1, S[1], expected=0)  # its size was not known in advance
    (pending.directory / pending.filename).write_bytes(b"k" * 1001)
    with pytest.raises(NoRoom):
        store.commit(pending, 10)
    assert not (pending.directory / pending.filename).exists()
    assert [e.session for e in store.entries()] == [S[0]]


def test_room_is_made_before_a_save_for_its_expected_size(tmp_path: Path) -> None:
    store = open_store(tmp_path / "root", cap=1500)  # two sessions of 400 bytes and a sidecar
    store.adopt("agent", key(K1))
    save(store, K1, S[0], 400)
    save(store, K1, S[1], 400)
    pending = store.begin_save(K1, S[2], expected=500)
    assert [d.session for d in pending.discarded] == [S[0]]  # gone before the server writes
    assert store.used <= 1500
    store.abort(pending)
    assert store.used == 400 + store.lookup(K1, S[1]).meta


def test_a_save_the_server_did_not_write_is_an_error_and_leaves_nothing(tmp_path: Path) -> None:
    store = open_store(tmp_path / "root")
    directory, _ = store.adopt("agent", key(K1))
    pending = store.begin_save(K1, S[0], 0)
    with pytest.raises(ValueError, match="no slot file"):
        store.commit(pending, 10)
    os.symlink("/etc/hostname", directory / pending.filename)
    pending = store.begin_save(K1, S[0], 0)
    os.symlink("/etc/hostname", directory / pending.filename)
    with pytest.raises(ValueError):
        store.commit(pending, 10)
    assert sorted(p.name for p in directory.iterdir() if not p.name.endswith(".tmp")) == [KEY_RECORD]


def test_another_key_for_the_same_model_discards_its_sessions_with_the_reason(tmp_path: Path) -> None:
    store = open_store(tmp_path / "root")
    store.adopt("agent", key(K1, ctx="8192"))
    store.adopt("plan", key("c" * 32))
    save(store, K1, S[0], 100)
    save(store, "c" * 32, S[1], 100)
    _, discarded = store.adopt("agent", key(K2, ctx="4096"))
    assert [(d.session, d.reason) for d in discarded] == [
        (S[0], "the settings changed (was -c 8192, now -c 4096)")]
    assert not (tmp_path / "root" / K1).exists()
    assert [e.session for e in store.entries()] == [S[1]]  # another model's sessions stay


def test_the_same_model_id_of_another_config_keeps_its_sessions(tmp_path: Path) -> None:
    """Servers of two projects share the root, each with an "agent": neither discards the
    other's sessions (the owner's own later change still does), and a reopened store knows
    whose each key is."""
    store = open_store(tmp_path / "root")
    store.adopt("agent", key(K1, ctx="8192"), owner="/a/models.ini")
    save(store, K1, S[0], 100)
    assert store.adopt("agent", key(K2, ctx="4096"), owner="/b/models.ini")[1] == []
    store.close()
    store = open_store(tmp_path / "root")
    assert store.adopt("agent", key(K2, ctx="4096"), owner="/b/models.ini")[1] == []
    assert [e.session for e in store.entries()] == [S[0]]
    _, discarded = store.adopt("agent", key("c" * 32, ctx="2048"), owner="/a/models.ini")
    assert [(d.session, d.reason) for d in discarded] == [
        (S[0], "the settings changed (was -c 8192, now -c 2048)")]


def test_one_store_per_root(tmp_path: Path) -> None:
    first = open_store(tmp_path / "root")
    with pytest.raises(StoreError, match="in use by another server"):
        open_store(tmp_path / "root")
    first.close()
    open_store(tmp_path / "root").close()


def test_hostile_contents_are_discarded_never_followed(tmp_path: Path) -> None:
    root = tmp_path / "root"
    store = open_store(root)
    store.adopt("agent", key(K1))
    for session in S[:6]:
        save(store, K1, session, 100)
    store.close()
    outside = tmp_path / "outside.txt"
    outside.write_text("precious")
    directory = root / K1
    (directory / f"{S[0]}.bin").unlink()
    os.symlink(outside, directory / f"{S[0]}.bin")  # a link where a slot file belongs
    (directory / f"{S[1]}.json").write_text(json.dumps({"v": 1, "bytes": 100}))  # not ours
    (directory / f"{S[2]}.json").write_bytes(b"{" * 5000)  # over the sidecar limit
    (directory / f"{S[3]}.json").unlink()
    os.mkfifo(directory / f"{S[3]}.json")  # would block a plain open
    (directory / f"{S[4]}.bin").write_bytes(b"k" * 50)  # truncated since its save
    (directory / f"{S[6]}.abcdef01.tmp").write_bytes(b"half a save")
    (directory / "notes.txt").write_text("not ours")
    os.symlink(tmp_path, root / K2)  # a link where a key directory belongs
    (root / "README").write_text("not ours")
    store = SessionStore(root, 10_000)
    discarded = store.open()
    assert sorted(d.session for d in discarded) == sorted(S[:5])
    assert [e.session for e in store.entries()] == [S[5]]
    assert outside.read_text() == "precious" and tmp_path.exists()
    assert not (root / K2).exists() and not (directory / f"{S[6]}.abcdef01.tmp").exists()
    assert (directory / "notes.txt").exists() and (root / "README").exists()


def test_a_key_directory_without_its_record_is_discarded(tmp_path: Path) -> None:
    root = tmp_path / "root"
    store = open_store(root)
    store.adopt("agent", key(K1))
    save(store, K1, S[0], 100)
    store.close()
    (root / K1 / KEY_RECORD).write_text('{"model_id": 5}')
    store = SessionStore(root, 10_000)
    assert [(d.session, d.reason.split(" (")[0]) for d in store.open()] == [(S[0], "no readable key record")]
    assert not (root / K1).exists()


def test_a_lower_cap_evicts_at_open(tmp_path: Path) -> None:
    store = open_store(tmp_path / "root", cap=10_000)
    store.adopt("agent", key(K1))
    for session in S[:4]:
        save(store, K1, session, 1000)
    store.close()
    store = SessionStore(tmp_path / "root", 2500)
    assert [d.session for d in store.open()] == [S[0], S[1]]


def test_a_root_that_is_a_symlink_is_refused(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    os.symlink(tmp_path / "real", tmp_path / "link")
    with pytest.raises(StoreError, match="not a directory"):
        SessionStore(tmp_path / "link", 1000).open()


# -- the slot table -------------------------------------------------------------------------


def test_sessions_take_free_slots_then_the_least_recently_used() -> None:
    table = SlotTable(2)
    assert table.assign("a").slot == 0 and table.assign("b").slot == 1
    assert table.assign("a").new is False  # a is now the most recent
    third = table.assign("c")
    assert (third.slot, third.new, third.displaced) == (1, True, "b")
    assert table.holders() == [("c", 1, 0.0), ("a", 0, 0.0)]
    table.assign("a", now=5.0)
    assert table.holders() == [("a", 0, 5.0), ("c", 1, 0.0)]
    table.drop("a")
    assert table.assign("d").slot == 0
    with pytest.raises(ValueError):
        SlotTable(0)


def test_the_slot_is_spliced_into_the_body() -> None:
    body = b' {"model": "x", "messages": []}'
    pinned = with_slot(body, 3)
    assert pinned is not None and json.loads(pinned) == {"id_slot": 3, "model": "x", "messages": []}
    assert json.loads(with_slot(b"{ }", 0) or b"") == {"id_slot": 0}
    assert with_slot(b"[1]", 0) is None and with_slot(b"", 0) is None
