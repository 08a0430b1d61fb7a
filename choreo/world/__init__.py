"""The simulated outside world: the sandbox payment gateway and its rules, the user service."""
