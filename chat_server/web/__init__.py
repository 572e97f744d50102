"""The aiohttp application: composition root, WebSocket endpoint and REST API."""
