"""A minimal Django project with Channels, as the Channels tutorial sets one
up: an ``AsyncWebsocketConsumer`` that joins group ``bench`` on connect, the
Redis channel layer (``channels_redis``) on the redis-server the publish
scenario starts (``BENCH_REDIS_URL``), served by uvicorn
(``asgi:application``); ``publish`` is its publisher, a separate process
calling ``group_send`` as Django code does."""
