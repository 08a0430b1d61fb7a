"""The services: one folder per domain, each a consumer of its own queue.

    consumers/<service>/
        messages.py   the messages it sends, one class each (routing key, owner, version)
        rules.py      its decisions: pure functions and small classes, no I/O
        tables.py     its own tables (TABLES; optional seed) beside models.tables.COMMON
        handlers.py   handlers (message, unit of work, deps) and SUBSCRIPTIONS, the table of
                      what it hears, keyed by message class (ORCHESTRATED when that differs)

A domain is registered by its name in `config.settings.DOMAINS`; `consumers.registry` finds
its handlers, `models.envelope` its messages and `models.tables` its tables by that name. The
broker topology (queues, bindings, DLQs, retry ladder) and the topic permissions are derived.
"""
