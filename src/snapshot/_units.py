"""GNU du's size units and SIZE arguments: -B/--block-size, -h, --si, -k, -m, -t.

A port of what coreutils does (gnulib human.c: human_options, human_readable;
xstrtol.c: xstrtoumax, xstrtoimax), for sizes in bytes (du's from_block_size
1), so that snapshot-du prints what du prints: rounded up, with du's suffixes
(``-B M`` prints ``5M``, ``-B 1M`` prints ``5``, ``-B KB`` prints ``5000kB``).
"""
from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs start-up time; annotations stay strings (PEP 563)
    from typing import Tuple

# human_readable's options (human.h), the ones du uses.
AUTOSCALE = 1  # -h, --si: pick the power that fits
SI = 2  # print a power suffix (K, M, ...)
BASE_1024 = 4  # powers of 1024, else of 1000
B_SUFFIX = 8  # a "B" after the power letter ("iB" with BASE_1024)
GROUP = 16  # group digits as the locale says (a SIZE starting with ')

_LETTERS = " KMGTPEZYRQ"  # power_letter[]: index = exponent
_EXP_MAX = len(_LETTERS) - 1
UINTMAX = (1 << 64) - 1
INTMAX = (1 << 63) - 1


class SizeError(ValueError):
    """A SIZE du would refuse; ``kind`` is xstrtol's: "invalid", "suffix" or "large"."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        super().__init__(kind)

    def message(self, option: str, arg: str) -> str:
        """xstrtol_fatal's words: invalid -B argument 'x', invalid suffix in ..., ... too large."""
        if self.kind == "large":
            return f"{option} argument '{arg}' too large"
        if self.kind == "suffix":
            return f"invalid suffix in {option} argument '{arg}'"
        return f"invalid {option} argument '{arg}'"


class Unit:
    """How du prints a size: to_block_size and human_readable's options."""

    __slots__ = ("block", "opts")

    def __init__(self, block: int, opts: int = 0) -> None:
        self.block = block
        self.opts = opts

    @property
    def plain(self) -> bool:
        """True when a size is just the number of blocks, rounded up (no suffix, no grouping)."""
        return self.opts == 0

    def __call__(self, n: int) -> str:
        return human_readable(n, self.opts, self.block)

    def __eq__(self, other) -> bool:
        return isinstance(other, Unit) and (self.block, self.opts) == (other.block, other.opts)

    def __hash__(self) -> int:
        return hash((self.block, self.opts))

    def __repr__(self) -> str:
        return f"Unit({self.block}, {self.opts})"


KIB = Unit(1024)  # du's default, -k
BYTES = Unit(1)  # -b
MIB = Unit(1 << 20)  # -m
HUMAN = Unit(1, AUTOSCALE | SI | BASE_1024)  # -h
HUMAN_SI = Unit(1, AUTOSCALE | SI)  # --si


def human_readable(n: int, opts: int, block: int) -> str:
    """gnulib's human_readable(n, buf, opts | human_ceiling, 1, block) for n >= 0: du's
    output of n bytes in *block*-byte units, rounded up."""
    base = 1024 if opts & BASE_1024 else 1000
    # Exact integer arithmetic: amt.tenths, and where the rest lies (rounding: 0 none,
    # 1 below a half tenth, 2 exactly half, 3 above).
    amt, rest = divmod(n, block)
    r10 = rest * 10
    tenths, r2 = divmod(r10, block)
    r2 *= 2
    rounding = (1 if r2 else 0) if r2 < block else 2 + (block < r2)
    exponent = -1
    point = ""
    if opts & AUTOSCALE:
        exponent = 0
        if base <= amt:
            while True:
                r10 = (amt % base) * 10 + tenths
                r2 = (r10 % base) * 2 + (rounding >> 1)
                amt //= base
                tenths = r10 // base
                rounding = (1 if r2 + rounding else 0) if r2 < base else 2 + (base < r2 + rounding)
                exponent += 1
                if not (base <= amt and exponent < _EXP_MAX):
                    break
            if amt < 10:
                if rounding > 0:  # round the tenths up
                    tenths += 1
                    rounding = 0
                    if tenths == 10:
                        amt += 1
                        tenths = 0
                if amt < 10:
                    point = f".{tenths}"
                    tenths = rounding = 0
    if tenths + rounding > 0:  # round up
        amt += 1
        if opts & AUTOSCALE and amt == base and exponent < _EXP_MAX:
            exponent += 1
            point = ".0"
            amt = 1
    digits = _grouped(amt) if opts & GROUP else str(amt)
    if not opts & SI:
        return digits + point
    if exponent < 0:  # a suffix for the block size itself: -B M prints "5M"
        exponent, power = 0, 1
        while power < block:
            exponent += 1
            if exponent == _EXP_MAX:
                break
            power *= base
    suffix = ""
    if exponent:
        suffix = "k" if not opts & BASE_1024 and exponent == 1 else _LETTERS[exponent]
    if opts & B_SUFFIX:
        suffix += "iB" if opts & BASE_1024 and exponent else "B"
    return digits + point + suffix


