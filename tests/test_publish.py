"""Publishing: readers keep the snapshot they opened during a publish and get the new one
after; a snapshot that fails its checks is never published; rollback; the last N kept."""

from __future__ import annotations

import threading

import pytest
from typer.testing import CliRunner

from pipelines.cli import app
from warehouse import audit, family_view
from warehouse.access import AccessLayer, User
from warehouse.policy import load_policy
from warehouse.publish import PublishError


def snapshot_name(con) -> str:
    value = con.sql("select value from snapshot_info where key = 'snapshot'").fetchall()[0][0]
    return value.strip('"')


@pytest.fixture
def county(published_county, tmp_path):
    return published_county.copy(tmp_path / "county")


def test_readers_keep_the_old_snapshot_throughout_a_publish_and_get_the_new_one_after(county):
    store = county.store()
    old = store.current().snapshot
    with store.reader() as reader:
        people = reader.sql("select count(*) from person").fetchall()[0][0]
        _, _, published = county.publish()  # the writer is not blocked by the open reader
        assert published.snapshot != old
        # The open reader still reads the old snapshot, whole.
        assert snapshot_name(reader) == old
        assert reader.sql("select count(*) from person").fetchall()[0][0] == people
    with store.reader() as after:
        assert snapshot_name(after) == published.snapshot
        assert after.sql("select count(*) from person").fetchall()[0][0] == people


def test_concurrent_readers_see_one_complete_snapshot_or_the_other(county):
    """Readers hammering the access layer while two publishes happen: every read is
    served from a complete snapshot (old or new), none fails, none sees a partial one."""
    store = county.store()
    access = AccessLayer(store, load_policy(), county.engine())
    user = User("reader", "dpo")
    old = store.current().snapshot
    with store.reader() as con:
        expected = con.sql("select count(*) from person").fetchall()[0][0]
    seen, errors, stop = set(), [], threading.Event()

    def read() -> None:
        while not stop.is_set():
            try:
                page = access.read(user, "audit", "person", limit=1)
                assert page.total == expected
                seen.add(access._snapshots.name)
            except Exception as exc:
                errors.append(exc)

    threads = [threading.Thread(target=read) for _ in range(3)]
    for thread in threads:
        thread.start()
    try:
        published = [county.publish()[2].snapshot for _ in range(2)]
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert not errors
    assert seen and seen <= {old, *published}
    access.read(user, "audit", "person", limit=1)
    assert access._snapshots.name == published[-1]
    assert audit.verify(county.engine()).ok


def test_a_snapshot_failing_its_checks_is_not_published(county, monkeypatch):
    store = county.store()
    before = store.current()
    leaky = family_view.analyst_tables

    def with_names(tables, key, withheld=()):
        out = leaky(tables, key, withheld)
        out["person"] = out["person"].with_columns(tables["person"]["surname"])
        return out

    monkeypatch.setattr(family_view, "analyst_tables", with_names)
    with pytest.raises(RuntimeError, match="analyst_file_pseudonymised"):
        county.publish()
    assert store.current() == before
    assert len(store.unpublished()) == 1


def test_rollback_returns_to_the_previous_snapshot_and_prune_keeps_n(county):
    store = county.store()
    first = store.current().snapshot
    second = county.publish()[2].snapshot
    assert store.rollback().snapshot == first
    with store.reader() as con:
        assert snapshot_name(con) == first
    for _ in range(store.keep + 1):
        county.publish()
    kept = sorted(p.name for p in store.snapshots.glob("family-view-*.duckdb"))
    assert len(kept) == store.keep
    assert store.current().snapshot in kept
    assert second not in kept
    assert len(list(store.snapshots.glob("analyst-*.duckdb"))) == store.keep
    assert (store.root / "analyst.duckdb").resolve().name == store.current().analyst


def test_sdv_rollback_and_snapshots(county):
    store = county.store()
    first = store.current().snapshot
    county.publish()
    args = ["--data-dir", str(county.data)]
    refused = CliRunner().invoke(app, ["rollback", *args])
    assert refused.exit_code == 2 and "--reason" in refused.output
    result = CliRunner().invoke(app, ["rollback", *args, "--reason", "bad attendance feed"])
    assert result.exit_code == 0, result.output
    assert first in result.output and store.current().snapshot == first
    events = audit.events(county.engine(), newest_first=True, limit=1)
    assert events[0].action == "rollback" and events[0].detail["reason"] == "bad attendance feed"
    listing = CliRunner().invoke(app, ["snapshots", *args])
    assert listing.exit_code == 0 and "current" in listing.output


def test_nothing_to_roll_back_to_is_a_clear_error(tmp_path):
    from warehouse.publish import SnapshotStore

    with pytest.raises(PublishError, match="nothing published"):
        SnapshotStore(tmp_path).rollback()


