"""Data layer: the unified schema, loaders, validation, cleaning and synthetic data (pure, no I/O to S3)."""
