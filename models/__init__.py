"""The shared kernel's data: the envelope every message carries, the Message base and shared
value types (envelope.py), the tables every service shares and those of the services that are
not domains (tables.py), and the published wire contract (contract.py writes schemas/)."""
