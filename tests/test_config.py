"""Source configuration: the shipped configs are valid; broken ones fail naming file and key."""

import shutil
from pathlib import Path

import pytest
import yaml

from warehouse.curated_config import (
    DEFAULT_CURATED_CONFIG,
    CuratedConfigError,
    load_curated_config,
)
from warehouse.sources import DEFAULT_CONFIG_DIR, ConfigError, load_source, load_sources

SPEC_PERSON_TABLES = {
    ("council_csc", "people"),
    ("council_eh", "people"),
    ("police", "persons"),
    ("health", "patients"),
    ("school", "pupils"),
    ("school", "contacts"),
}


def test_shipped_configs_cover_the_spec(sources):
    assert set(sources) == {"council_csc", "council_eh", "police", "health", "school"}
    person_tables = {
        (s.name, t) for s in sources.values() for t, c in s.tables.items() if c.person_level
    }
    assert person_tables == SPEC_PERSON_TABLES
    for source in sources.values():
        agreement = source.agreement
        assert agreement.controller and agreement.purpose
        assert agreement.lawful_basis.article_6.startswith("6(1)")
        # Every source here carries special category or criminal offence data.
        assert (
            agreement.lawful_basis.article_9_condition
            or agreement.lawful_basis.article_10_condition
        )


def write_config(tmp_path: Path, name: str, mutate) -> Path:
    data = yaml.safe_load((DEFAULT_CONFIG_DIR / "sources" / f"{name}.yaml").read_text())
    mutate(data)
    path = tmp_path / "sources" / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.mark.parametrize(
    ("mutate", "key"),
    [
        (lambda d: d["agreement"].pop("lawful_basis"), "agreement.lawful_basis"),
        (lambda d: d["agreement"]["retention"].update(rule="forever"), "agreement.retention"),
        (
            lambda d: d["tables"]["persons"]["columns"]["dob"].update(type="day"),
            "tables.persons.columns.dob.type",
        ),
        (lambda d: d.update(encoding="ebcdic"), "encoding"),
        (lambda d: d["tables"]["persons"].update(local_key=["nope"]), "tables.persons"),
        (
            lambda d: (
                d["tables"]["persons"]["renames"].update({"Surname": "family"})
                if "renames" in d["tables"]["persons"]
                else d["tables"]["persons"].update(renames={"Surname": "family"})
            ),
            "tables.persons",
        ),
        (lambda d: d["tables"]["persons"].update(colums={}), "tables.persons.colums"),
        (lambda d: d.update(freshness_days=0), "freshness_days"),
    ],
    ids=[
        "no-lawful-basis",
        "bad-retention",
        "bad-type",
        "bad-encoding",
        "bad-local-key",
        "bad-rename",
        "typo-key",
        "zero-freshness",
    ],
)
def test_invalid_config_names_file_and_key(tmp_path, mutate, key):
    path = write_config(tmp_path, "police", mutate)
    with pytest.raises(ConfigError) as err:
        load_source(path)
    message = str(err.value)
    assert str(path) in message
    assert f"key '{key}" in message


@pytest.mark.parametrize(
    ("name", "mutate", "problem"),
    [
        (
            "police",
            lambda d: d["agreement"]["lawful_basis"].pop("article_10_condition"),
            "source 'police': table 'persons' column 'pnc_id' is criminal_offence but "
            "agreement.lawful_basis has no article_10_condition",
        ),
        (
            "health",
            lambda d: d["agreement"]["lawful_basis"].pop("article_9_condition"),
            "source 'health': table 'encounters' column 'reason' is special_category but "
            "agreement.lawful_basis has no article_9_condition",
        ),
        (
            "police",
            lambda d: d["tables"]["persons"].pop("local_key"),
            "source 'police': table 'persons' is person_level but has no local_key",
        ),
    ],
    ids=["offence-data-without-art10", "special-category-without-art9", "person-without-key"],
)
def test_agreement_gaps_are_refused_naming_source_table_and_column(tmp_path, name, mutate, problem):
    """Sensitive columns need the agreement's condition for them, and a person table needs a
    local key (retention and erasure find a person's rows by it)."""
    path = write_config(tmp_path, name, mutate)
    with pytest.raises(ConfigError) as err:
        load_source(path)
    assert str(path) in str(err.value) and problem in str(err.value)


