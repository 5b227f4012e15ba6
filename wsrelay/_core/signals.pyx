# cython: language_level=3
"""The signal kinds between processes of two nodes (signals.pxd declares
them): Cython modules cimport ``Signal``, wsrelay/cluster/wire.py imports it.
Apart from vocab.pyx, whose topic EXIT would shadow the signal EXIT here."""

SIGNAL_KINDS = tuple(kind.name for kind in Signal)
