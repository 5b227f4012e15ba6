"""The ASGI application uvicorn serves: WebSocket ``/ws/bench`` to the consumer."""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.servers.django_channels.settings")

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402  (Django first reads its settings)
from django.core.asgi import get_asgi_application  # noqa: E402
from django.urls import path  # noqa: E402

django_asgi_app = get_asgi_application()

from .consumers import BenchConsumer  # noqa: E402  (imports Django models' machinery: after setup)

application = ProtocolTypeRouter({
    "http": django_asgi_app,
    "websocket": URLRouter([path("ws/bench", BenchConsumer.as_asgi())]),
})
