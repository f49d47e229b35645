"""Benchmark: wall time of ``mora`` commands as a user runs them, each a fresh process.

Set-up, all by itself: a throw-away ``weed`` S3 server with auth on free 127.0.0.1 ports, the small
in-repo Online Boutique sample (``examples/online-boutique``) imported with ``mora data import``, and
one service trained and published with ``mora train`` (tiny config). Then, with ``MORA_HOME`` and
``MORA_S3_*`` pointing at that server, each command is run ``--reps`` times as a separate process:
``mora --help``, ``mora recommend SERVICE`` (table) and ``mora recommend SERVICE --format json``.
The first ``recommend`` (fetch + checksum verification into the empty cache) is reported on its
own; one more run reports which heavy libraries the answering process imported (TensorFlow and
Keras must not be among them). The server is stopped by PID at the end.

    .venv/bin/python benchmarks/cli_latency.py [--reps 7] [--service cartservice]

Writes ``benchmarks/results/cli_latency-<UTC time>.json`` and prints a table. Aim: ``mora
recommend`` under 3 s on 2 quiet cores.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

DATA = REPO / "examples" / "online-boutique"  # the in-repo sample only
DATASET = "bench-cli"
BUCKET = "bench"
AIM_SECONDS = 3.0
TINY_CONFIG: dict[str, Any] = {
    "seq_len": 8,
    "lstm": {"units": [8], "dense_units": 4, "epochs": 2, "batch_size": 64, "patience": 1, "lr_patience": 1},
    "prophet": {"grid_steps": 16},
    "seed": 0,
}
# Libraries whose presence in the answering process is reported (the first two must be absent).
HEAVY = ("tensorflow", "keras", "prophet", "cmdstanpy", "ray", "sklearn", "scipy", "matplotlib", "h5py")
PROBE = """
import os, sys
from mora_platform.cli import main

sys.argv = ["mora", *sys.argv[1:]]
try:
    main()
finally:
    with open(os.environ["MORA_BENCH_REPORT"], "w", encoding="utf-8") as out:
        out.write(" ".join(sorted({name.split(".")[0] for name in sys.modules})))
