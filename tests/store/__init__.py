"""Tests of the SQL message store."""
