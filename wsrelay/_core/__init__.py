"""The compiled core: PIDs, messages, mailboxes, the process runtime and the
relay's per-connection path. Everything here is Cython; see the .pyi stubs."""
