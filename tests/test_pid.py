import pickle

import pytest

from wsrelay import Pid


def test_text_form_round_trips():
    for text in ["{app:gateway|0x00012}", "{node1@app:processes|0x0000a}", "{local|0xfffff}", "{h|0x123456}"]:
        assert str(Pid.parse(text)) == text


def test_format_pads_to_five_lowercase_hex_digits():
    assert str(Pid("app:processes", 4)) == "{app:processes|0x00004}"
    assert str(Pid("h", 0xABCDEF, "n1")) == "{n1@h|0xabcdef}"


def test_hashable_and_comparable():
    a = Pid.parse("{h|0x00001}")
    b = Pid("h", 1)
    c = Pid("h", 2)
    assert a == b and hash(a) == hash(b)
    assert a != c and a < c and c > a and a <= b and a >= b
    assert len({a, b, c}) == 2
    assert sorted([c, a]) == [a, c]


def test_equal_to_its_text_form_for_lookups():
    pid = Pid("h", 7)
    assert pid == "{h|0x00007}" and hash(pid) == hash("{h|0x00007}")
    assert {pid: 1}["{h|0x00007}"] == 1
    assert pid != "{h|0x00008}"


def test_fields_and_pickling():
    pid = Pid.parse("{n@h:x|0x0001f}")
    assert (pid.node, pid.host, pid.id) == ("n", "h:x", 31)
    assert pickle.loads(pickle.dumps(pid)) == pid


@pytest.mark.parametrize(
    "text, problem",
    [
        ("h|0x00001", "expected the form"),
        ("{h0x00001}", "missing '|'"),
        ("{|0x00001}", "empty host"),
        ("{@h|0x00001}", "empty node"),
        ("{h|00001}", "must start with '0x'"),
        ("{h|0x001}", "at least 5 hex digits"),
        ("{h|0x0000A}", "lowercase hex"),
        ("{h|0x0000g}", "lowercase hex"),
        ("{h|0x000001}", "leading zeros"),
        ("{h h|0x00001}", "contains ' '"),
        ("{h|0x11111111111111111}", "larger than 64 bits"),
        ("", "expected the form"),
    ],
)
def test_malformed_text_names_the_problem(text, problem):
    with pytest.raises(ValueError, match=problem):
        Pid.parse(text)


def test_parse_requires_text():
    with pytest.raises(TypeError):
        Pid.parse(12)
