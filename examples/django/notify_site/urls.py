from django.urls import re_path

from . import views

urlpatterns = [
    # A user id is what a channel name may hold after "user:" (docs/guide.md, "Channels").
    re_path(r"^notify/(?P<user>[A-Za-z0-9_-]{1,64})$", views.notify),
]