def _grouped(n: int) -> str:
    """n with the locale's thousands separator (LC_NUMERIC, as du's setlocale sets it)."""
    import locale  # only here: a SIZE starting with ' is rare
    try:
        locale.setlocale(locale.LC_NUMERIC, "")
    except locale.Error:
        pass
    return locale.format_string("%d", n, grouping=True)


# ---- SIZE arguments --------------------------------------------------------------------------

_POWERS = {"k": 1, "K": 1, "M": 2, "m": 2, "G": 3, "g": 3, "T": 4, "t": 4, "P": 5, "E": 6, "Z": 7, "Y": 8}
BLOCK_SUFFIXES = "eEgGkKmMpPtTyYzZ0"  # du's -B (human_options)
THRESHOLD_SUFFIXES = "kKmMGTPEZY0"  # du's -t


def _strtol(s: str, signed: bool) -> Tuple[int, int]:
    """C's strtoimax/strtoumax(s, &end, 0): (value, index of end); end 0 if there is no number.
    Leading white space, a sign, 0x for hex and 0 for octal, as C reads them."""
    i = 0
    while i < len(s) and s[i] in " \t\n\v\f\r":
        i += 1
    neg = False
    if i < len(s) and s[i] in "+-":
        neg = s[i] == "-"
        i += 1
    base, digits = 10, "0123456789"
    if s[i:i + 2] in ("0x", "0X") and i + 2 < len(s) and s[i + 2] in "0123456789abcdefABCDEF":
        base, digits, i = 16, "0123456789abcdefABCDEF", i + 2
    elif s[i:i + 1] == "0":
        base, digits = 8, "01234567"
    start = i
    while i < len(s) and s[i] in digits:
        i += 1
    if i == start:
        return 0, 0
    value = int(s[start:i], base)
    return (-value if neg else value), i


def _xstrtol(s: str, suffixes: str, signed: bool) -> int:
    """xstrtoumax/xstrtoimax(s, NULL, 0, &v, suffixes): the value, or SizeError."""
    lo, hi = (-INTMAX - 1, INTMAX) if signed else (0, UINTMAX)
    if not signed and s.lstrip(" \t\n\v\f\r").startswith("-"):
        raise SizeError("invalid")
    value, end = _strtol(s, signed)
    large = not lo <= value <= hi
    if end == 0:
        if s and s[0] in suffixes:  # no number but a valid suffix: the number is 1
            value = 1
        else:
            raise SizeError("invalid")
    rest = s[end:]
    if not rest:
        if large:
            raise SizeError("large")
        return value
    if rest[0] not in suffixes:
        raise SizeError("suffix")
    power = _POWERS.get(rest[0])
    if power is None:  # in the list but not a multiplier (e, p, y, z for -B; 0)
        raise SizeError("suffix")
    base, used = 1024, 1
    if "0" in suffixes:  # an optional second suffix: KiB (1024), KB or KD (1000)
        if rest[1:3] == "iB":
            used = 3
        elif rest[1:2] in ("B", "D"):
            base, used = 1000, 2
    value *= base ** power
    if rest[used:]:
        raise SizeError("suffix")
    if large or not lo <= value <= hi:
        raise SizeError("large")
    return value


def parse_block_size(spec: str) -> Unit:
    """du's -B/--block-size SIZE (human_options): a number of bytes with an optional
    suffix (K, M, G, ..., KiB, KB, MB, ...), "human-readable" or "si" (or an unambiguous
    start of them), a leading ' to group digits.  A SIZE without digits prints its unit
    after each size (-B M: "5M"); one with a number does not (-B 1M: "5")."""
    opts = 0
    if spec.startswith("'"):
        opts |= GROUP
        spec = spec[1:]
    named = [u for word, u in (("human-readable", HUMAN), ("si", HUMAN_SI)) if spec and word.startswith(spec)]
    if len(named) == 1 or spec in ("human-readable", "si"):
        return Unit(named[0].block, named[0].opts | opts)
    try:
        block = _xstrtol(spec, BLOCK_SUFFIXES, signed=False)
    except SizeError as e:
        if e.kind != "large" and _leading_zero_block(spec):
            raise SizeError("invalid") from None  # human_options: a block size of 0 is invalid
        raise
    if block == 0:
        raise SizeError("invalid")
    if not any("0" <= c <= "9" for c in spec):  # no number, only a unit: print it after each size
        opts |= SI
        last = spec[-1]
        if last == "B":
            opts |= B_SUFFIX
        if last != "B" or spec[-2:-1] == "i":
            opts |= BASE_1024
    return Unit(block, opts)


def _leading_zero_block(spec: str) -> bool:
    """Whether strtoumax reads 0 from the start of spec (then du says invalid, whatever follows)."""
    value, end = _strtol(spec, False)
    return end != 0 and value == 0


def parse_threshold(spec: str) -> int:
    """du's -t/--threshold SIZE in bytes: positive, sizes below it are left out; negative,
    sizes above its magnitude.  "-0" is refused, as du refuses it."""
    value = _xstrtol(spec, THRESHOLD_SUFFIXES, signed=True)
    if value == 0 and spec.startswith("-"):
        raise SizeError("invalid")
    return value


def shown(size: int, threshold: int) -> bool:
    """du's test: v >= t for a positive threshold, v <= -t for a negative one."""
    return size <= -threshold if threshold < 0 else size >= threshold
