"""Operator tooling: the CLI, the process stack, the audit, the chaos harness, workload helpers."""
