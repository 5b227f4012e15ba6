"""wsrelay across processes and machines, on NATS (the ``cluster`` extra).

- ``broker``: a private nats-server (127.0.0.1, random port and token).
- ``transport``: the node-to-node transport the core sends remote PIDs'
  messages and signals through (it implements the core's ``Outbound``),
  composed of ``bus`` (the NATS connection, the incarnation), ``peers``
  (each peer's session), ``publisher`` (batches out), ``inbox`` (batches
  in), ``heartbeat``, ``rpc`` and ``names`` (global names); ``hooks`` is what
  it calls on the core, ``stats`` its counters and rate-limited log.
- ``supervisor``: ``WSRELAY_WORKERS``: the broker and N worker processes.
- ``codec`` and ``wire``: what travels on the bus.

Importing this package needs neither nats-py nor ormsgpack; its modules do.
"""
