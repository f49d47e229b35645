"""Prophet member: one Prophet per target, with recorded fallbacks and a serving grid.

Seed configuration: weekly + daily seasonality, changepoint_prior_scale 0.05,
seasonality_prior_scale 10, ``load_users`` and ``replica_count`` as extra regressors when they
vary in the training rows. ``uncertainty_samples=0`` (point forecasts; the ensemble calibrates).

Fallbacks, each recorded in ``fallbacks``:
- a seasonality is dropped when the history spans fewer than ``min_periods`` of its periods or
  the observations cover less than ``min_phase_coverage`` of its phase (24 bins per period);
  short experiments stacked one per day cover minutes of each day, not a daily cycle;
- a constant target, or a Prophet fit that fails, gets a ``PercentileLevel`` instead.

Serving is arithmetic: ``prophet_grid.json`` holds the forecast for the next ``grid_steps``
steps after the training data, with regressors at their centres, and each regressor's
coefficient, so ``forecast_next = grid[h] + sum(coef * (x - centre))``.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any, Self

import numpy as np
import pandas as pd

from mora_platform.data.schema import LOAD_USERS, REPLICA_COUNT, TIMESTAMP
from mora_platform.features.targets import TARGET_COLUMNS, median_step_seconds
from mora_platform.models.base import Forecaster, ModelError, ModelLoadError, read_json, write_json
from mora_platform.models.baselines import PercentileLevel
from mora_platform.models.config import ProphetConfig
from mora_platform.recommend.types import TARGETS

GRID_FILE = "prophet_grid.json"
GRID_FORMAT = 1
REGRESSORS: tuple[str, ...] = (LOAD_USERS, REPLICA_COUNT)
SEASONALITIES: dict[str, float] = {"daily": 86_400.0, "weekly": 7 * 86_400.0}
PHASE_BINS = 24


def quiet_prophet_logging() -> None:
    """Silence cmdstanpy's and Prophet's INFO chatter (safe to call repeatedly).

    cmdstanpy configures its logger on first use (and resets the level if it has no handler),
    so let it do that first, then raise the bar.
    """
    logging.getLogger("prophet.plot").setLevel(logging.CRITICAL)  # "plotly not installed" at import
    from cmdstanpy.utils import get_logger

    get_logger()
    for name in ("cmdstanpy", "prophet"):
        logging.getLogger(name).setLevel(logging.ERROR)


def seasonality_decisions(timestamps: pd.Series, config: ProphetConfig) -> dict[str, str]:
    """``{"daily": "kept" | reason dropped, "weekly": ...}`` for these timestamps."""
    ts = pd.to_datetime(timestamps, utc=True)
    seconds = (ts - pd.Timestamp("1970-01-01", tz="UTC")).dt.total_seconds().to_numpy()
    span = float(seconds.max() - seconds.min()) if seconds.size else 0.0
    wanted = {"daily": config.daily_seasonality, "weekly": config.weekly_seasonality}
    decisions: dict[str, str] = {}
    for name, period in SEASONALITIES.items():
        if not wanted[name]:
            decisions[name] = "disabled in config"
            continue
        periods = span / period
        coverage = np.unique(((seconds % period) / period * PHASE_BINS).astype(int)).size / PHASE_BINS
        if periods < config.min_periods:
            decisions[name] = f"dropped: history spans {periods:.2f} periods < {config.min_periods}"
        elif coverage < config.min_phase_coverage:
            decisions[name] = (
                f"dropped: observations cover {coverage:.0%} of the cycle < {config.min_phase_coverage:.0%}"
            )
        else:
            decisions[name] = "kept"
    return decisions


def _naive_ds(timestamps: pd.Series) -> pd.Series:
    ts = pd.to_datetime(timestamps, utc=True)
    return ts.dt.tz_convert("UTC").dt.tz_localize(None)


class ProphetForecaster(Forecaster):
    """Prophet per target (``prophet_{target}.json``) or its percentile fallback (``percentile_{target}.json``)."""

    name = "prophet"
    reads_row_context = True  # a row's forecast reads that row's load_users / replica_count

    def __init__(self, config: ProphetConfig | None = None) -> None:
        super().__init__()
        self.config = config or ProphetConfig()
        self.seasonality: dict[str, str] = {}
        self.notes: list[str] = []
        self.regressors: list[str] = []
        self.step_seconds = 15.0
        self.grid_start: pd.Timestamp | None = None
        self.grid: dict[str, np.ndarray] = {}
        self.coefficients: dict[str, dict[str, dict[str, float]]] = {}
        self.fallback_levels: dict[str, PercentileLevel] = {}
        self._models: dict[str, Any] = {}  # target -> fitted Prophet (built lazily after load)
        self._model_dicts: dict[str, dict[str, Any]] = {}

    # ---- fitting -------------------------------------------------------------------------
    def _fit(self, frame: pd.DataFrame) -> None:
        quiet_prophet_logging()
        self.notes = []
        self.step_seconds = median_step_seconds(frame)
        if len(frame) > self.config.max_rows:
            # Thin evenly (keeps the span, so seasonality and trend survive) to bound fit time and JSON size.
            stride = int(np.ceil(len(frame) / self.config.max_rows))
            frame = frame.iloc[::-1].iloc[::stride].iloc[::-1]
            self.notes.append(f"fitted on every {stride}th training row ({len(frame)} rows)")
        self.seasonality = seasonality_decisions(frame[TIMESTAMP], self.config)
        for name, decision in self.seasonality.items():
            if decision.startswith("dropped"):
                self.fallbacks.append(f"prophet: {name} seasonality {decision}")
        self.regressors = [
            r for r in REGRESSORS if self.config.use_regressors and frame[r].max() > frame[r].min()
        ]
        self._models, self._model_dicts, self.fallback_levels = {}, {}, {}
        for target in TARGETS:
            y = frame[TARGET_COLUMNS[target]].to_numpy(dtype="float64")
            if np.nanmax(y) == np.nanmin(y):
                self._fallback(target, y, "constant target in the training rows")
                continue
            try:
                self._models[target] = self._fit_one(frame, target)
            except Exception as exc:  # Prophet/Stan failures come in many types; the member must not fail
                self._fallback(target, y, f"Prophet fit failed: {type(exc).__name__}: {exc}")
        self.anchor_grid(pd.to_datetime(frame[TIMESTAMP], utc=True).max())

    def anchor_grid(self, last_timestamp: pd.Timestamp) -> None:
        """(Re)compute the serving grid for the ``grid_steps`` steps after ``last_timestamp``.

        ``fit`` anchors it at the end of the training rows; the trainer re-anchors it at the
        end of all the data (validation and test rows come after training).
        """
        if len(self._models) + len(self._model_dicts) + len(self.fallback_levels) < len(TARGETS):
            raise ModelError("prophet: anchor_grid before fit")
        self.grid_start = pd.Timestamp(last_timestamp) + pd.Timedelta(seconds=self.step_seconds)
        self._build_grid()

    def _fallback(self, target: str, y: np.ndarray, reason: str) -> None:
        self.fallback_levels[target] = PercentileLevel.fit(y, target, self.config.fallback_percentile, reason)
        self.fallbacks.append(f"prophet.{target}: percentile fallback ({reason})")

    def _fit_one(self, frame: pd.DataFrame, target: str) -> Any:
        import cmdstanpy
        from prophet import Prophet

        model = Prophet(
            growth="linear",
            yearly_seasonality=False,
            weekly_seasonality=self.seasonality.get("weekly") == "kept",
            daily_seasonality=self.seasonality.get("daily") == "kept",
            changepoint_prior_scale=self.config.changepoint_prior_scale,
            seasonality_prior_scale=self.config.seasonality_prior_scale,
            uncertainty_samples=0,
        )
        for regressor in self.regressors:
            model.add_regressor(regressor)
        df = pd.DataFrame(
            {"ds": _naive_ds(frame[TIMESTAMP]).to_numpy(), "y": frame[TARGET_COLUMNS[target]].to_numpy()}
        )
        for regressor in self.regressors:
            df[regressor] = frame[regressor].to_numpy(dtype="float64")
        tmp_root = Path(cmdstanpy._TMPDIR)
        before = set(tmp_root.iterdir()) if tmp_root.is_dir() else set()
        try:
            model.fit(df)
        finally:
            backend = getattr(model, "stan_backend", None)
            if backend is not None:
                backend.cleanup()
            if tmp_root.is_dir():
                for entry in set(tmp_root.iterdir()) - before:
                    if entry.is_dir():
                        shutil.rmtree(entry, ignore_errors=True)
                    else:
                        entry.unlink(missing_ok=True)
        return model

    def _build_grid(self) -> None:
        assert self.grid_start is not None
        steps = self.config.grid_steps
        future = pd.DataFrame(
            {
                "ds": _naive_ds(
                    pd.Series(
                        self.grid_start + pd.to_timedelta(np.arange(steps) * self.step_seconds, unit="s")
                    )
                )
            }
        )
        self.grid, self.coefficients = {}, {}
        for target in TARGETS:
            if target in self.fallback_levels:
                self.grid[target] = np.full(steps, self.fallback_levels[target].value)
                self.coefficients[target] = {}
                continue
            model = self._model(target)
            coefs = self._regressor_coefficients(model)
            df = future.copy()
            for regressor, values in coefs.items():
                df[regressor] = values["center"]
            self.grid[target] = model.predict(df)["yhat"].to_numpy(dtype="float64")
            self.coefficients[target] = coefs

    @staticmethod
    def _regressor_coefficients(model: Any) -> dict[str, dict[str, float]]:
        if not model.extra_regressors:
            return {}
        from prophet.utilities import regressor_coefficients

        table = regressor_coefficients(model)
        return {
            str(row.regressor): {"center": float(row.center), "coef": float(row.coef)}
            for row in table.itertuples()
        }

    def _model(self, target: str) -> Any:
        if target not in self._models:
            quiet_prophet_logging()  # rebuilt to predict over a history: no import chatter either
            from prophet.serialize import model_from_dict

            try:
                self._models[target] = model_from_dict(self._model_dicts[target])
            except Exception as exc:  # malformed content surfaces as many exception types
                raise ModelLoadError(
                    f"prophet_{target}.json: cannot rebuild the Prophet model ({exc})"
                ) from exc
        return self._models[target]

    # ---- asking --------------------------------------------------------------------------
    def _predict(self, frame: pd.DataFrame) -> pd.DataFrame:
        out = pd.DataFrame(index=frame.index, columns=list(TARGETS), dtype="float64")
        df = pd.DataFrame({"ds": _naive_ds(frame[TIMESTAMP]).to_numpy()})
        for regressor in self.regressors:
            df[regressor] = frame[regressor].to_numpy(dtype="float64")
        for target in TARGETS:
            if target in self.fallback_levels:
                out[target] = self.fallback_levels[target].value
            else:
                out[target] = self._model(target).predict(df)["yhat"].to_numpy(dtype="float64")
        return out

    def grid_index(self, timestamp: pd.Timestamp) -> int:
        """Grid row for ``timestamp`` (clamped to the grid; before it means its first row)."""
        assert self.grid_start is not None
        h = round((timestamp - self.grid_start).total_seconds() / self.step_seconds)
        return int(min(max(h, 0), self.config.grid_steps - 1))

    def _forecast_next(self, history: pd.DataFrame, context: dict[str, float | str]) -> dict[str, float]:
        last = history.iloc[-1]
        when = pd.Timestamp(last[TIMESTAMP])
        when = (when.tz_localize("UTC") if when.tzinfo is None else when) + pd.Timedelta(
            seconds=self.step_seconds
        )
        h = self.grid_index(when)
        result = {}
        for target in TARGETS:
            value = float(self.grid[target][h])
            for regressor, c in self.coefficients[target].items():
                x = float(context[regressor]) if regressor in context else float(last[regressor])
                value += c["coef"] * (x - c["center"])
            result[target] = value
        return result

    # ---- persistence ---------------------------------------------------------------------
    def _save(self, directory: Path) -> list[str]:
        from prophet.serialize import model_to_json

        files = []
        for target in TARGETS:
            if target in self.fallback_levels:
                files.append(
                    write_json(
                        directory / f"percentile_{target}.json", self.fallback_levels[target].to_dict()
                    )
                )
            else:
                path = directory / f"prophet_{target}.json"
                path.write_text(model_to_json(self._model(target)), encoding="utf-8")
                files.append(path.name)
        assert self.grid_start is not None
        grid = {
            "format": GRID_FORMAT,
            "config": self.config.model_dump(),
            "grid_start": self.grid_start.isoformat(),
            "step_seconds": self.step_seconds,
            "seasonality": self.seasonality,
            "regressors": self.regressors,
            "fallbacks": self.fallbacks,
            "notes": self.notes,
            "targets": {
                t: {
                    "kind": "percentile" if t in self.fallback_levels else "prophet",
                    "values": [float(v) for v in self.grid[t]],
                    "regressors": self.coefficients[t],
                }
                for t in TARGETS
            },
        }
        files.append(write_json(directory / GRID_FILE, grid))
        return files

    @classmethod
    def _load(cls, directory: Path) -> Self:
        data = read_json(directory / GRID_FILE)
        try:
            if data["format"] != GRID_FORMAT:
                raise ValueError(f"unsupported format {data['format']!r}")
            model = cls(ProphetConfig.model_validate(data["config"]))
            model.grid_start = pd.Timestamp(data["grid_start"])
            model.step_seconds = float(data["step_seconds"])
            model.seasonality = {str(k): str(v) for k, v in data["seasonality"].items()}
            model.regressors = [str(r) for r in data["regressors"]]
            model.fallbacks = [str(f) for f in data["fallbacks"]]
            model.notes = [str(n) for n in data.get("notes", [])]
            kinds = {t: data["targets"][t]["kind"] for t in TARGETS}
            for t in TARGETS:
                entry = data["targets"][t]
                model.grid[t] = np.asarray(entry["values"], dtype="float64")
                model.coefficients[t] = {
                    str(r): {"center": float(c["center"]), "coef": float(c["coef"])}
                    for r, c in entry["regressors"].items()
                }
                if model.grid[t].shape != (model.config.grid_steps,) or not np.all(
                    np.isfinite(model.grid[t])
                ):
                    raise ValueError(f"grid for {t} has the wrong length or non-finite values")
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ModelLoadError(f"{GRID_FILE}: malformed ({exc})") from exc
        for t in TARGETS:
            if kinds[t] == "percentile":
                path = directory / f"percentile_{t}.json"
                model.fallback_levels[t] = PercentileLevel.from_dict(read_json(path), path.name)
            else:
                path = directory / f"prophet_{t}.json"
                content = read_json(path)
                if not isinstance(content, dict) or "history" not in content:
                    raise ModelLoadError(f"{path.name}: not a serialized Prophet model")
                model._model_dicts[t] = content
        return model
