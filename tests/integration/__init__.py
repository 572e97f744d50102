"""Integration tests: real worker processes, redis-server and nginx."""
