"""A Django site with one view, which notifies a user through wsrelay.

Only what the example needs: no database, no installed apps, no sessions.
The wsrelay server and its key come from the environment, as they would in
production (WSRELAY_URL defaults to a gateway on this machine).
"""

import os

from django.core.exceptions import ImproperlyConfigured

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "an example's key: set DJANGO_SECRET_KEY in production")
DEBUG = os.environ.get("DJANGO_DEBUG") == "1"
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
ROOT_URLCONF = "notify_site.urls"
WSGI_APPLICATION = "notify_site.wsgi.application"
INSTALLED_APPS: list[str] = []
# No cookies, no sessions: nothing for CSRF protection to protect. A site
# with logins keeps django.middleware.csrf.CsrfViewMiddleware.
MIDDLEWARE = ["django.middleware.common.CommonMiddleware"]
DATABASES: dict = {}
USE_TZ = True

# The wsrelay server API (docs/api.md): where it listens and its key, the
# WSRELAY_API_KEY that `wsrelay serve` was started with.
WSRELAY_URL = os.environ.get("WSRELAY_URL", "http://127.0.0.1:8080")
WSRELAY_API_KEY = os.environ.get("WSRELAY_API_KEY", "")
if not WSRELAY_API_KEY:
    raise ImproperlyConfigured("WSRELAY_API_KEY is not set: give the key wsrelay serve was started with")
