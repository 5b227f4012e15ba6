"""The WSGI application, for gunicorn or uwsgi: `gunicorn notify_site.wsgi`."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "notify_site.settings")
application = get_wsgi_application()
