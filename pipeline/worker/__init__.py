"""The worker side, grouped by role:

========================  ======================================================================
``serve``                 start-up: model bundle sync, engine and aligner loaded once, then the loop
``loop``                  the message loop: messages in hand, acknowledgements, supervision
``runner``                the job state machine: a delivery in, a ``Decision`` for its message out
``attempt``               one attempt's own state: claim, message, signals, what it wrote
``inputs``                manifest, lexicons, text analysis, voices: every check before model work
``render``                references, then synthesis, alignment, encoding chunk by chunk
``publish``               outputs, then the result (the commit point)
``lease``                 one heartbeat for every attempt: leases, visibility, progress, cancel polls
``signals``               why an attempt stops early (abort, deadline, shutdown grace, cancel) and
                          its progress
``failures``              ``JobFailed``: a job that cannot be done, with its error code
========================  ======================================================================

Shared with the rest of the pipeline: the ledger (``pipeline.jobs.state``), the outputs rule
(``pipeline.jobs.outputs``), notifications (``pipeline.cloud.notify``), durable chunks (``pipeline.jobs.chunks``).
"""

from pipeline.worker.serve import ConfigError, check_retention, serve

__all__ = ["ConfigError", "check_retention", "serve"]
