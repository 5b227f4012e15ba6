"""The site's wsrelay client (wsrelay.client, docs/api.md).

One per thread: a client keeps its HTTP connection to wsrelay open for the
next call, and the threads of a WSGI server (or of a task queue's worker)
each get their own rather than queue for one. It imports no compiled part
of wsrelay and starts nothing: importing it costs a Django process nothing.
"""

import threading

from django.conf import settings

from wsrelay.client import Client

_local = threading.local()


def client() -> Client:
    """This thread's client, made on first use."""
    if not hasattr(_local, "client"):
        _local.client = Client(settings.WSRELAY_URL, settings.WSRELAY_API_KEY)
    return _local.client
