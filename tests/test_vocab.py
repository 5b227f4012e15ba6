"""The words the runtime and the cluster share are declared once
(wsrelay/_core/vocab.pyx and signals.pxd): the wire code carries the core's
numbers, and no other source file spells a reserved topic or an exit reason
the core declares."""

from __future__ import annotations

import re

import pytest

from tests.harness import REPO
from wsrelay._core import vocab
from wsrelay._core.signals import SIGNAL_KINDS, Signal
from wsrelay.cluster import wire

DECLARED_IN = {"wsrelay/_core/vocab.pyx", "wsrelay/_core/vocab.pyi"}
# (vocab.MAILBOX_FULL is also the name of a Counters field of its own, in
# stats.COUNTERS, so it is not in this list.)
WORDS = [vocab.EXIT, vocab.LINK_DOWN, vocab.REPLY, vocab.NORMAL, vocab.NOPROC, vocab.NOCONNECTION,
         vocab.UNREACHABLE, vocab.REJECTED]


def test_the_wire_carries_the_core_signal_kinds():
    assert SIGNAL_KINDS == tuple(kind.name for kind in Signal)
    for name in SIGNAL_KINDS:
        assert getattr(wire, name) == int(Signal[name]), name
    assert len(set(SIGNAL_KINDS)) == len({int(kind) for kind in Signal})


@pytest.mark.parametrize("word", WORDS)
def test_a_declared_word_is_spelled_nowhere_else(word):
    literal = re.compile(r"""["']""" + re.escape(word) + r"""["']""")
    sources = [p for p in (REPO / "wsrelay").rglob("*")
               if p.suffix in (".py", ".pyx", ".pxd", ".pyi") and str(p.relative_to(REPO)) not in DECLARED_IN]
    assert sources
    found = [f"{p.relative_to(REPO)}:{n}" for p in sources
             for n, line in enumerate(p.read_text().splitlines(), 1) if literal.search(line)]
    assert not found, f"{word!r} spelled outside vocab.pyx: {found}"
