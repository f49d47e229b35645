"""Benchmark: one Ray Tune trial, one fit reporting every ASHA rung vs a refit per rung.

A trial reports after epochs 1, 2, 4, ... up to ``--epochs`` (its rungs). ``tune.trial.run_trial``
fits the LSTM once and scores each rung from the epoch hook; the way it worked before refits the LSTM
from scratch for every rung (1 + 2 + 4 + ... epochs). Both run here in the same process on the same
reference (a ``generate_fleet`` service, Prophet fitted once), early stopping off so both train every
epoch; ``tune.report`` is replaced by a list so no cluster is needed. Writes
``benchmarks/results/tune_trial.json`` and prints a table.

    .venv/bin/python benchmarks/tune_trial.py [--epochs 16] [--days 7] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "tune_trial.json"
# a mid-sized trial of the default search space; patience high so no fit stops early
TRIAL = {
    "lstm_layers": 2,
    "lstm_units_1": 32,
    "lstm_units_2": 16,
    "dropout": 0.1,
    "learning_rate": 0.003,
    "seq_len": 24,
    "batch_size": 64,
    "fusion_weight": 0.5,
}
BASE: dict[str, Any] = {"seed": 0, "lstm": {"patience": 1_000, "lr_patience": 1_000}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=16, help="epochs of the trial (its last rung)")
    parser.add_argument("--days", type=float, default=7.0, help="days of 5-minute synthetic history")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each way (median reported)")
    args = parser.parse_args()

    import ray.tune

    from mora_platform.data.synthetic import generate_fleet
    from mora_platform.training.config import TrainingConfig
    from tune.search_space import trial_to_config
    from tune.trial import epoch_rungs, prepare_reference, run_trial, score_lstm

    frame = generate_fleet(n_services=1, days=args.days, step_seconds=300, seed=3)
    reference = prepare_reference(frame, "svc-00", BASE)
    rungs = epoch_rungs(args.epochs)
    reports: list[dict[str, Any]] = []
    ray.tune.report = reports.append  # type: ignore[assignment]

    def one_fit() -> None:
        run_trial(TRIAL, reference=reference, base_config=BASE, max_epochs=args.epochs)

    def refit_per_rung() -> None:
        for epochs in rungs:
            config = TrainingConfig.model_validate(
                trial_to_config(TRIAL, {**BASE, "cpu_threads": 1}, epochs=epochs)
            )
            score_lstm(reference, config, TRIAL["fusion_weight"], 1)

    timings: dict[str, list[float]] = {"one fit, a report per rung": [], "refit per rung (before)": []}
    for _ in range(max(args.repeats, 1)):
        for name, run in zip(timings, (one_fit, refit_per_rung), strict=True):
            started = time.perf_counter()
            run()
            timings[name].append(time.perf_counter() - started)
    medians = {name: statistics.median(values) for name, values in timings.items()}
    fit, refit = medians.values()
    result = {
        "machine": platform.node(),
        "rows": len(reference.prepared),
        "epochs": args.epochs,
        "rungs": rungs,
        "epochs_trained": {"one fit": args.epochs, "refit per rung": sum(rungs)},
        "seconds": {name: [round(v, 2) for v in values] for name, values in timings.items()},
        "median_seconds": {name: round(v, 2) for name, v in medians.items()},
        "speedup": round(refit / fit, 2),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{'way':<30} {'epochs trained':>15} {'median s':>9}")
    print(f"{'one fit, a report per rung':<30} {args.epochs:>15} {fit:>9.1f}")
    print(f"{'refit per rung (before)':<30} {sum(rungs):>15} {refit:>9.1f}")
    print(f"speedup {refit / fit:.2f}x over {len(reference.prepared)} rows, rungs {rungs}; written {RESULTS}")


if __name__ == "__main__":
    main()