"""


def mora_executable() -> Path:
    path = Path(sys.executable).parent / "mora"
    if not path.is_file():
        raise SystemExit(f"{path} not found: install the project first (make install)")
    return path


def run(command: list[str], env: dict[str, str], cwd: Path, what: str) -> tuple[float, str]:
    """(wall seconds, stdout) of one process; exits with its output if it failed."""
    started = time.perf_counter()
    result = subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"{what} failed (exit {result.returncode}):\n{result.stdout}\n{result.stderr}")
    return elapsed, result.stdout


def summarize(samples: list[float]) -> dict[str, Any]:
    return {
        "runs": len(samples),
        "median_s": round(statistics.median(samples), 3),
        "min_s": round(min(samples), 3),
        "max_s": round(max(samples), 3),
        "samples_s": [round(s, 3) for s in samples],
    }


def start_weed(root: Path) -> tuple[Any, str, str]:
    """A running ``weed server`` with S3 auth on free ports (retried on fresh ports): (server, key, secret)."""
    from infra.local.processes import ProcessStartError
    from infra.local.weed import WeedPorts, WeedServer

    access_key, secret_key = "bench" + secrets.token_hex(6), secrets.token_urlsafe(24)
    failures = []
    for attempt in range(3):
        server = WeedServer(
            root / f"weed-{attempt}" / "data",
            WeedPorts.free(),
            access_key,
            secret_key,
            log_path=root / f"weed-{attempt}.log",
        )
        try:
            server.start(timeout=60)
        except ProcessStartError as exc:
            failures.append(str(exc))
            continue
        return server, access_key, secret_key
    raise SystemExit("the S3 server did not start:\n" + "\n".join(failures))


def print_table(report: dict[str, Any]) -> None:
    machine = report["machine"]
    print(
        f"\nmachine: {machine['cpus']} CPUs, Python {machine['python']}, load average (1 min) "
        f"{machine['load_avg_1m_at_start']} at start, {machine['load_avg_1m_at_end']} at end"
    )
    setup = report["setup"]
    print(
        f"set-up: weed {setup['weed_start_s']} s, data import {setup['import_s']} s, "
        f"train+publish {setup['train_s']} s ({setup['service']}, tiny config)"
    )
    header = f"{'command':44} {'runs':>4} {'median s':>9} {'min s':>7} {'max s':>7}"
    print(header)
    print("-" * len(header))
    for label, timing in report["commands"].items():
        print(
            f"{label:44} {timing['runs']:>4} {timing['median_s']:>9.2f} {timing['min_s']:>7.2f} {timing['max_s']:>7.2f}"
        )
    imported = report["recommend_imports"]
    print(f"\nheavy libraries imported by `mora recommend`: {', '.join(imported) or 'none'}")
    verdict = "met" if report["aim_met"] else "NOT met"
    print(f"aim: `mora recommend` median under {AIM_SECONDS:.0f} s: {verdict}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=7, help="Timed runs per command")
    parser.add_argument("--service", default="cartservice", help="Service of the sample to train and ask")
    parser.add_argument("--out", type=Path, default=None, help="Result file (default: benchmarks/results/)")
    options = parser.parse_args()
    if options.reps < 1:
        raise SystemExit("--reps must be at least 1")
    if not DATA.is_dir():
        raise SystemExit(f"in-repo sample data not found at {DATA}")
    mora = str(mora_executable())
    service = options.service

    root = Path(tempfile.mkdtemp(prefix="mora-cli-bench-"))
    load_start = round(os.getloadavg()[0], 2)
    tick = time.perf_counter()
    weed, access_key, secret_key = start_weed(root)
    weed_seconds = time.perf_counter() - tick
    try:
        env = {key: value for key, value in os.environ.items() if not key.startswith("MORA_")}
        env.update(
            {
                "MORA_HOME": str(root / "home"),
                "MORA_S3_ENDPOINT_URL": weed.endpoint_url,
                "MORA_S3_BUCKET": BUCKET,
                "MORA_S3_ACCESS_KEY": access_key,
                "MORA_S3_SECRET_KEY": secret_key,
                "TF_CPP_MIN_LOG_LEVEL": "2",
            }
        )
        work = root / "cwd"  # no stray .env file from the caller's directory
        work.mkdir()
        print(f"S3 server at {weed.endpoint_url} (pid {weed.record.pid if weed.record else '?'})", flush=True)

        import_seconds, _ = run(
            [mora, "data", "import", str(DATA), "--dataset", DATASET], env, work, "mora data import"
        )
        print(f"imported {DATA.relative_to(REPO)} in {import_seconds:.1f} s", flush=True)
        config = root / "tiny.json"
        config.write_text(json.dumps(TINY_CONFIG))
        train_seconds, output = run(
            [mora, "train", "--dataset", DATASET, "--service", service, "--config", str(config)],
            env,
            work,
            "mora train",
        )
        published = [line for line in output.splitlines() if line.startswith("published:")]
        print(f"trained in {train_seconds:.1f} s; {published[-1] if published else output}", flush=True)

        recommend = [mora, "recommend", service]
        cold, _ = run(recommend, env, work, "mora recommend (cold)")
        print(f"first recommend (fetch + verify into the empty cache): {cold:.2f} s", flush=True)

        commands = {
            "mora --help": [mora, "--help"],
            f"mora recommend {service}": recommend,
            f"mora recommend {service} --format json": [*recommend, "--format", "json"],
        }
        samples: dict[str, list[float]] = {label: [] for label in commands}
        for rep in range(options.reps):  # interleaved, so a burst of other work hits every command alike
            for label, command in commands.items():
                seconds, _ = run(command, env, work, label)
                samples[label].append(seconds)
            print(f"rep {rep + 1}/{options.reps}: " + ", ".join(f"{s[-1]:.2f}" for s in samples.values()))

        probe_report = root / "modules.txt"
        run(
            [sys.executable, "-c", PROBE, "recommend", service, "--format", "json"],
            {**env, "MORA_BENCH_REPORT": str(probe_report)},
            work,
            "mora recommend (import probe)",
        )
        loaded = set(probe_report.read_text().split())
        imported = [name for name in HEAVY if name in loaded]

        timings = {"mora recommend (first, empty cache)": summarize([cold])}
        timings.update({label: summarize(values) for label, values in samples.items()})
        recommend_median = timings[f"mora recommend {service}"]["median_s"]
        report: dict[str, Any] = {
            "created_at": datetime.now(UTC).isoformat(),
            "machine": {
                "cpus": os.cpu_count(),
                "python": sys.version.split()[0],
                "load_avg_1m_at_start": load_start,  # other work on the machine
                "load_avg_1m_at_end": round(os.getloadavg()[0], 2),
            },
            "setup": {
                "data": str(DATA.relative_to(REPO)),
                "service": service,
                "config": TINY_CONFIG,
                "weed_start_s": round(weed_seconds, 1),
                "import_s": round(import_seconds, 1),
                "train_s": round(train_seconds, 1),
                "reps": options.reps,
            },
            "commands": timings,
            "recommend_imports": imported,
            "aim_s": AIM_SECONDS,
            "aim_met": recommend_median < AIM_SECONDS and not {"tensorflow", "keras"} & set(imported),
        }
    finally:
        weed.stop(timeout=5)  # by PID; its data is thrown away
        shutil.rmtree(root, ignore_errors=True)

    path = (
        options.out
        or REPO / "benchmarks" / "results" / f"cli_latency-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    print_table(report)
    print(f"\nwritten: {path}")


if __name__ == "__main__":
    main()
