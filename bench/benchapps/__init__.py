"""The same two jobs for every system: ``noop`` (does nothing) and ``stamp``
(records when it started, for the latency scenario)."""
