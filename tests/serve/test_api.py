"""The service's HTTP side over real PostgreSQL, through Starlette's test client: the pages, the
seed's sync endpoint and its token, /api/status, /healthz and /metrics, and what must never show."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

import ophelia_db
from ophelia_db.serve import create_app
from tests.helpers import HEAD, REVISIONS, execute, registry
from tests.serve.conftest import SECRET, XSS, ServedFleet

TOKEN = "t0ken-for-tests-only"


def client(served: ServedFleet, *, token: str | None = TOKEN, cache_seconds: float = 0) -> TestClient:
    return TestClient(create_app(served.fleet, token=token, cache_seconds=cache_seconds))


def metrics(text: str) -> dict[tuple[str, str], float]:
    """``{(metric, instance): value}`` from the Prometheus text."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, sample.labels.get("instance", ""))] = sample.value
    return found


def test_the_fleet_page_shows_every_instance_and_escapes_what_it_shows(served_fleet: ServedFleet) -> None:
    page = client(served_fleet).get("/")
    assert page.status_code == 200
    html = page.text
    for name in ("hub", "inst1", "inst2"):
        assert f'data-instance="{name}" data-state="up-to-date"' in html
    assert "3 at head" in html and "instances per version" in html
    assert XSS not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html

    only_canary = client(served_fleet).get("/", params={"tag": "canary"}).text
    assert 'data-instance="inst1"' in only_canary and 'data-instance="inst2"' not in only_canary
    nothing = client(served_fleet).get("/", params={"state": "outdated"}).text
    assert "no instance matches" in nothing


def test_instance_and_run_pages_mask_secrets(served_fleet: ServedFleet) -> None:
    service = client(served_fleet)
    page = service.get("/instances/inst1")
    assert page.status_code == 200
    assert "SMTP_PASSWORD" in page.text and "***" in page.text and SECRET not in page.text
    assert HEAD in page.text and served_fleet.run_id in page.text  # history, then the run that did it
    run = service.get(f"/runs/{served_fleet.run_id}")
    assert run.status_code == 200 and "duration per instance (ms)" in run.text
    assert 'data-instance="inst2"' in run.text
    for path in ("/", "/api/status", "/metrics", f"/runs/{served_fleet.run_id}", "/instances/inst2"):
        assert SECRET not in service.get(path).text, path
    assert service.get("/instances/nope").status_code == 404
    assert service.get("/runs/nope").status_code == 404


def test_status_healthz_and_metrics(served_fleet: ServedFleet) -> None:
    service = client(served_fleet)
    assert service.get("/healthz").json() == {"ok": True}
    status = service.get("/api/status").json()
    assert status["head"] == HEAD and {row["state"] for row in status["instances"]} == {"up-to-date"}
    found = metrics(service.get("/metrics").text)
    assert found[("ophelia_schema_revisions_behind", "inst1")] == 0
    assert found[("ophelia_instance_up", "inst2")] == 1
    assert found[("ophelia_last_run_success", "inst1")] == 1
    assert found[("ophelia_last_run_timestamp_seconds", "inst1")] > 0

    ophelia_db.downgrade(served_fleet.fleet, served_fleet.fleet.get("inst1"), to="0004")
    found = metrics(service.get("/metrics").text)
    assert found[("ophelia_schema_revisions_behind", "inst1")] == 1
    assert 'data-instance="inst1" data-state="outdated"' in service.get("/").text


@pytest.mark.parametrize(
    ("headers", "code"),
    [({}, 401), ({"Authorization": "Bearer wrong"}, 401), ({"Authorization": f"Basic {TOKEN}"}, 401)],
)
def test_sync_endpoint_requires_its_token(
    served_fleet: ServedFleet, headers: dict[str, str], code: int
) -> None:
    answer = client(served_fleet).post(
        "/api/sync-schema-version", json={"subdomain": "inst1"}, headers=headers
    )
    assert answer.status_code == code and "bearer token" in answer.json()["error"]
    assert TOKEN not in answer.text


def test_sync_endpoint_disabled_without_a_token(served_fleet: ServedFleet) -> None:
    answer = client(served_fleet, token=None).post("/api/sync-schema-version", json={"subdomain": "inst1"})
    assert answer.status_code == 503 and "OPHELIA_SERVE_TOKEN" in answer.json()["error"]


def test_sync_endpoint_updates_the_hub_row(served_fleet: ServedFleet) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    service = client(served_fleet)
    execute(
        served_fleet.hub,
        "UPDATE public.instance_registry SET schema_version = '0002' WHERE subdomain = 'inst1'",
    )
    assert "says 0002" in service.get("/").text

    answer = service.post("/api/sync-schema-version", json={"subdomain": "inst1"}, headers=auth)
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"subdomain": "inst1", "schema_version": HEAD, "migrations_count": len(REVISIONS)}
    assert registry(served_fleet.hub)["inst1"]["schema_version"] == HEAD

    every = service.post("/api/sync-schema-version", json={"all": True}, headers=auth)
    assert every.status_code == 200 and {row["subdomain"] for row in every.json()["instances"]} == {
        "hub", "inst1", "inst2"
    }  # fmt: skip
    unknown = service.post("/api/sync-schema-version", json={"subdomain": "nope"}, headers=auth)
    assert unknown.status_code == 404 and "no instance 'nope'" in unknown.json()["error"]
    for body in (b"{not json", b'{"subdomain": 7}', b"[]"):
        bad = service.post("/api/sync-schema-version", content=body, headers=auth)
        assert bad.status_code == 400 and "Traceback" not in bad.text
