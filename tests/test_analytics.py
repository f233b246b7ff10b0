"""Analysts' SQL over their pseudonymised file: answered within limits, refused otherwise,
and every query on the audit trail (``warehouse/analytics.py``, ``POST /analytics/query``)."""

from __future__ import annotations

import json
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import duckdb
import pytest
import yaml
from test_api import Api, _api_over, _latest_seq

from warehouse import analytics, audit
from warehouse.access import AccessError, AccessLayer, User
from warehouse.curated_config import load_curated_config
from warehouse.policy import DEFAULT_POLICY, PolicyError, QueryLimits, load_policy
from warehouse.publish import SnapshotStore

AGE_BANDS = "select age_band, count(*) as people from person group by age_band order by age_band"
ANALYST = User("analyst", "analyst")


@pytest.fixture(scope="module")
def api(published_county, tmp_path_factory) -> Api:
    return _api_over(published_county, tmp_path_factory.mktemp("analytics_api"))


@pytest.fixture(scope="module")
def analyst_file(published_county) -> Path:
    store = published_county.store()
    current = store.current()
    assert current is not None and current.analyst is not None
    return store.path(current.analyst)


def _post(api: Api, user: str | None, body: dict, **headers: str):
    if user is not None:
        headers["Authorization"] = f"Bearer {api.tokens[user]}"
    return api.client.post("/analytics/query", json=body, headers=headers)


def _newest(api: Api) -> audit.AuditRecord:
    return audit.events(api.engine, limit=1, newest_first=True)[0]


def _limits(**overrides) -> QueryLimits:
    return QueryLimits(**{"max_rows": 100, "memory_limit_mb": 256} | overrides)


# -- answered, and on record ---------------------------------------------------------------


def test_an_analyst_query_is_answered_from_their_file_and_audited(
    api: Api, published_county, analyst_file: Path
):
    with duckdb.connect(str(analyst_file), read_only=True) as con:
        expected = [list(row) for row in con.execute(AGE_BANDS).fetchall()]
    before = _latest_seq(api.engine)

    response = _post(api, "analyst", {"sql": AGE_BANDS})

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["columns"] == [
        {"name": "age_band", "type": "VARCHAR"},
        {"name": "people", "type": "BIGINT"},
    ]
    assert body["rows"] == expected and body["row_count"] == len(expected) > 1
    assert body["truncated"] is False
    [event] = audit.events(api.engine, after_seq=before)
    current = published_county.store().current()
    policy = load_policy()
    assert (event.user_id, event.role, event.action, event.outcome) == (
        "analyst",
        "analyst",
        "query",
        "allowed",
    )
    assert (
        event.purpose == "research" and event.lawful_basis == policy.roles["analyst"].lawful_basis
    )
    assert event.tables == ("person",)
    assert event.detail["sql"] == AGE_BANDS
    assert event.detail["answer_columns"] == ["age_band", "people"]
    assert event.detail["rows"] == len(expected) and event.detail["truncated"] is False
    assert event.detail["analyst_file"] == current.analyst
    assert event.detail["snapshot"] == current.snapshot
    assert audit.verify(api.engine).ok


def test_the_answer_holds_no_person_id(api: Api, published_county):
    """The file is keyed by pseudonyms: no query can return the Family View's person ids."""
    with published_county.store().reader() as con:
        person_ids = {row[0] for row in con.execute("select person_id from person").fetchall()}
    response = _post(api, "analyst", {"sql": "select * from person", "max_rows": 100_000})
    assert response.status_code == 200, response.text
    assert response.json()["row_count"] == len(person_ids)
    assert not person_ids & set(json.dumps(response.json()["rows"]).replace('"', " ").split())


def test_rows_beyond_the_asked_limit_are_cut_and_say_so(api: Api):
    response = _post(api, "analyst", {"sql": "select person_key from person", "max_rows": 3})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["row_count"] == 3 and len(body["rows"]) == 3 and body["truncated"] is True
    event = _newest(api)
    assert event.detail["rows"] == 3 and event.detail["truncated"] is True


def test_the_role_limit_caps_what_is_asked(published_county, tmp_path: Path):
    config = tmp_path / "config"
    config.mkdir()
    policy = yaml.safe_load(DEFAULT_POLICY.read_text(encoding="utf-8"))
    policy["roles"]["analyst"]["query"] = {"max_rows": 2}
    (config / "policy.yaml").write_text(yaml.safe_dump(policy), encoding="utf-8")
    shutil.copy(DEFAULT_POLICY.with_name("curated.yaml"), config / "curated.yaml")
    access = AccessLayer(
        published_county.store(), load_policy(config / "policy.yaml"), published_county.engine()
    )
    answer = access.query(ANALYST, "research", "select person_key from person", max_rows=50)
    assert len(answer.rows) == 2 and answer.truncated


