"""Rolling-origin backtest of request recommenders: the platform against VPA, KRR, Crane and simple rules.

Pure logic only (no S3, Prometheus or Ray): ``baselines`` holds the peers' algorithms behind one
``Recommender`` interface, ``engine`` replays history origin by origin, ``metrics`` scores requests
against the usage that followed, ``report`` writes the table and ``backtest.json``, ``plots`` the PNGs.
"""

from __future__ import annotations
