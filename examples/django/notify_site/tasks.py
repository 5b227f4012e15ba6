"""Work a task queue's worker runs, away from any request.

``send_notification`` is a plain function: with Celery it would carry
``@shared_task`` and be queued with ``send_notification.delay(user, text)``;
nothing in it changes. Run it by hand, in a process of its own:

    python -m notify_site.tasks USER TEXT
"""

import os
import sys

from . import relay


def send_notification(user: str, text: str) -> None:
    relay.client().publish(f"user:{user}", {"text": text, "from": "task"})


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m notify_site.tasks USER TEXT", file=sys.stderr)
        return 2
    # What a Celery worker does as it starts: settings, then the apps.
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "notify_site.settings")
    import django

    django.setup()
    send_notification(*argv)
    print(f"notified {argv[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
