"""Fixtures for every test: the session's manifest signing key.

Model manifests are signed with a session key in ``MORA_SIGNING_KEY`` (unless one is set), which the
Ray heads, jobs, CLI runs and child processes the tests start inherit, so publisher and readers agree
whatever ``MORA_HOME`` they use, and ``~/.mora/signing_key`` is never created or read by a test.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator

import pytest


@pytest.fixture(scope="session", autouse=True)
def manifest_signing_key() -> Iterator[str]:
    """The key every publisher and reader of the session signs and verifies model manifests with."""
    with pytest.MonkeyPatch.context() as patch:
        if not os.environ.get("MORA_SIGNING_KEY", "").strip():
            patch.setenv("MORA_SIGNING_KEY", secrets.token_hex(32))
        yield os.environ["MORA_SIGNING_KEY"]
