"""Settings that only make sense together are refused when the worker starts."""

from __future__ import annotations

import pytest


def test_heartbeat_and_settings_refuse_a_beat_that_could_lapse_a_lease() -> None:
    from pipeline.config import Settings
    from pipeline.worker.lease import Heartbeat

    with pytest.raises(ValueError, match="at most half"):
        Heartbeat(queue=None, ledger=None, visibility_timeout_s=10, interval_s=6)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="TTS_HEARTBEAT_INTERVAL_S"):
        Settings(visibility_timeout_s=60, heartbeat_interval_s=45)
    assert Settings(visibility_timeout_s=60, heartbeat_interval_s=30).heartbeat_interval_s == 30


def test_cli_checks_job_ids_with_the_workers_rule_before_any_s3_call(capsys: pytest.CaptureFixture[str]) -> None:
    """No endpoint is configured for this process: an S3 call would fail differently. The
    argument parser refuses the id first (exit 2, usage error)."""
    from pipeline import cli

    for argv in (["status", "../status/x"], ["result", "a/b"], ["cancel", ".."], ["wait", "x" * 129]):
        with pytest.raises(SystemExit) as info:
            cli.main(argv)
        assert info.value.code == 2
        assert "is not a job id" in capsys.readouterr().err


def test_a_ttl_longer_than_the_queue_retention_is_refused() -> None:
    from pipeline.cloud.consumer import Queue
    from pipeline.config import Settings
    from pipeline.worker import ConfigError, check_retention

    queue = Queue(sqs=None, url="u", name="jobs")
    queue.retention_s = 4 * 86400  # SQS's default retention
    with pytest.raises(ConfigError, match="MessageRetentionPeriod"):
        check_retention(Settings(job_ttl_s=7 * 86400), queue)
    check_retention(Settings(job_ttl_s=3 * 86400), queue)
    queue.retention_s = 14 * 86400
    check_retention(Settings(job_ttl_s=7 * 86400), queue)
