"""Durable storage of rooms, members and messages behind the `MessageStore` protocol."""
