"""Recommendations: typed results and their output formats (pure)."""
