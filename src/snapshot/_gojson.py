"""The subset of Go's encoding/json that rootfs.meta needs, byte for byte.

Python's json module differs from Go's in ways that matter for files both
sides read: it accepts NaN, keeps lone surrogates, rejects invalid UTF-8,
matches keys case-sensitively and escapes differently.  So this module
implements Go's rules directly:

* ``encode_string``: Go's ``json.Marshal`` string escaping (HTML-safe).
* ``decode_object``: Go's ``json.Unmarshal`` into a struct of string and int
  fields: validate the whole document first (Go's scanner), then assign
  fields by exact or case-folded key, last key wins, ``null`` is a no-op.
"""
from __future__ import annotations

import codecs
import re

__all__ = ["GO_UTF8", "GoJSONError", "GoStruct", "encode_string", "decode_object", "INT64_MIN", "INT64_MAX"]

INT64_MIN = -(1 << 63)
INT64_MAX = (1 << 63) - 1
MAX_DEPTH = 10000  # Go's scanner: maxNestingDepth


class GoJSONError(ValueError):
    """The document is not one Go would accept; str() is the reason."""


# --- encoding ---------------------------------------------------------------

_ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t",
            # Go 1.22 and later write \b and \f short.
            "\b": "\\b", "\f": "\\f",
            # HTML-safe escaping is on in json.Marshal.
            "<": "\\u003c", ">": "\\u003e", "&": "\\u0026",
            "\u2028": "\\u2028", "\u2029": "\\u2029"}
for _c in range(0x20):
    _ESCAPES.setdefault(chr(_c), "\\u%04x" % _c)  # Go uses lower-case hex
_NEEDS_ESCAPE = re.compile('["\\\\<>&\u2028\u2029\x00-\x1f\ud800-\udfff]')


def _escape(m: re.Match) -> str:
    c = m.group()
    # A lone surrogate is the str form of invalid UTF-8; Go writes U+FFFD for those.
    return _ESCAPES.get(c, "\ufffd")


def encode_string(s: str) -> bytes:
    """Go's encoding of a string value, quotes included, as UTF-8 bytes."""
    return ('"' + _NEEDS_ESCAPE.sub(_escape, s) + '"').encode("utf-8")


# --- decoding ---------------------------------------------------------------

def _go_replace(err: UnicodeDecodeError):
    # Go's utf8.DecodeRune replaces one invalid byte at a time with U+FFFD;
    # Python's "replace" swallows a whole truncated sequence at once.
    return "\ufffd", err.start + 1


GO_UTF8 = "snapshot-go-utf8"  # the error handler name: bytes.decode("utf-8", GO_UTF8) decodes as Go does
codecs.register_error(GO_UTF8, _go_replace)  # type: ignore[arg-type]

_WS = b" \t\r\n"
_NUMBER = re.compile(rb"-?(?:0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?")
_INT = re.compile(rb"-?(?:0|[1-9][0-9]*)\Z")
# A run of string bytes that need no attention: not a quote, backslash or control byte.
_PLAIN = re.compile(rb'[^"\\\x00-\x1f]*')
_SIMPLE_ESCAPES = {ord('"'): '"', ord("\\"): "\\", ord("/"): "/", ord("b"): "\b",
                   ord("f"): "\f", ord("n"): "\n", ord("r"): "\r", ord("t"): "\t"}
_HEX4 = re.compile(rb"[0-9a-fA-F]{4}")


