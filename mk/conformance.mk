# Autobahn|Testsuite's permessage-deflate sections (12 and 13) in full: 216
# cases of a thousand compressed messages each, about half an hour here.
# `make test` runs sections 1-10 and a subset of 12 and 13 (DEFLATE_SUBSET in
# tests/test_conformance.py); this runs every case of 12 and 13, against the
# same echo server (examples/echo, WSRELAY_COMPRESSION=on).

.PHONY: conformance-deflate

conformance-deflate: dev
	AUTOBAHN_CASES="12.*,13.*" AUTOBAHN_TIMEOUT=10800 $(BIN)/python -m pytest -q tests/test_conformance.py::test_autobahn_fuzzingclient
