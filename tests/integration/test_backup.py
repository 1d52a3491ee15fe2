"""Backups, restore and upgrades of the hub's database: real SQLite files, real hubs."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import sqlite3
import stat
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from hub.app import Hub, HubStartError
from hub.store.backup import (
    BackupError,
    DataDirBusy,
    check_database,
    restore_backup,
    scheduled_backups,
    take_backup,
)
from hub.store.database import Database
from hub.store.migrations import MIGRATIONS
from tests.support import ADMIN_TOKEN, hub_config, running_hub, wait_for


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MC_ADMIN_TOKEN": ADMIN_TOKEN}
    return subprocess.run(
        [sys.executable, "-m", "hub.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )


async def gateway_names(hub: Hub) -> set[str]:
    rows = await hub.db.read(lambda conn: conn.execute("SELECT name FROM gateways").fetchall())
    return {r[0] for r in rows}


async def test_backup_of_a_running_hub_is_a_verified_private_copy(tmp_path: Path) -> None:
    async with running_hub(tmp_path / "hub") as hub:
        for name in ("alpha", "beta"):
            await hub.store.create_gateway(name, name)
        result = await asyncio.to_thread(
            cli, "backup", str(tmp_path / "copy.sqlite3"), "--data-dir", str(tmp_path / "hub"),
            "--verify",
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert "integrity ok" in result.stdout
        # The hub kept serving meanwhile.
        await hub.store.create_gateway("gamma", "gamma")
    copy = tmp_path / "copy.sqlite3"
    assert stat.S_IMODE(copy.stat().st_mode) == 0o600
    assert not copy.with_name(copy.name + "-wal").exists()  # one self-contained file
    info = check_database(copy)
    assert info.schema.version == len(MIGRATIONS)
    names = {r[0] for r in sqlite3.connect(copy).execute("SELECT name FROM gateways")}
    assert names == {"alpha", "beta"}


async def test_backup_into_a_directory_names_the_file_by_time_and_refuses_a_missing_database(
    tmp_path: Path,
) -> None:
    async with running_hub(tmp_path / "hub"):
        pass
    (tmp_path / "out").mkdir()
    info = await asyncio.to_thread(take_backup, tmp_path / "hub" / "hub.sqlite3", tmp_path / "out")
    assert info.path.parent == tmp_path / "out" and info.path.name.startswith("hub-")
    with pytest.raises(BackupError, match=r"no database at .*--data-dir"):
        take_backup(tmp_path / "nowhere" / "hub.sqlite3", tmp_path / "out")
    result = cli("backup", "--data-dir", str(tmp_path / "nowhere"))
    assert result.returncode == 1 and "--data-dir" in result.stderr


async def test_restore_is_refused_while_a_hub_runs_on_the_data_directory(tmp_path: Path) -> None:
    async with running_hub(tmp_path / "hub") as hub:
        await hub.store.create_gateway("alpha", "alpha")
        backup = await asyncio.to_thread(
            take_backup, hub.config.database_path, tmp_path / "b.sqlite3"
        )
        with pytest.raises(DataDirBusy, match=r"in use by pid \d+ \(mc-hub serve\).*stop"):
            restore_backup(backup.path, hub.config.data_dir, hub.config.database_path)
        result = await asyncio.to_thread(
            cli, "restore", str(backup.path), "--data-dir", str(hub.config.data_dir)
        )
        assert result.returncode == 1
        assert "mc-hub serve" in result.stderr and "stop that hub first" in result.stderr
        # A second hub on the same data directory is refused the same way.
        second = Hub(hub_config(tmp_path / "hub"))
        with pytest.raises(HubStartError, match="another mc-hub runs on --data-dir"):
            await second.start()
        assert await gateway_names(hub) == {"alpha"}  # the first one is untouched


async def test_restore_puts_the_backup_in_place_and_keeps_the_replaced_database(
    tmp_path: Path,
) -> None:
    data = tmp_path / "hub"
    async with running_hub(data) as hub:
        await hub.store.create_gateway("before", "before")
        backup = await asyncio.to_thread(
            take_backup, hub.config.database_path, tmp_path / "b.sqlite3"
        )
        await hub.store.create_gateway("after", "after")
    result = await asyncio.to_thread(cli, "restore", str(backup.path), "--data-dir", str(data))
    assert result.returncode == 0, result.stderr
    previous = [
        p
        for p in data.iterdir()
        if p.name.startswith("hub.sqlite3.before-restore-")
        and not p.name.endswith(("-wal", "-shm"))
    ]
    assert len(previous) == 1, list(data.iterdir())
    assert {r[0] for r in sqlite3.connect(previous[0]).execute("SELECT name FROM gateways")} == {
        "before",
        "after",
    }
    async with running_hub(data) as hub:
        assert await gateway_names(hub) == {"before"}


def test_restore_refuses_a_file_that_is_not_a_good_hub_backup(tmp_path: Path) -> None:
    data = tmp_path / "hub"
    data.mkdir()
    junk = tmp_path / "junk.sqlite3"
    junk.write_bytes(os.urandom(8192))
    with pytest.raises(BackupError, match="not a readable SQLite database"):
        restore_backup(junk, data, data / "hub.sqlite3")
    foreign = tmp_path / "foreign.sqlite3"
    sqlite3.connect(foreign).execute("CREATE TABLE notes (x)")
    with pytest.raises(BackupError, match="not a mission-control hub database"):
        restore_backup(foreign, data, data / "hub.sqlite3")
    newer = tmp_path / "newer.sqlite3"
    Database(newer).open()
    conn = sqlite3.connect(newer)
    conn.execute(
        "INSERT INTO schema_version (version, applied_at, program_version) VALUES (?, 0, '7.1.0')",
        (len(MIGRATIONS) + 3,),
    )
    conn.commit()
    conn.close()
    result = cli("restore", str(newer), "--data-dir", str(data))
    assert result.returncode == 1
    assert "written by mc-hub 7.1.0" in result.stderr and "run mc-hub 7.1.0" in result.stderr
    assert not (data / "hub.sqlite3").exists()  # nothing was put in place


async def test_a_database_newer_than_the_program_refuses_to_start_naming_the_version(
    tmp_path: Path,
) -> None:
    async with running_hub(tmp_path / "hub") as hub:
        path = hub.config.database_path
    conn = sqlite3.connect(path)
    conn.execute(
        "INSERT INTO schema_version (version, applied_at, program_version) VALUES (?, 0, '3.2.1')",
        (len(MIGRATIONS) + 1,),
    )
    conn.commit()
    conn.close()
    hub = Hub(hub_config(tmp_path / "hub"))
    with pytest.raises(HubStartError, match=r"written by mc-hub 3\.2\.1.*run mc-hub 3\.2\.1"):
        await hub.start()


def test_each_migration_records_the_program_version_and_is_preceded_by_a_backup(
    tmp_path: Path,
) -> None:
    """A database from an older mc-hub (schema one version behind) is backed up, then
    migrated; the backup holds the old schema and its rows."""
    from hub.store.backup import pre_migration_backup
    from missioncontrol.version import VERSION

    path = tmp_path / "hub.sqlite3"
    old = sqlite3.connect(path)
    old.execute("CREATE TABLE schema_version (version INTEGER NOT NULL, applied_at REAL)")
    for version, script in enumerate(MIGRATIONS[:-1], start=1):
        for statement in script:
            old.execute(statement)
        old.execute("INSERT INTO schema_version VALUES (?, 0)", (version,))
    old.execute("INSERT INTO gateways (id, name, created_at, updated_at) VALUES ('g', 'g', 0, 0)")
    old.commit()
    old.close()
    backups = tmp_path / "backups"
    db = Database(path, before_migration=pre_migration_backup(path, backups))
    db.open()
    asyncio.run(db.close())
    (made,) = list(backups.iterdir())
    old_version = len(MIGRATIONS) - 1
    assert made.name.startswith(f"pre-migration-v{old_version}-to-v{len(MIGRATIONS)}-")
    assert check_database(made).schema.version == old_version
    assert [r[0] for r in sqlite3.connect(made).execute("SELECT id FROM gateways")] == ["g"]
    rows = (
        sqlite3.connect(path)
        .execute("SELECT version, program_version FROM schema_version ORDER BY version")
        .fetchall()
    )
    assert rows[-1] == (len(MIGRATIONS), VERSION)


async def test_scheduled_backups_run_in_the_hub_and_keep_the_newest(tmp_path: Path) -> None:
    config = dataclasses.replace(
        hub_config(tmp_path / "hub"), backup_interval_s=0.05, backup_keep=2
    )
    hub = Hub(config)
    await hub.start()
    try:
        ok = hub.metrics.backups.labels("ok")
        await wait_for(lambda: ok._value.get() >= 4, what="four scheduled backups")
    finally:
        await hub.stop()
    kept = scheduled_backups(config.backup_dir)
    assert len(kept) == 2
    for path in kept:
        assert check_database(path).schema.version == len(MIGRATIONS)


# ------------------------------------------------------------------ the restore drill


async def test_restore_drill_backups_under_write_load_hold_every_write_acknowledged_before(
    tmp_path: Path,
) -> None:
    """Writers create gateways through the REST API without pause; backups are taken
    meanwhile. Each backup restores to a working hub holding every write whose 201 came
    before the backup began."""
    data = tmp_path / "hub"
    acked: list[tuple[float, str]] = []  # (monotonic time of the 201, gateway name)
    backups: list[tuple[float, Path]] = []  # (monotonic time the backup began, file)
    stop = asyncio.Event()

    async def writer(hub: Hub, session: aiohttp.ClientSession, worker: int) -> None:
        assert hub.addresses is not None
        n = 0
        while not stop.is_set():
            name = f"w{worker}-{n}"
            async with session.post(
                f"http://{hub.addresses.http}/api/v1/gateways",
                json={"name": name},
                headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
            ) as response:
                assert response.status == 201, await response.text()
            acked.append((time.monotonic(), name))
            n += 1

    async with running_hub(data) as hub, aiohttp.ClientSession() as session:
        writers = [asyncio.create_task(writer(hub, session, w)) for w in range(3)]
        try:
            for index in range(3):
                enough = 20 * (index + 1)
                await wait_for(lambda n=enough: len(acked) >= n, what="writes")
                began = time.monotonic()
                info = await asyncio.to_thread(
                    take_backup, hub.config.database_path, tmp_path / f"drill-{index}.sqlite3",
                    verify=True,
                )  # fmt: skip
                backups.append((began, info.path))
        finally:
            stop.set()
            await asyncio.gather(*writers)
        assert await gateway_names(hub) >= {name for _, name in acked}

    for began, path in backups:
        before = {name for at, name in acked if at < began}
        restore_backup(path, data, data / "hub.sqlite3")
        async with running_hub(data) as hub:
            held = await gateway_names(hub)
            assert before <= held, f"{len(before - held)} acknowledged writes missing"
            # A working hub: it takes new writes and is ready.
            await hub.store.create_gateway(f"after-{path.stem}", "after")
            assert hub.addresses is not None
            async with session_get(f"http://{hub.addresses.http}/readyz") as status:
                assert status == 200


class session_get:
    """`async with session_get(url) as status`: one GET in its own session."""

    def __init__(self, url: str) -> None:
        self.url = url

    async def __aenter__(self) -> int:
        self._session = aiohttp.ClientSession()
        async with self._session.get(self.url) as response:
            return response.status

    async def __aexit__(self, *exc: object) -> None:
        await self._session.close()
