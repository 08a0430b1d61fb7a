"""Broker-facing code: topology, publishing, dead letters."""
