"""What every process shares: logging, metrics and probes, memory hand-back, the fault hooks."""