def test_sdv_publish_runs_the_dagster_job_and_switches_readers(county):
    store = county.store()
    before = store.current().snapshot
    result = CliRunner().invoke(app, ["publish", "--data-dir", str(county.data)])
    assert result.exit_code == 0, result.output
    assert "Published Family View" in result.output
    assert store.current().snapshot != before
    assert store.current().checks == {
        "schema_matches_dictionary": True,
        "every_person_curated": True,
        "one_summary_per_child": True,
        "analyst_file_pseudonymised": True,
    }


def test_sdv_publish_gives_the_analysts_group_their_file_when_config_says(
    county, tmp_path, monkeypatch
):
    """The Dagster job publishes under ``publishing.analysts_group_read`` as the CLI does."""
    import shutil

    import yaml

    from warehouse.sources import DEFAULT_CONFIG_DIR

    config_dir = tmp_path / "config"
    shutil.copytree(DEFAULT_CONFIG_DIR, config_dir)
    curated = config_dir / "curated.yaml"
    data = yaml.safe_load(curated.read_text(encoding="utf-8"))
    data["publishing"]["analysts_group_read"] = True
    curated.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    monkeypatch.setenv("SDV_CONFIG_DIR", str(config_dir))

    result = CliRunner().invoke(app, ["publish", "--data-dir", str(county.data)])
    assert result.exit_code == 0, result.output
    current = county.store().current()
    assert _mode(county.published / "snapshots" / current.analyst) == 0o640
    assert _mode(county.published / "snapshots" / current.snapshot) == 0o600


def _mode(path) -> int:
    import stat

    return stat.S_IMODE(path.stat().st_mode)


def _modes(county) -> dict[str, int]:
    """Every file in the published snapshots folder, by name, with its mode."""
    return {p.name: _mode(p) for p in (county.published / "snapshots").iterdir() if p.is_file()}


def test_every_data_file_is_the_service_accounts_alone_by_default(county):
    """Under the common umask 022 every new file would be readable by every local user.
    By default no data file is readable beyond the service account, the analysts' file
    included: a read of a file cannot be audited, so analysts come in through the API."""
    import os

    from warehouse.serving import serving_path
    from warehouse.store import connect

    previous = os.umask(0o022)
    try:
        built, _, published = county.publish()
        connect(county.warehouse).close()
    finally:
        os.umask(previous)

    assert _mode(built.snapshot) == 0o600
    assert _mode(serving_path(built.snapshot)) == 0o600
    assert _mode(built.analyst) == 0o600
    assert _mode(county.warehouse) == 0o600
    assert published.analyst == built.analyst.name
    assert set(_modes(county).values()) == {0o600}


def test_analysts_group_read_opens_the_analysts_files_alone_and_follows_the_config(county):
    """``publishing.analysts_group_read`` gives the analysts' group their file (0640) and
    nothing else; a purge's rewritten copy stays as readable as the file it replaced;
    turning the setting off closes every kept analysts' file at the next publish."""
    import os

    from family_view_county import PSEUDONYM_KEY

    from warehouse.curated_config import load_curated_config
    from warehouse.file_modes import ANALYST_PREFIX
    from warehouse.publish import person_record_ids
    from warehouse.purge import purge_published

    config = load_curated_config()
    opened = config.model_copy(
        update={"publishing": config.publishing.model_copy(update={"analysts_group_read": True})}
    )
    previous = os.umask(0o022)
    try:
        county.publish(opened)
        county.publish(opened)

        modes = _modes(county)
        analysts = {n for n in modes if n.startswith(ANALYST_PREFIX)}
        assert len(analysts) == config.publishing.keep
        assert {modes[n] for n in analysts} == {0o640}  # the kept older ones too
        assert {m for n, m in modes.items() if n not in analysts} == {0o600}

        # A purge rewrites files under new names: none comes back more or less readable.
        with county.store().reader() as con:
            person = con.sql("select person_id from person order by person_id limit 1")
            records = person_record_ids(con, person.fetchall()[0][0])
        counts = purge_published(county.published, records, PSEUDONYM_KEY)
        assert counts, "the purge must have rewritten files"
        after = _modes(county)
        assert set(after) != set(modes)  # renamed: these are the rewritten copies
        assert {m for n, m in after.items() if n.startswith(ANALYST_PREFIX)} == {0o640}
        assert {m for n, m in after.items() if not n.startswith(ANALYST_PREFIX)} == {0o600}

        county.publish(config)  # the setting off again
    finally:
        os.umask(previous)
    assert set(_modes(county).values()) == {0o600}
    assert _mode(county.warehouse) == 0o600

    # Rolling back under the opened setting gives the group their kept files back.
    county.store(opened).rollback()
    modes = _modes(county)
    assert {m for n, m in modes.items() if n.startswith(ANALYST_PREFIX)} == {0o640}
    assert {m for n, m in modes.items() if not n.startswith(ANALYST_PREFIX)} == {0o600}
