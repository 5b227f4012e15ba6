"""wsrelay across processes and machines, on NATS (the ``cluster`` extra).

- ``broker``: a private nats-server (127.0.0.1, random port and token).
- ``transport``: the node-to-node transport the core sends remote PIDs'
  messages and signals through, with liveness and global names.
- ``supervisor``: ``WSRELAY_WORKERS``: the broker and N worker processes.
- ``codec`` and ``wire``: what travels on the bus.

Importing this package needs neither nats-py nor ormsgpack; its modules do.
"""
