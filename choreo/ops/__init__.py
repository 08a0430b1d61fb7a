"""Operating a stack: its processes (stack), the workload, status, the audit, dead-letter
replay, traces, the Prometheus configuration and the TLS CA. The command line is choreo.cli."""