def test_unreadable_yaml_and_wrong_name(tmp_path):
    bad = tmp_path / "sources" / "police.yaml"
    bad.parent.mkdir(parents=True)
    bad.write_text("tables: [unclosed")
    with pytest.raises(ConfigError, match=r"police\.yaml: not valid YAML"):
        load_sources(tmp_path)
    path = write_config(tmp_path, "police", lambda d: d.update(name="polce"))
    with pytest.raises(ConfigError, match="key 'name'"):
        load_source(path)


def test_empty_config_dir_fails(tmp_path):
    with pytest.raises(ConfigError, match="no source configs"):
        load_sources(tmp_path)


def test_copy_of_shipped_config_loads(tmp_path):
    shutil.copytree(DEFAULT_CONFIG_DIR, tmp_path / "config")
    assert set(load_sources(tmp_path / "config")) == set(load_sources())


# --- curated.yaml: organisations declare their type --------------------------------------


def test_shipped_organisations_declare_their_types():
    declared = {(e.person_table, e.organisation_type) for e in load_curated_config().organisations}
    assert declared == {("school.pupils", "school"), ("health.patients", "gp_practice")}


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, "organisations.1.organisation_type: Field required"),
        ("GP practice", "health.patients: organisation type 'GP practice' must be a lower-case"),
        ("", "health.patients: organisation type '' must be a lower-case"),
        ("gp-practice", "health.patients: organisation type 'gp-practice' must be a lower-case"),
    ],
    ids=["missing", "words", "empty", "hyphen"],
)
def test_bad_organisation_type_is_refused_naming_file_entry_and_value(tmp_path, value, expected):
    """A type no role could scope to (or none at all) fails at load, naming the entry and
    what it says, instead of curating rows no scope will ever match."""
    data = yaml.safe_load(DEFAULT_CURATED_CONFIG.read_text(encoding="utf-8"))
    entry = data["organisations"][1]
    assert entry["person_table"] == "health.patients"
    if value is None:
        del entry["organisation_type"]
    else:
        entry["organisation_type"] = value
    path = tmp_path / "curated.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    with pytest.raises(CuratedConfigError) as err:
        load_curated_config(path)
    message = str(err.value)
    assert message.startswith(f"{path}: ") and "organisations.1.organisation_type" in message
    assert expected in message


# --- curated.yaml: who may open the analysts' file ---------------------------------------


@pytest.mark.parametrize("group_read", [False, True])
def test_analysts_group_read_reaches_every_store_the_product_builds(tmp_path, group_read):
    """The CLI's stores (``Settings.snapshot_store``) and the Dagster resources publish
    under the same ``publishing`` section, so the setting cannot hold for one and not the
    other."""
    from pipelines.resources import build_resources
    from pipelines.settings import Settings

    config_dir = tmp_path / "config"
    shutil.copytree(DEFAULT_CONFIG_DIR, config_dir)
    path = config_dir / "curated.yaml"
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert data["publishing"]["analysts_group_read"] is False  # shipped: audited reads only
    data["publishing"]["analysts_group_read"] = group_read
    data["publishing"]["keep"] = 4
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    data_dir = tmp_path / "data"
    settings = Settings(data_dir, data_dir / "landing", data_dir / "w.duckdb", config_dir)

    store = settings.snapshot_store()
    assert (store.analysts_group_read, store.keep) == (group_read, 4)
    resource = build_resources(settings)["family_view"]
    assert (resource.analysts_group_read, resource.keep) == (group_read, 4)


def test_analysts_group_read_must_be_a_yes_or_no(tmp_path):
    data = yaml.safe_load(DEFAULT_CURATED_CONFIG.read_text(encoding="utf-8"))
    data["publishing"]["analysts_group_read"] = "sometimes"
    path = tmp_path / "curated.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    with pytest.raises(CuratedConfigError) as err:
        load_curated_config(path)
    assert str(err.value).startswith(f"{path}: ")
    assert "publishing.analysts_group_read" in str(err.value)
