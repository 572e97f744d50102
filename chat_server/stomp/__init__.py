"""STOMP 1.0, 1.1 and 1.2 without I/O: frames, an incremental parser, the state machine."""
