"""Datasets in object storage: one Parquet object per service and part, Hive-style keys.

Layout: ``datasets/{name}/service={svc}/{part}.parquet``. Writing a part again replaces it, so an
import can be re-run safely; reading concatenates every part and drops duplicate rows
(same service, experiment and timestamp; the later part wins), so overlapping collections merge.

``write`` takes Kubernetes-style names only (``data.validation.kubernetes_name_problem``: lowercase
letters, digits, ``-`` and ``.``), for the dataset and for every service, and checks them all
before the first object is written, so a bad name never leaves a dataset half written. Keys for
reading stay as permissive as before (letters, digits, ``.``, ``_``, ``-``), minus ``.`` and ``..``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import pandas as pd

from mora_platform.data.schema import EXPERIMENT_ID, SERVICE, TIMESTAMP
from mora_platform.data.validation import check_kubernetes_name
from mora_platform.storage.errors import DatasetNotFoundError, ServiceNotInDatasetError
from mora_platform.storage.object_store import ObjectStore

DATASETS_PREFIX = "datasets/"
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_SORT_COLUMNS = (SERVICE, EXPERIMENT_ID, TIMESTAMP)


@dataclass(frozen=True)
class ServiceSummary:
    """What one service contributed to a dataset write."""

    service: str
    rows: int
    experiments: int
    start: pd.Timestamp | None
    end: pd.Timestamp | None


class DatasetStore:
    """Named datasets of unified frames, stored per service under ``datasets/`` in one bucket."""

    def __init__(self, store: ObjectStore) -> None:
        self.store = store

    # -- keys -----------------------------------------------------------------------------------

    @staticmethod
    def dataset_prefix(name: str) -> str:
        """``datasets/{name}/``."""
        return f"{DATASETS_PREFIX}{_check_name('dataset', name)}/"

    @classmethod
    def service_prefix(cls, name: str, service: str) -> str:
        """``datasets/{name}/service={service}/``."""
        return f"{cls.dataset_prefix(name)}service={_check_service(service)}/"

    @classmethod
    def part_key(cls, name: str, service: str, part: str) -> str:
        """``datasets/{name}/service={service}/{part}.parquet``."""
        return f"{cls.service_prefix(name, service)}{_check_name('part', part)}.parquet"

    # -- write ----------------------------------------------------------------------------------

    def write(self, name: str, frame: pd.DataFrame, *, part: str = "part-00000") -> list[ServiceSummary]:
        """Write one Parquet object per service; returns a summary per service, sorted by service.

        Every name is checked first (``InvalidNameError``, a ``ValueError``): nothing is written
        unless the dataset and every service have Kubernetes-style names."""
        check_kubernetes_name("dataset", name)
        _check_name("part", part)
        if SERVICE not in frame.columns:
            raise ValueError(f"dataset {name!r}: the frame has no {SERVICE!r} column")
        if frame.empty:
            raise ValueError(f"dataset {name!r}: the frame is empty, nothing to write")
        services = frame[SERVICE]
        if services.isna().any():
            raise ValueError(f"dataset {name!r}: {int(services.isna().sum())} row(s) have no service")
        names = sorted(services.astype(str).unique())
        keys = {}
        for service in names:  # all of them before the first write
            check_kubernetes_name("service", service, where=f"dataset {name!r}")
            keys[service] = self.part_key(name, service, part)
        summaries: list[ServiceSummary] = []
        for service in names:
            rows = _sorted(frame.loc[services.astype(str) == service])
            self.store.write_parquet(keys[service], rows)
            summaries.append(summarize(service, rows))
        return summaries

    # -- read -----------------------------------------------------------------------------------

    def read(self, name: str, service: str | None = None) -> pd.DataFrame:
        """All parts of the dataset (or of one service), deduplicated and sorted, with a RangeIndex."""
        prefix = self.dataset_prefix(name) if service is None else self.service_prefix(name, service)
        keys = [key for key in self.store.list_keys(prefix) if key.endswith(".parquet")]
        if not keys:
            services = self._services_or_none(name)
            if services is None:
                raise DatasetNotFoundError(name)
            raise ServiceNotInDatasetError(name, str(service), services)
        frames = [self.store.read_parquet(key) for key in keys]
        frame = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
        subset = [column for column in _SORT_COLUMNS if column in frame.columns]
        if subset:
            frame = frame.drop_duplicates(subset=subset, keep="last")
        return _sorted(frame)

    # -- listing --------------------------------------------------------------------------------

    def list_datasets(self) -> list[str]:
        """Names of every dataset in the bucket, sorted."""
        prefixes = [p for p in self.store.list_prefixes(DATASETS_PREFIX) if self.store.has_prefix(p)]
        return sorted(prefix[len(DATASETS_PREFIX) :].rstrip("/") for prefix in prefixes)

    def list_services(self, name: str) -> list[str]:
        """Services of one dataset, sorted; ``DatasetNotFoundError`` if there are none."""
        services = self._services_or_none(name)
        if services is None:
            raise DatasetNotFoundError(name)
        return services

    def list_parts(self, name: str, service: str) -> list[str]:
        """Part names (without ``.parquet``) stored for one service, sorted."""
        prefix = self.service_prefix(name, service)
        return sorted(
            key[len(prefix) : -len(".parquet")]
            for key in self.store.list_keys(prefix)
            if key.endswith(".parquet") and "/" not in key[len(prefix) :]
        )

    def has_part(self, name: str, service: str, part: str) -> bool:
        """Whether that part has been written (lets a collector skip work it already did)."""
        return self.store.exists(self.part_key(name, service, part))

    def delete(self, name: str) -> int:
        """Delete a whole dataset; returns how many objects went."""
        return self.store.delete_prefix(self.dataset_prefix(name))

    def _services_or_none(self, name: str) -> list[str] | None:
        prefix = self.dataset_prefix(name)
        marker = f"{prefix}service="
        entries = [entry for entry in self.store.list_prefixes(marker) if self.store.has_prefix(entry)]
        services = [entry[len(marker) :].rstrip("/") for entry in entries]
        services = [service for service in services if service]
        return sorted(services) or None


def summarize(service: str, rows: pd.DataFrame) -> ServiceSummary:
    """Rows, experiments and time span of one service's rows."""
    experiments = int(rows[EXPERIMENT_ID].nunique()) if EXPERIMENT_ID in rows.columns else 1
    start = end = None
    if TIMESTAMP in rows.columns and len(rows):
        stamps = pd.to_datetime(rows[TIMESTAMP])
        start, end = stamps.min(), stamps.max()
    return ServiceSummary(service=service, rows=len(rows), experiments=experiments, start=start, end=end)


def _sorted(frame: pd.DataFrame) -> pd.DataFrame:
    columns = [column for column in _SORT_COLUMNS if column in frame.columns]
    ordered = frame.sort_values(columns, kind="mergesort") if columns else frame
    return ordered.reset_index(drop=True)


def _check_name(kind: str, value: str) -> str:
    if not isinstance(value, str) or not _SAFE_NAME.match(value):
        raise ValueError(
            f"invalid {kind} name {value!r}: use letters, digits, '.', '_' or '-' (starting with a letter or digit)"
        )
    return value


def _check_service(service: str) -> str:
    if (
        not isinstance(service, str)
        or service in ("", ".", "..")
        or "/" in service
        or "\\" in service
        or service != service.strip()
    ):
        raise ValueError(
            f"invalid service name {service!r}: must be non-empty, not '.' or '..', without '/', '\\' "
            "or surrounding spaces"
        )
    return service
