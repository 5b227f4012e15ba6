"""The project's settings: only what Channels needs (no database, no
middleware: the consumer uses neither)."""

import os

SECRET_KEY = "bench-only"
DEBUG = False
ALLOWED_HOSTS = ["*"]
INSTALLED_APPS = ["channels"]
ASGI_APPLICATION = "bench.servers.django_channels.asgi.application"
# The channels_redis layer of the Channels tutorial, its defaults kept
# (capacity 100 per channel, group expiry one day).
CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        "CONFIG": {"hosts": [os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")]},
    },
}
USE_TZ = True
