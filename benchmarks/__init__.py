"""Benchmarks: a STOMP-over-WebSocket load generator and a runner that compares chat_server with
RabbitMQ Web-STOMP (`python -m benchmarks.run`)."""
