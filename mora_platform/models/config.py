"""Model settings as pydantic classes, so Ray Tune can fill them from a plain dict."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator


class LSTMConfig(BaseModel):
    """Architecture and training of the LSTM member.

    The defaults are one 32-unit layer, batches of 128 at learning rate 3e-3, at most 30 epochs: on
    three synthetic 14-day services at 5 minutes (2,234 training windows each) that cost 10-14 s of CPU
    per service against 48-72 s for the seed's two layers of 64 and 32 units in batches of 32 at 1e-3
    (up to 50 epochs), at the same fused validation error (CPU MAE within 5%, memory and replicas
    mixed, the LSTM alone better on replicas). Fleet retraining is budgeted at 100 services on 2 cores
    in 15 minutes; Tune searches larger and smaller ones (``tune.search_space``).
    """

    model_config = ConfigDict(extra="forbid")

    units: list[int] = Field(default_factory=lambda: [32], min_length=1, description="units per LSTM layer")
    dense_units: int = Field(default=16, ge=0, description="relu layer before the output; 0 = none")
    dropout: float = Field(default=0.2, ge=0, lt=1)
    learning_rate: float = Field(default=3e-3, gt=0, le=1)
    seq_len: int | None = Field(default=None, ge=2, le=512, description="None = TrainingConfig.seq_len")
    batch_size: int = Field(default=128, ge=1, le=4096)
    epochs: int = Field(default=30, ge=1, le=1000)
    patience: int = Field(default=5, ge=1, description="EarlyStopping patience (epochs)")
    lr_patience: int = Field(default=3, ge=1, description="ReduceLROnPlateau patience (epochs)")
    validation_fraction: float = Field(
        default=0.2, ge=0.05, lt=0.9, description="last share of each series' windows"
    )
    multi_output: bool = Field(
        default=True, description="one network with 3 outputs instead of one network per target"
    )

    @property
    def num_layers(self) -> int:
        return len(self.units)

    @model_validator(mode="after")
    def _units_positive(self) -> LSTMConfig:
        if any(u < 1 for u in self.units):
            raise ValueError(f"every LSTM layer needs >= 1 unit, got {self.units}")
        return self


class ProphetConfig(BaseModel):
    """Prophet member settings (the seed's priors)."""

    model_config = ConfigDict(extra="forbid")

    weekly_seasonality: bool = True
    daily_seasonality: bool = True
    changepoint_prior_scale: float = Field(default=0.05, gt=0)
    seasonality_prior_scale: float = Field(default=10.0, gt=0)
    min_periods: float = Field(
        default=2.0, gt=0, description="keep a seasonality only with this many periods of history"
    )
    min_phase_coverage: float = Field(
        default=0.5,
        ge=0,
        le=1,
        description="... and when observations cover this share of the period's phase",
    )
    use_regressors: bool = True
    grid_steps: int = Field(
        default=288, ge=1, le=100_000, description="precomputed forecast steps for serving"
    )
    fallback_percentile: float = Field(default=50.0, ge=0, le=100)
    max_rows: int = Field(default=1500, ge=10, description="thin the training rows evenly beyond this many")
