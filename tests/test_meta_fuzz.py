"""Random mutations of valid rootfs.meta bytes give a RootfsMeta or a MetaError, nothing else."""
import json
import re

from hypothesis import given, settings, strategies as st

from snapshot import MetaError, RootfsMeta
from snapshot._gojson import GoJSONError, GoStruct, decode_object
from snapshot._meta import _CANONICAL, decode_fields, decode_meta, encode_meta

int64 = st.integers(-(1 << 63), (1 << 63) - 1)
LONE = re.compile("[\ud800-\udfff]")
metas = st.builds(RootfsMeta, st.text(), st.text(), int64, int64)

TOKENS = [b"{", b"}", b"[", b"]", b",", b":", b'"', b"\\", b"\\u", b"\\ud800", b"null", b"true", b"-", b"0", b"1e5",
          b".", b" ", b"\n", b"\xff", b"\xc3", b"\xef\xbb\xbf", b'"vcpus":', b'"VCPUS":', b'"memory_mb":1', b"\x00"]


@st.composite
def mutated(draw):
    data = bytearray(encode_meta(draw(metas)))
    for _ in range(draw(st.integers(1, 8))):
        kind = draw(st.sampled_from(["flip", "insert", "delete", "token", "dup"]))
        pos = draw(st.integers(0, len(data)))
        if kind == "flip" and pos < len(data):
            data[pos] = draw(st.integers(0, 255))
        elif kind == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=4))
        elif kind == "delete":
            del data[pos:pos + draw(st.integers(1, 6))]
        elif kind == "token":
            data[pos:pos] = draw(st.sampled_from(TOKENS))
        elif kind == "dup" and data:
            end = draw(st.integers(pos, len(data)))
            data[pos:pos] = data[pos:end]
    return bytes(data)


@settings(max_examples=4000, deadline=None)
@given(mutated())
def test_mutations_give_meta_or_meta_error(data):
    try:
        m = decode_meta(data)
    except MetaError as e:
        assert e.reason
        return
    assert isinstance(m, RootfsMeta)
    assert isinstance(m.base_template, str) and isinstance(m.template_id, str)
    assert type(m.vcpus) is int and type(m.memory_mb) is int
    # what we accept, we can write back, and it reads the same
    assert decode_meta(encode_meta(m)) == m


@settings(max_examples=1000, deadline=None)
@given(metas)
def test_round_trip_and_python_json_agrees_on_our_output(m):
    data = encode_meta(m)
    # A lone surrogate (str's form of invalid UTF-8) is written as U+FFFD, as Go does.
    expected = RootfsMeta(LONE.sub("\ufffd", m.base_template), LONE.sub("\ufffd", m.template_id),
                          m.vcpus, m.memory_mb)
    assert decode_meta(data) == expected
    doc = json.loads(data)  # our bytes are valid JSON for any other reader too
    assert doc["base_template"] == expected.base_template


def _full_decoder(data):
    """The general decoder alone, bypassing _meta's one-match path for canonical files."""
    try:
        values = decode_object(data, GoStruct({"base_template": str, "template_id": str, "vcpus": int,
                                               "memory_mb": int}))
    except GoJSONError:
        return "error"
    return (values.get("base_template", ""), values.get("template_id", ""),
            values.get("vcpus", 0), values.get("memory_mb", 0))


def _fast_or_full(data):
    try:
        return decode_fields(data)
    except MetaError:
        return "error"


@settings(max_examples=3000, deadline=None)
@given(st.one_of(metas.map(encode_meta), mutated(),
                 st.builds(lambda b, v: b'{"base_template":"' + b + b'","vcpus":' + v + b"}",
                           st.binary(max_size=8), st.sampled_from([b"0", b"-0", b"01", b"9223372036854775808",
                                                                   b"-9223372036854775808", b"1" * 19]))))
def test_canonical_fast_path_agrees_with_the_full_decoder(data):
    assert _fast_or_full(data) == _full_decoder(data)


def test_most_of_what_go_writes_takes_the_fast_path():
    """The test above would pass with no fast path at all: check it is taken."""
    assert _CANONICAL.match(encode_meta(RootfsMeta("ubuntu-22.04", "tpl", 2, 2048)))
    assert _CANONICAL.match(encode_meta(RootfsMeta("caf\u00e9")))
    assert not _CANONICAL.match(b'{"base_template":"a\\n"}')
