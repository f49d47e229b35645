"""Benchmark: are the served requests per pod? The recommendation against each pod's usage that followed.

For each seeded synthetic service (``data.synthetic.generate_fleet``: CPU and memory are totals over
the Deployment's pods, the replica count moves with load like an HPA) the platform is trained on the
first ``--train-days`` and asked, as ``mora recommend`` asks, with the service's newest rows. Its
answer is compared with the next ``--hold-hours`` of usage:

- per pod: each row's total divided by its pods (the generator spreads evenly), its p99 and max;
- for the whole service: the total's p99.

A per-pod request near the per-pod p99 (ratio about 1) and far below the service total is right; the
old whole-service answer sat between the two (1.6-1.9x the per-pod p99 on a service averaging 4 pods).
The request compared is the one *at the pods the history ran with* (the replica policy may then spread
the same total over another count, which the table shows too).

    .venv/bin/python benchmarks/per_pod_units.py [--services 4] [--train-days 3] [--hold-hours 6]

Writes ``benchmarks/results/per_pod_units-<UTC time>.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

MIB = 2**20
TINY: dict[str, Any] = {
    "seq_len": 12,
    "lstm": {"units": [8], "dense_units": 4, "epochs": 2, "batch_size": 64, "patience": 1, "lr_patience": 1},
    "prophet": {"grid_steps": 32},
    "calibration_horizon_steps": 12,
    "coverage": 0.99,
    "cpu_floor_millicores": 1,
    "memory_floor_mib": 1,
    "seed": 0,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, default=4)
    parser.add_argument("--train-days", type=float, default=3.0)
    parser.add_argument("--hold-hours", type=float, default=6.0)
    parser.add_argument("--results", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args()

    import numpy as np
    import pandas as pd

    from mora_platform.data.synthetic import generate_fleet
    from mora_platform.training.bundle import ServiceModel
    from mora_platform.training.config import TrainingConfig
    from mora_platform.training.service_trainer import train_service

    step = 300
    days = args.train_days + args.hold_hours / 24
    fleet = generate_fleet(n_services=args.services, days=days, step_seconds=step, seed=11)
    cut = pd.Timestamp(fleet["timestamp"].min()) + pd.Timedelta(days=args.train_days)
    rows: list[dict[str, Any]] = []
    work = args.results / "per-pod-bundles"
    for service, frame in fleet.groupby("service", sort=True):
        started = time.perf_counter()
        past, future = frame[frame["timestamp"] < cut], frame[frame["timestamp"] >= cut]
        train_service(past, str(service), TrainingConfig.model_validate(TINY), work / str(service))
        model = ServiceModel.load(work / str(service))
        rec = model.recommend(history=past.tail(2000))
        decision = rec.replica_decision
        assert decision is not None
        pods = future["replica_count_value"].clip(lower=1)
        per_pod = {"cpu": future["cpu_cores_value"] / pods, "memory": future["mem_bytes_value"] / pods}
        total = {"cpu": future["cpu_cores_value"], "memory": future["mem_bytes_value"]}
        # the request at the pods the history ran with (undo the replica policy's spread for CPU)
        spread = (decision.current or 1) / (decision.recommended or decision.current or 1)
        cpu_req = (rec.recommendations.cpu_cores or 0.0) / spread
        mem_req = float(rec.recommendations.memory_bytes or 0)
        row = {
            "service": str(service),
            "pods_mean": round(float(future["replica_count_value"].mean()), 2),
            "pods_now": decision.current,
            "replicas_recommended": decision.recommended,
            "cpu_request_m": round(1000 * cpu_req, 1),
            "cpu_served_m": rec.recommendations.cpu_millicores,
            "cpu_pod_p99_m": round(1000 * float(np.percentile(per_pod["cpu"], 99)), 1),
            "cpu_ratio_to_pod_p99": round(cpu_req / float(np.percentile(per_pod["cpu"], 99)), 2),
            "cpu_ratio_to_total_p99": round(cpu_req / float(np.percentile(total["cpu"], 99)), 2),
            "memory_request_mib": round(mem_req / MIB, 1),
            "memory_pod_p99_mib": round(float(np.percentile(per_pod["memory"], 99)) / MIB, 1),
            "memory_ratio_to_pod_p99": round(mem_req / float(np.percentile(per_pod["memory"], 99)), 2),
            "memory_ratio_to_total_p99": round(mem_req / float(np.percentile(total["memory"], 99)), 2),
            "seconds": round(time.perf_counter() - started, 1),
        }
        rows.append(row)
    args.results.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out = args.results / f"per_pod_units-{stamp}.json"
    out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows}, indent=2))
    columns = list(rows[0])
    print(" | ".join(columns))
    for row in rows:
        print(" | ".join(str(row[c]) for c in columns))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
