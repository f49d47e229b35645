"""`mora data import` / `mora data list` on the shared Online Boutique data, against the real S3 server."""

from __future__ import annotations

import csv
import secrets
from collections import Counter
from pathlib import Path

import pytest
from pandas.testing import assert_frame_equal
from typer.testing import CliRunner

from mora_platform.cli import app
from mora_platform.data.loaders import load_path
from mora_platform.settings import MoraSettings
from mora_platform.storage.datasets import DatasetStore
from mora_platform.storage.object_store import ObjectStore

pytestmark = pytest.mark.integration

runner = CliRunner()


def _env(settings: MoraSettings, home: Path) -> dict[str, str]:
    access_key, secret_key = settings.s3_credentials()
    assert access_key and secret_key
    return {
        "MORA_HOME": str(home),
        "MORA_S3_ENDPOINT_URL": settings.s3_endpoint_url,
        "MORA_S3_BUCKET": settings.s3_bucket,
        "MORA_S3_ACCESS_KEY": access_key,
        "MORA_S3_SECRET_KEY": secret_key,
        "COLUMNS": "200",
    }


def _raw_row_counts(directory: Path) -> Counter[str]:
    """Data rows per service, counted straight from the CSVs (independent of the loader)."""
    counts: Counter[str] = Counter()
    for path in sorted(directory.glob("*.csv")):
        with path.open(newline="") as handle:
            for row in csv.DictReader(handle):
                counts[row["service"]] += 1
    return counts


def test_import_reports_seven_services_and_every_row(
    shared_data_dir: Path,
    s3_settings: MoraSettings,
    object_store: ObjectStore,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)  # no stray .env / .mora/stack.env from the working tree
    env = _env(s3_settings, tmp_path / ".mora")
    name = "boutique-" + secrets.token_hex(3)
    expected = _raw_row_counts(shared_data_dir)
    total = sum(expected.values())
    assert len(expected) == 7 and total >= 3281  # the shipped subset, or the full set

    result = runner.invoke(app, ["data", "import", str(shared_data_dir), "--dataset", name], env=env)
    assert result.exit_code == 0, result.output
    assert "7 services" in result.output
    assert str(total) in result.output
    for service, rows in expected.items():
        line = next(line for line in result.output.splitlines() if f" {service} " in line)
        assert f" {rows} " in line, line
    assert "0 skipped" in result.output
    assert f"s3://{s3_settings.s3_bucket}/datasets/{name}/" in result.output

    datasets = DatasetStore(object_store)
    assert datasets.list_services(name) == sorted(expected)
    assert all(datasets.list_parts(name, service) == ["part-00000"] for service in expected)
    stored = datasets.read(name)
    assert stored.groupby("service").size().to_dict() == dict(expected)
    assert_frame_equal(stored, load_path(shared_data_dir).frame)
    assert_frame_equal(
        datasets.read(name, "frontend"), stored[stored["service"] == "frontend"].reset_index(drop=True)
    )

    listing = runner.invoke(app, ["data", "list"], env=env)
    assert listing.exit_code == 0, listing.output
    line = next(line for line in listing.output.splitlines() if name in line)
    assert " 7 " in line and "adservice" in line

    detail = runner.invoke(app, ["data", "list", "--dataset", name], env=env)
    assert detail.exit_code == 0, detail.output
    for service in expected:
        assert service in detail.output


def test_import_of_nothing_usable_fails(
    s3_settings: MoraSettings, object_store: ObjectStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "frontend_x.csv").write_text("timestamp,service\nt_0,frontend\n")
    (bad / "empty.csv").write_text("")
    name = "broken-" + secrets.token_hex(3)
    result = runner.invoke(
        app, ["data", "import", str(bad), "--dataset", name], env=_env(s3_settings, tmp_path)
    )
    assert result.exit_code == 1
    assert "frontend_x.csv" in result.output and "empty.csv" in result.output
    assert "nothing loaded" in result.output
    assert name not in DatasetStore(object_store).list_datasets()


def test_import_with_wrong_secret_says_so(
    s3_settings: MoraSettings, tmp_path: Path, shared_data_dir: Path
) -> None:
    bogus = "bogus-" + secrets.token_hex(8)
    env = _env(s3_settings, tmp_path) | {"MORA_S3_SECRET_KEY": bogus}
    result = runner.invoke(app, ["data", "import", str(shared_data_dir), "--dataset", "never"], env=env)
    assert result.exit_code == 1
    assert "refused the credentials" in result.output and "SignatureDoesNotMatch" in result.output
    assert bogus not in result.output


def test_list_unknown_dataset_is_a_clear_error(s3_settings: MoraSettings, tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["data", "list", "--dataset", "no-such-dataset"], env=_env(s3_settings, tmp_path)
    )
    assert result.exit_code == 1
    assert "dataset 'no-such-dataset' not found" in result.output
