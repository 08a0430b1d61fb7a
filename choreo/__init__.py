"""choreo package."""
