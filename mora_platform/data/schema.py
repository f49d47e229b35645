"""The unified frame: the seed's 18 columns, one row per service per time step.

Context columns say which experiment/series a row belongs to and under what load;
the 12 metric columns (6 raw, 6 derived) are the measurements. Extra columns are tolerated.
``timestamp`` is a real ``datetime64[ns, UTC]`` after loading; the seed's relative step
labels (``t_0``, ``t_1``, ...) are kept in ``step`` and mapped onto a synthetic clock.
"""

from __future__ import annotations

TIMESTAMP = "timestamp"
EXPERIMENT_ID = "experiment_id"
SERVICE = "service"
SCENARIO = "scenario"
REPLICA_COUNT = "replica_count"
LOAD_USERS = "load_users"
STEP = "step"  # position inside one experiment / series, added by the loaders

CONTEXT_COLUMNS: tuple[str, ...] = (
    TIMESTAMP,
    EXPERIMENT_ID,
    SERVICE,
    SCENARIO,
    REPLICA_COUNT,
    LOAD_USERS,
)

RAW_METRICS: tuple[str, ...] = (
    "cpu_cores_value",
    "mem_bytes_value",
    "net_rx_bytes_value",
    "net_tx_bytes_value",
    "pod_restarts_value",
    "replica_count_value",
)

DERIVED_METRICS: tuple[str, ...] = (
    "node_cpu_util_value",
    "node_mem_util_value",
    "network_activity_rate_value",
    "processing_intensity_value",
    "service_stability_value",
    "resource_pressure_value",
)

METRIC_COLUMNS: tuple[str, ...] = RAW_METRICS + DERIVED_METRICS
UNIFIED_COLUMNS: tuple[str, ...] = CONTEXT_COLUMNS + METRIC_COLUMNS

# Optional per-pod columns (``mora collect`` writes them; the seed's 18 columns lack them). The
# metrics above are totals over the service's pods; a request is per pod, so the targets are per pod:
# the busiest pod's usage where these columns are present, else the total divided by the pods
# (``replica_count_value``), i.e. an even spread (see ``features.targets.pod_usage``).
CPU_BUSIEST_POD = "cpu_cores_busiest_pod_value"
MEM_BUSIEST_POD = "mem_bytes_busiest_pod_value"
POD_COLUMNS: tuple[str, ...] = (CPU_BUSIEST_POD, MEM_BUSIEST_POD)
# Optional column saying what the CPU / memory metrics of a row cover: the service's pods summed
# ("service", the default: what ``mora collect`` and the synthetic fleet write) or one pod already
# ("pod": sources that recorded a per-pod figure, such as the seed's Online Boutique experiments, whose
# memory does not grow with the replica count). A directory of files may declare it for all of them in
# ``DATASET_METADATA_FILE`` (``{"usage_scope": "pod"}``).
USAGE_SCOPE = "usage_scope"
SCOPE_SERVICE = "service"
SCOPE_POD = "pod"
USAGE_SCOPES: tuple[str, ...] = (SCOPE_SERVICE, SCOPE_POD)
DATASET_METADATA_FILE = "mora-dataset.json"

# Metrics that are usage and therefore can never be negative.
NON_NEGATIVE_METRICS: tuple[str, ...] = (
    "cpu_cores_value",
    "mem_bytes_value",
    "net_rx_bytes_value",
    "net_tx_bytes_value",
    "pod_restarts_value",
    "replica_count_value",
)

# Known scenarios get stable codes for the models; anything else maps to UNKNOWN_SCENARIO_CODE.
SCENARIO_CODES: dict[str, int] = {"browsing": 0, "checkout": 1, "steady": 2, "synthetic": 3}
UNKNOWN_SCENARIO_CODE = -1

# The seed's targets: a request is usage plus a fixed head-room factor.
CPU_TARGET_FACTOR = 1.2
MEMORY_TARGET_FACTOR = 1.15

# Clock assumed for the seed's relative ``t_N`` labels: the CSVs carry no wall time, 15 s is a common scrape interval.
DEFAULT_RELATIVE_STEP_SECONDS = 15