class _Doc:
    """A cursor over the document with Go scanner's error messages."""

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def fail(self, what: str) -> GoJSONError:
        if self.pos >= len(self.data):
            return GoJSONError("unexpected end of JSON input")
        c = self.data[self.pos:self.pos + 1]
        return GoJSONError(f"invalid character {c!r} {what} (offset {self.pos})")

    def skip_ws(self) -> None:
        data, pos, n = self.data, self.pos, len(self.data)
        while pos < n and data[pos] in _WS:
            pos += 1
        self.pos = pos

    def string(self) -> str:
        """Parse a string starting at the opening quote; return its Go value."""
        data = self.data
        self.pos += 1
        parts = []
        while True:
            m = _PLAIN.match(data, self.pos)
            assert m is not None  # the pattern matches the empty string
            if m.end() > self.pos:
                parts.append(data[self.pos:m.end()].decode("utf-8", GO_UTF8))
                self.pos = m.end()
            if self.pos >= len(data):
                raise self.fail("in string literal")
            c = data[self.pos]
            if c == 0x22:  # closing quote
                self.pos += 1
                return "".join(parts)
            if c < 0x20:
                raise self.fail("in string literal")
            # backslash
            self.pos += 1
            if self.pos >= len(data):
                raise self.fail("in string escape code")
            e = data[self.pos]
            if e in _SIMPLE_ESCAPES:
                parts.append(_SIMPLE_ESCAPES[e])
                self.pos += 1
            elif e == ord("u"):
                parts.append(self._unicode_escape())
            else:
                raise self.fail("in string escape code")

    def _u4(self, at: int) -> int:
        m = _HEX4.match(self.data, at)
        return int(m.group(), 16) if m else -1

    def _unicode_escape(self) -> str:
        # self.pos is at the 'u' of \uXXXX.
        r = self._u4(self.pos + 1)
        if r < 0:
            for i in range(1, 5):  # point the error at the first bad hex digit
                b = self.data[self.pos + i:self.pos + i + 1]
                if not b or b not in b"0123456789abcdefABCDEF":
                    self.pos += i
                    break
            raise self.fail("in \\u hexadecimal character escape")
        self.pos += 5
        if 0xD800 <= r < 0xE000:
            # A high surrogate followed by an escaped low one is a pair; anything
            # else is U+FFFD and what follows is read on its own, as Go does.
            if r < 0xDC00 and self.data[self.pos:self.pos + 2] == b"\\u":
                r2 = self._u4(self.pos + 2)
                if 0xDC00 <= r2 < 0xE000:
                    self.pos += 6
                    return chr(0x10000 + ((r - 0xD800) << 10) + (r2 - 0xDC00))
            return "\ufffd"
        return chr(r)

    def literal(self):
        """Parse a number, true, false or null; return (kind, raw bytes)."""
        data, pos = self.data, self.pos
        for word in (b"true", b"false", b"null"):
            if data.startswith(word[:1], pos):
                for i, ch in enumerate(word):
                    if pos + i >= len(data) or data[pos + i] != ch:
                        self.pos = pos + i
                        raise self.fail(f"in literal {word.decode()} (expecting {chr(ch)!r})")
                self.pos = pos + len(word)
                return word.decode(), word
        m = _NUMBER.match(data, pos)
        if not m:
            raise self.fail("looking for beginning of value")
        # Go's scanner rejects what directly follows a number only if it cannot
        # continue the grammar; "1." and "1e" are errors, so check them here.
        end = m.end()
        if end < len(data) and data[end] in b".eE" and not m.group(1 if data[end] == 0x2E else 2):
            self.pos = end + 1
            raise self.fail("after decimal point in numeric literal" if data[end] == 0x2E
                            else "in exponent of numeric literal")
        self.pos = end
        return "number", m.group()

    def skip_value(self, depth: int) -> None:
        """Validate and skip any value, iteratively (no recursion limit)."""
        stack: list = []  # b"{" or b"[" per open container
        while True:
            self.skip_ws()
            c = self.data[self.pos:self.pos + 1]
            if c == b"{" or c == b"[":
                if depth + len(stack) + 1 > MAX_DEPTH:
                    raise GoJSONError("exceeded max depth")
                stack.append(c)
                self.pos += 1
                self.skip_ws()
                close = b"}" if c == b"{" else b"]"
                if self.data[self.pos:self.pos + 1] == close:
                    self.pos += 1
                    stack.pop()
                elif c == b"{":
                    self._key()
                    continue
                else:
                    continue
            elif c == b'"':
                self.string()
            else:
                self.literal()
            # After a value: a comma continues the container, a bracket closes it.
            while stack:
                self.skip_ws()
                c = self.data[self.pos:self.pos + 1]
                top = stack[-1]
                if c == b",":
                    self.pos += 1
                    if top == b"{":
                        self._key()
                    break
                if (top == b"{" and c == b"}") or (top == b"[" and c == b"]"):
                    self.pos += 1
                    stack.pop()
                    continue
                raise self.fail("after object key:value pair" if top == b"{"
                                else "after array element")
            else:
                return

    def _key(self) -> str:
        """Parse `"key" :` and leave the cursor before the value."""
        self.skip_ws()
        if self.data[self.pos:self.pos + 1] != b'"':
            raise self.fail("looking for beginning of object key string")
        key = self.string()
        self.skip_ws()
        if self.data[self.pos:self.pos + 1] != b":":
            raise self.fail("after object key")
        self.pos += 1
        return key


