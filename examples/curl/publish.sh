#!/bin/sh
# The server API with curl (docs/api.md), on the chat demo:
#
#   WSRELAY_API_KEY=secret make run           # the demo, its API on
#   open http://127.0.0.1:8080/ and join the lobby as "guest"
#   WSRELAY_API_KEY=secret examples/curl/publish.sh [USER]
#
# It publishes to the lobby, broadcasts to the lobby and the garden, lists
# the rooms with subscribers, then disconnects USER (default: guest, the
# page's default name). Each answer is printed on a line of its own, and an
# error answer ({"error": ...}, HTTP 4xx or 5xx) stops the script with a
# non-zero status. WSRELAY_URL (default http://127.0.0.1:8080) names the server.
set -eu

URL="${WSRELAY_URL:-http://127.0.0.1:8080}"
KEY="${WSRELAY_API_KEY:?set WSRELAY_API_KEY to the key wsrelay serve was started with}"
USER_TO_DISCONNECT="${1:-guest}"

# api METHOD BODY: one call; prints the answer.
api() {
    curl -sS --fail-with-body "$URL/api/$1" \
        -H "Authorization: apikey $KEY" \
        -H "Content-Type: application/json" \
        -d "$2"
    echo
}

# To every socket in the lobby, as the chat page shows a message.
api publish '{"channel": "room:lobby", "data": {"kind": "message", "user": "curl", "text": "hello from curl"}}'

# One call, several channels: one result per channel.
api broadcast '{"channels": ["room:lobby", "room:garden"], "data": {"kind": "message", "user": "curl", "text": "to every room"}}'

# The rooms that have subscribers, and how many.
api channels '{"pattern": "room:*"}'

# Close every socket of a user, on every worker; how many were open.
api disconnect '{"user": "'"$USER_TO_DISCONNECT"'", "code": 4000, "reason": "disconnected with curl"}'