def test_queries_read_tables_through_views_ctes_and_query_functions(analyst_file: Path):
    cases = {
        "select count(*) from person": ["person"],  # answered from statistics when optimised
        "with t as (select * from timeline) select count(*) from t join person using "
        "(person_key)": ["timeline", "person"],
        "select * from query('select * from household')": ["household"],
        "select 1": [],
    }
    for sql, tables in cases.items():
        assert sorted(analytics.run(analyst_file, sql, _limits()).tables) == sorted(tables), sql


def test_values_come_back_as_json_holds_them(api: Api):
    sql = (
        "select date '2026-01-31' as d, 1.25::decimal(5, 2) as n, x'00ff'::blob as b, "
        "interval 90 minutes as i, [1, 2] as l, {'k': date '2020-02-29'} as s, "
        "'6f1c2f3e-1d2a-4b7c-9e0f-1a2b3c4d5e6f'::uuid as u, null as z, "
        "'nan'::double as nan, 'inf'::double as inf, 2::hugeint ** 100 as big"
    )
    response = _post(api, "analyst", {"sql": sql})
    assert response.status_code == 200, response.text
    assert response.json()["rows"] == [
        [
            "2026-01-31",
            1.25,
            "00ff",
            5400.0,
            [1, 2],
            {"k": "2020-02-29"},
            "6f1c2f3e-1d2a-4b7c-9e0f-1a2b3c4d5e6f",
            None,
            "nan",
            "inf",
            2.0**100,
        ]
    ]


# -- refused, and on record ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("sql", "told"),
    [
        ("select 1; select 2", "exactly one statement"),
        ("attach 'elsewhere.duckdb' as other", "only SELECT"),
        ("copy person to 'out.csv'", "only SELECT"),
        ("set threads = 2", "only SELECT"),
        ("install httpfs", "only SELECT"),
        ("create table copied as select * from person", "only SELECT"),
        ("pragma database_list", "only SELECT"),
        ("select * from read_csv('/etc/passwd')", "file system operations are disabled"),
        ("select * from glob('*')", "file system operations are disabled"),
        ("select * from no_such_table", "no_such_table"),
        ("selec 1", "does not parse"),
    ],
)
def test_anything_but_one_select_on_the_file_is_refused(api: Api, sql: str, told: str):
    before = _latest_seq(api.engine)
    response = _post(api, "analyst", {"sql": sql})
    assert response.status_code == 400, response.text
    assert told in response.json()["detail"]
    [event] = audit.events(api.engine, after_seq=before)
    assert (event.action, event.outcome, event.detail["sql"]) == ("query", "denied", sql)
    assert event.detail["reason"]


def test_a_failed_query_is_audited_without_the_value_duckdb_quotes(api: Api, analyst_file: Path):
    with duckdb.connect(str(analyst_file), read_only=True) as con:
        bands = {row[0] for row in con.execute("select distinct age_band from person").fetchall()}
    response = _post(api, "analyst", {"sql": "select cast(age_band as integer) from person"})
    assert response.status_code == 400
    told = response.json()["detail"]
    assert any(f"'{band}'" in told for band in bands), told  # the analyst sees which value
    event = _newest(api)
    assert event.outcome == "denied"
    assert event.detail["reason"] == "the query failed (ConversionException)"
    assert not any(f"'{band}'" in json.dumps(event.detail) for band in bands)


def test_a_query_past_its_time_is_stopped(analyst_file: Path):
    with pytest.raises(analytics.QueryTimeout, match="timeout_seconds"):
        analytics.run(
            analyst_file, "select count(*) from range(1000000000000)", _limits(timeout_seconds=0.2)
        )


def test_a_query_past_its_memory_is_refused(analyst_file: Path):
    with pytest.raises(analytics.QueryError, match="memory_limit_mb"):
        analytics.run(
            analyst_file, "select list(range) from range(100000000)", _limits(memory_limit_mb=64)
        )


