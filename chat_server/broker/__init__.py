"""Fan-out between workers: the `Broker` protocol and its in-process and Redis implementations."""
