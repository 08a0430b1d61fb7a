"""Per-domain message handlers: plain functions (message, unit of work, dependencies) -> None.

Each module ends with SUBSCRIPTIONS, the one table of what that domain hears; the broker
topology (queues, bindings, DLQs, retry ladder) is derived from these tables.
"""
