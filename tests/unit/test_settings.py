"""Settings that only make sense together are refused when the worker starts."""

from __future__ import annotations

import pytest


def test_heartbeat_and_settings_refuse_a_beat_that_could_lapse_a_lease() -> None:
    from pipeline.config import Settings
    from pipeline.heartbeat import Heartbeat

    with pytest.raises(ValueError, match="at most half"):
        Heartbeat(queue=None, visibility_timeout_s=10, interval_s=6)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="TTS_HEARTBEAT_INTERVAL_S"):
        Settings(visibility_timeout_s=60, heartbeat_interval_s=45)
    assert Settings(visibility_timeout_s=60, heartbeat_interval_s=30).heartbeat_interval_s == 30
