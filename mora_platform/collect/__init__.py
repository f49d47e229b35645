"""Collect the 12 unified metrics from a Prometheus server into a dataset (`mora collect`)."""
