"""Event-driven voice-cloning pipeline: S3 inbox -> SQS -> F5-TTS worker -> audio + word timings in S3."""

__version__ = "0.1.0"