# Go folds a key with ToUpper(ToLower(r)) per rune.  The only non-ASCII runes
# that fold onto ASCII letters are these; any other rune cannot match a field
# whose name is ASCII, so it may stay as it is.
_FOLD = str.maketrans({"\u0130": "I", "\u0131": "I", "\u017f": "S", "\u212a": "K"})


def _fold(key: str) -> str:
    return "".join(c.upper() if c < "\x80" else c for c in key.translate(_FOLD))


class GoStruct:
    """A Go struct of string and int fields, as decode_object needs it: built once."""

    __slots__ = ("fields", "folded")

    def __init__(self, fields: dict) -> None:
        self.fields = dict(fields)  # JSON key (Go's field tag) -> str or int
        self.folded = {_fold(k): k for k in fields}  # Go's case-insensitive match


def _int64(raw: bytes):
    """The int a JSON integer literal holds, or None if Go's int (64 bits) cannot hold it.

    Length first: Python refuses to convert more than 4300 digits (a bare ValueError),
    and anything over 19 digits is out of range anyway."""
    if len(raw) - raw.startswith(b"-") > 19 or not _INT.match(raw):
        return None
    n = int(raw)
    return n if INT64_MIN <= n <= INT64_MAX else None


def _shown(raw: bytes) -> str:
    """A number literal for an error message, cut short if it is long."""
    return raw.decode() if len(raw) <= 40 else f"{raw[:20].decode()}... ({len(raw)} characters)"


def decode_object(data: bytes, struct: GoStruct) -> dict:
    """Unmarshal *data* as Go does into the struct *struct* describes.

    The result maps the keys that were set to their values.  Raises GoJSONError.
    """
    doc = _Doc(data)
    fields, folded = struct.fields, struct.folded
    out: dict = {}
    type_error = None
    doc.skip_ws()
    if doc.pos >= len(data):
        raise GoJSONError("unexpected end of JSON input")
    c = data[doc.pos:doc.pos + 1]
    if c == b"{":
        doc.pos += 1
        doc.skip_ws()
        if data[doc.pos:doc.pos + 1] == b"}":
            doc.pos += 1
        else:
            while True:
                key = doc._key()
                field = key if key in fields else folded.get(_fold(key))
                doc.skip_ws()
                c = data[doc.pos:doc.pos + 1]
                if field is None or c in (b"{", b"["):
                    doc.skip_value(1)
                    if field is not None and type_error is None:
                        type_error = f"cannot unmarshal {'object' if c == b'{' else 'array'} into field {field}"
                elif c == b'"':
                    value = doc.string()
                    if fields[field] is str:
                        out[field] = value
                    elif type_error is None:
                        type_error = f"cannot unmarshal string into field {field} of type int"
                else:
                    kind, raw = doc.literal()
                    if kind == "null":
                        pass  # Go: null into a non-pointer is a no-op
                    elif fields[field] is int and kind == "number":
                        n = _int64(raw)
                        if n is None:
                            if type_error is None:
                                type_error = f"cannot unmarshal number {_shown(raw)} into field {field} of type int"
                        else:
                            out[field] = n
                    elif type_error is None:
                        what = "number" if kind == "number" else "bool"
                        go_type = "string" if fields[field] is str else "int"
                        type_error = f"cannot unmarshal {what} {_shown(raw)} into field {field} of type {go_type}"
                doc.skip_ws()
                c = data[doc.pos:doc.pos + 1]
                if c == b",":
                    doc.pos += 1
                    continue
                if c == b"}":
                    doc.pos += 1
                    break
                raise doc.fail("after object key:value pair")
    elif c == b"[" or c == b'"':
        doc.skip_value(0)
        type_error = f"cannot unmarshal {'array' if c == b'[' else 'string'} into a rootfs meta object"
    else:
        kind, raw = doc.literal()
        if kind != "null":
            type_error = f"cannot unmarshal {kind} into a rootfs meta object"
    doc.skip_ws()
    if doc.pos != len(data):
        raise doc.fail("after top-level value")
    # Go reports syntax errors first (it validates the whole input before
    # decoding), then the first type mismatch.
    if type_error is not None:
        raise GoJSONError(type_error)
    return out