def test_an_overlong_query_is_refused_before_it_is_parsed(analyst_file: Path):
    with pytest.raises(analytics.QueryError, match="longer than"):
        analytics.run(analyst_file, "select 1" + " " * analytics.MAX_SQL_CHARS, _limits())


@pytest.mark.parametrize("user", ["sw", "board", "dpo"])
def test_roles_reading_the_family_view_cannot_send_sql(api: Api, user: str):
    before = _latest_seq(api.engine)
    response = _post(api, user, {"sql": AGE_BANDS})
    assert response.status_code == 403, response.text
    [event] = audit.events(api.engine, after_seq=before)
    assert (event.user_id, event.action, event.outcome) == (user, "query", "denied")
    # A query is a read: a DPO's, made under subject_rights, is not a subject-rights action.
    log = api.get("/rights/actions", "dpo", params={"limit": 500}).json()["items"]
    assert "query" not in {item["action"] for item in log}


def test_a_purpose_not_the_roles_is_refused(api: Api):
    response = _post(api, "analyst", {"sql": AGE_BANDS}, **{"X-Purpose": "safeguarding"})
    assert response.status_code == 403
    assert (_newest(api).action, _newest(api).outcome) == ("query", "denied")


def test_no_token_is_401_and_audited(api: Api):
    before = _latest_seq(api.engine)
    assert _post(api, None, {"sql": AGE_BANDS}).status_code == 401
    [event] = audit.events(api.engine, after_seq=before)
    assert (event.user_id, event.outcome) == ("anonymous", "denied")


def test_nothing_published_is_unavailable(tmp_path: Path, published_county):
    access = AccessLayer(
        SnapshotStore(tmp_path / "published"), load_policy(), published_county.engine()
    )
    with pytest.raises(AccessError, match="no analysts' file") as caught:
        access.query(ANALYST, "research", AGE_BANDS)
    assert caught.value.status == 503


def test_query_limits_belong_to_pseudonymised_roles_only(tmp_path: Path):
    policy = yaml.safe_load(DEFAULT_POLICY.read_text(encoding="utf-8"))
    policy["roles"]["police"]["query"] = {"max_rows": 10}
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(policy), encoding="utf-8")
    with pytest.raises(PolicyError, match=r"roles\.police\.query") as caught:
        load_policy(path, curated=load_curated_config())
    assert str(path) in str(caught.value)


def test_an_analysts_file_gone_since_the_pointer_was_read_is_unavailable(
    published_county, tmp_path: Path
):
    """A publish or purge can move the file between reading the pointer and opening it:
    503 (retry), not a client error, and on record."""
    county = published_county.copy(tmp_path / "county")
    store = county.store()
    store.path(store.current().analyst).unlink()
    engine = county.engine()
    access = AccessLayer(store, load_policy(), engine)
    with pytest.raises(AccessError, match="cannot be opened now") as caught:
        access.query(ANALYST, "research", AGE_BANDS)
    assert caught.value.status == 503
    event = audit.events(engine, limit=1, newest_first=True)[0]
    assert (event.action, event.outcome) == ("query", "denied")


def test_queries_beyond_the_roles_concurrent_slots_are_refused_until_one_ends(
    api: Api, published_county, monkeypatch
):
    """An analyst's heavy queries must not take every core from the practitioners' reads:
    the role's ``query.concurrent`` (2 as shipped) run at once, the next is 429 and on
    record, and a slot frees when a query ends."""
    running, release = threading.Semaphore(0), threading.Event()
    real_run = analytics.run

    def held(*args, **kwargs):
        running.release()
        release.wait(30)
        return real_run(*args, **kwargs)

    monkeypatch.setattr(analytics, "run", held)
    slots = load_policy().roles["analyst"].query.concurrent
    with ThreadPoolExecutor(slots) as pool:
        first = [pool.submit(_post, api, "analyst", {"sql": AGE_BANDS}) for _ in range(slots)]
        for _ in range(slots):
            assert running.acquire(timeout=30), "a held query never started"
        before = _latest_seq(api.engine)
        refused = _post(api, "analyst", {"sql": AGE_BANDS})
        assert refused.status_code == 429, refused.text
        assert "query.concurrent" in refused.json()["detail"]
        [event] = audit.events(api.engine, after_seq=before)
        assert (event.action, event.outcome) == ("query", "denied")
        release.set()
        assert [f.result().status_code for f in first] == [200] * slots
    monkeypatch.setattr(analytics, "run", real_run)
    assert _post(api, "analyst", {"sql": AGE_BANDS}).status_code == 200
