"""choreo benchmarks: the real saga vs a naive Celery chain vs the raw broker ceiling.

See run.py.
"""
