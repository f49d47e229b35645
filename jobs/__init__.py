"""Ray Jobs entrypoints: fleet retraining and fleet tuning (run with `ray job submit`)."""
