"""The orchestrator (orchestrated saga mode only): hears replies and sends the next command."""
