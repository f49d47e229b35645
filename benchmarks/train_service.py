"""Benchmark: train every Online Boutique service and a synthetic one with the default config.

Prints and writes (``benchmarks/results/train_service.json``) per service: training seconds, bundle
size, test MAE and coverage per target, load and recommend latency; then LSTM single-head (one
network per target, the seed) vs one multi-output network: fit seconds and test MAE.

    .venv/bin/python benchmarks/train_service.py [--data DIR] [--services a,b] [--no-compare]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = Path(os.environ.get("MORA_SHARED_DATA", REPO.parent / "shared" / "data" / "online-boutique"))
SYNTHETIC = "synthetic-14d"


def _frames(data: Path, services: list[str] | None) -> dict[str, pd.DataFrame]:
    from mora_platform.data.loaders import load_path
    from mora_platform.data.synthetic import generate_fleet

    loaded = load_path(data, usage_scope="pod").frame  # the seed's figures are per pod
    frames = {str(name): group.reset_index(drop=True) for name, group in loaded.groupby("service", sort=True)}
    # The same generator as `mora data synth`: daily/weekly cycles, bursts, memory growth, restarts.
    frames[SYNTHETIC] = generate_fleet(1, days=14, step_seconds=300, seed=0).assign(service=SYNTHETIC)
    return {k: v for k, v in frames.items() if services is None or k in services}


def _bundle_bytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.iterdir() if p.is_file())


def _train_one(service: str, frame: pd.DataFrame, root: Path) -> dict[str, Any]:
    from mora_platform.training.bundle import ServiceModel
    from mora_platform.training.config import TrainingConfig
    from mora_platform.training.service_trainer import train_service

    out = root / service
    started = time.perf_counter()
    report = train_service(frame, service, TrainingConfig(), out)
    wall = time.perf_counter() - started
    tick = time.perf_counter()
    model = ServiceModel.load(out)
    load_seconds = time.perf_counter() - tick
    model.recommend()
    latencies = []
    for _ in range(200):
        tick = time.perf_counter()
        model.recommend(context={"load_users": 50})
        latencies.append((time.perf_counter() - tick) * 1000)
    return {
        "service": service,
        "rows": report.data_window.rows,
        "experiments": report.data_window.experiments,
        "seconds": round(wall, 2),
        "timings": report.timings,
        "bundle_bytes": _bundle_bytes(out),
        "files": {p.name: p.stat().st_size for p in sorted(out.iterdir())},
        "members": report.members,
        "fallbacks": report.fallbacks,
        "confidence": round(report.confidence, 3),
        "test": {t: m.model_dump() for t, m in report.metrics.items()},
        "load_seconds": round(load_seconds, 3),
        "recommend_ms_p50": round(statistics.median(latencies), 3),
        "recommend_ms_p95": round(float(np.percentile(latencies, 95)), 3),
    }


def _compare_lstm(service: str, frame: pd.DataFrame) -> dict[str, Any]:
    from mora_platform.models.config import LSTMConfig
    from mora_platform.training.config import TrainingConfig
    from mora_platform.training.service_trainer import fit_service

    result: dict[str, Any] = {"service": service}
    for label, multi in (("single_head", False), ("multi_output", True)):
        config = TrainingConfig(members=["lstm"], lstm=LSTMConfig(multi_output=multi))
        fitted = fit_service(frame, service, config)
        lstm = fitted.ensemble.members["lstm"]
        result[label] = {
            "fit_seconds": float(getattr(lstm, "training", {}).get("seconds", float("nan"))),
            "epochs": getattr(lstm, "training", {}).get("epochs"),
            "test_mae": {t: m.mae for t, m in fitted.report.metrics.items()},
            "test_coverage": {t: m.coverage for t, m in fitted.report.metrics.items()},
        }
    return result


def _forward_latency(root: Path) -> dict[str, float]:
    """One window through the saved LSTM: NumPy forward pass vs ``model(x, training=False)``."""
    from mora_platform.models.lstm import LSTMForecaster

    candidates = [d for d in root.iterdir() if (d / "lstm.keras").is_file()]
    if not candidates:
        return {}
    lstm = LSTMForecaster.load(candidates[0])
    x = np.random.default_rng(0).random((1, lstm.seq_len, 14))
    out: dict[str, float] = {}
    for engine in ("numpy", "keras"):
        lstm.forward(x, engine=engine)
        runs = []
        for _ in range(50):
            tick = time.perf_counter()
            lstm.forward(x, engine=engine)
            runs.append((time.perf_counter() - tick) * 1000)
        out[f"{engine}_ms_p50"] = round(statistics.median(runs), 3)
    return out


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _print(results: dict[str, Any]) -> None:
    print(f"\nTF import + thread set-up: {results['tensorflow_import_seconds']:.1f} s (once per process)")
    header = f"{'service':24} {'rows':>5} {'sec':>6} {'KB':>6} {'cpu MAE(m)':>10} {'cov':>5} {'mem MAE(MiB)':>12} {'cov':>5} {'rep MAE':>7} {'cov':>5} {'rec ms':>6}"
    print(header)
    print("-" * len(header))
    for r in results["services"]:
        t = r["test"]
        cpu_mae = t["cpu"]["mae"] * 1000 if t["cpu"]["mae"] is not None else None
        mem_mae = t["memory"]["mae"] / 2**20 if t["memory"]["mae"] is not None else None
        print(
            f"{r['service']:24} {r['rows']:>5} {r['seconds']:>6.1f} {r['bundle_bytes'] / 1024:>6.0f} "
            f"{_fmt(cpu_mae, '.3f'):>10} {_fmt(t['cpu']['coverage'], '.2f'):>5} "
            f"{_fmt(mem_mae, '.2f'):>12} {_fmt(t['memory']['coverage'], '.2f'):>5} "
            f"{_fmt(t['replicas']['mae'], '.3f'):>7} {_fmt(t['replicas']['coverage'], '.2f'):>5} {r['recommend_ms_p50']:>6.2f}"
        )
    if results["lstm_comparison"]:
        print("\nLSTM only: single head per target (seed) vs one multi-output network")
        print(
            f"{'service':24} {'single s':>8} {'multi s':>8} {'cpu MAE s/m (m)':>18} {'mem MAE s/m (MiB)':>20} {'rep MAE s/m':>14}"
        )
        for c in results["lstm_comparison"]:
            s, m = c["single_head"], c["multi_output"]
            print(
                f"{c['service']:24} {s['fit_seconds']:>8.1f} {m['fit_seconds']:>8.1f} "
                f"{s['test_mae']['cpu'] * 1000:>8.3f}/{m['test_mae']['cpu'] * 1000:<9.3f} "
                f"{s['test_mae']['memory'] / 2**20:>9.2f}/{m['test_mae']['memory'] / 2**20:<10.2f} "
                f"{s['test_mae']['replicas']:>6.3f}/{m['test_mae']['replicas']:<7.3f}"
            )
    if results.get("lstm_forward"):
        print(f"\nLSTM one-window inference: {results['lstm_forward']}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--services", default=None, help="comma-separated subset")
    parser.add_argument("--no-compare", action="store_true", help="skip the single-head vs multi-output runs")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "train_service.json")
    args = parser.parse_args()

    tick = time.perf_counter()
    from mora_platform.models.tf_runtime import configure_tensorflow

    configure_tensorflow(1)
    tf_seconds = time.perf_counter() - tick
    frames = _frames(args.data, args.services.split(",") if args.services else None)
    results: dict[str, Any] = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "loadavg_start": os.getloadavg(),
        },
        "tensorflow_import_seconds": round(tf_seconds, 2),
        "services": [],
        "lstm_comparison": [],
    }
    with tempfile.TemporaryDirectory(prefix="mora-bench-") as tmp:
        root = Path(tmp)
        for service, frame in frames.items():
            print(f"training {service} ({len(frame)} rows) ...", flush=True)
            results["services"].append(_train_one(service, frame, root))
        results["lstm_forward"] = _forward_latency(root)
    if not args.no_compare:
        for service, frame in frames.items():
            print(f"LSTM single vs multi: {service} ...", flush=True)
            results["lstm_comparison"].append(_compare_lstm(service, frame))
    results["machine"]["loadavg_end"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1, default=str))
    _print(results)
    print(f"\nwritten: {args.out}")


if __name__ == "__main__":
    main()
