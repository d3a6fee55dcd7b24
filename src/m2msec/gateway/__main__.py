"""``python -m m2msec.gateway serve …`` (the same sub-app as ``m2msec gateway``)."""

from m2msec.gateway.cli import app

app()
