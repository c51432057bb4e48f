"""Operator tools: creating the resources, the DLQ, the reconciler, a host-mode LocalStack."""
