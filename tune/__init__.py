"""Ray Tune search of LSTM architecture and fusion weights, per service."""
