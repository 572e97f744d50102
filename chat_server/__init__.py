"""chat_server: STOMP over WebSocket chat rooms with durable, ordered delivery."""

__version__ = "0.1.0"
