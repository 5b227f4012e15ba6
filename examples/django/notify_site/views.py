import json

from django.http import HttpRequest, JsonResponse
from django.views.decorators.http import require_POST

from wsrelay.client import APIError

from . import relay


@require_POST
def notify(request: HttpRequest, user: str) -> JsonResponse:
    """POST /notify/<user> {"text": ...}: to every socket of that user."""
    try:
        text = json.loads(request.body)["text"]
    except (ValueError, KeyError, TypeError):
        return JsonResponse({"error": 'the body is {"text": "..."}'}, status=400)
    try:
        relay.client().publish(f"user:{user}", {"text": text, "from": "django"})
    except APIError as exc:
        return JsonResponse({"error": f"wsrelay answered {exc.code}: {exc.message}"}, status=502)
    return JsonResponse({"notified": user})
