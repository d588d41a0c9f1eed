"""Bounds on a `.pth` pickle, checked on its opcodes before anything is unpickled.

The restricted unpickler (`pth._RestrictedUnpickler`) refuses code, but CPython's C unpickler still
trusts the shape of the data: a deeply nested structure crashes the process (hashing or freeing it
recurses in C, SIGSEGV), and a memo opcode with a huge index makes it allocate the memo array up to
that index (10 bytes of pickle, gigabytes of memory). `check_pickle` walks the opcodes with
`pickletools.genops` (which builds nothing) and tracks only how deep each value nests, so such input
is refused with one line before the unpickler sees it.

A torch state dict nests 5 levels (dict -> tensor rebuild args -> shape tuple), uses one memo slot per
object and never holds more than a batch of 1000 items on the stack; the bounds leave a wide margin.
"""

from __future__ import annotations

import pickletools
from collections.abc import Callable
from dataclasses import dataclass

from hubtools.errors import CorruptFileError

MAX_PICKLE_BYTES = 16 * 1024 * 1024  # data.pkl: ~120 bytes per tensor, a Mixtral 8x22B state dict is 0.2 MB
MAX_DEPTH = 32
MAX_MEMO = 1 << 20
MAX_STACK = 1 << 20


@dataclass
class _Value:
    """A value on the simulated stack: only how deeply it nests (shared when the memo aliases it)."""

    depth: int = 0


_MARK = _Value(-1)
_SCALAR = _Value(0)  # shared: scalars never grow (a malformed APPEND onto one only makes the check stricter)
_SCALAR_OPS = frozenset(
    "INT BININT BININT1 BININT2 LONG LONG1 LONG4 STRING BINSTRING SHORT_BINSTRING BINBYTES SHORT_BINBYTES "
    "BINBYTES8 BYTEARRAY8 UNICODE SHORT_BINUNICODE BINUNICODE BINUNICODE8 FLOAT BINFLOAT NONE NEWTRUE "
    "NEWFALSE GLOBAL PERSID NEXT_BUFFER".split()
)
_EMPTY_OPS = frozenset({"EMPTY_LIST", "EMPTY_DICT", "EMPTY_TUPLE", "EMPTY_SET"})
_FROM_MARK_OPS = frozenset({"LIST", "TUPLE", "DICT", "FROZENSET", "OBJ", "INST"})
_INTO_TOP_FROM_MARK = frozenset({"APPENDS", "SETITEMS", "ADDITEMS"})
_POP_AND_PUSH = {"TUPLE1": 1, "TUPLE2": 2, "TUPLE3": 3, "REDUCE": 2, "NEWOBJ": 2, "NEWOBJ_EX": 3}
_POP_AND_PUSH |= {"STACK_GLOBAL": 2, "BINPERSID": 1, "READONLY_BUFFER": 1}
_NO_STACK = frozenset({"PROTO", "FRAME", "STOP"})


class _Walk:
    """The simulated unpickler stack and memo, holding `_Value`s instead of objects."""

    def __init__(self, where: str) -> None:
        self.where = where
        self.stack: list[_Value] = []
        self.memo: dict[int, _Value] = {}

    def fail(self, why: str) -> CorruptFileError:
        return CorruptFileError(f"{self.where}: refusing a hostile or corrupt pickle ({why})")

    def push(self, value: _Value) -> None:
        if value.depth > MAX_DEPTH:
            raise self.fail(f"nesting deeper than {MAX_DEPTH} levels")
        if len(self.stack) >= MAX_STACK:
            raise self.fail(f"more than {MAX_STACK} values on the stack")
        self.stack.append(value)

    def pop(self, n: int = 1) -> list[_Value]:
        if len(self.stack) < n or any(v is _MARK for v in self.stack[len(self.stack) - n :]):
            raise self.fail("stack underflow")
        items = self.stack[len(self.stack) - n :]
        del self.stack[len(self.stack) - n :]
        return items

    def pop_to_mark(self) -> list[_Value]:
        for i in range(len(self.stack) - 1, -1, -1):
            if self.stack[i] is _MARK:
                items = self.stack[i + 1 :]
                del self.stack[i:]
                return items
        raise self.fail("no MARK on the stack")

    def container(self, items: list[_Value]) -> _Value:
        return _Value(1 + max((v.depth for v in items), default=0))

    def grow_top(self, items: list[_Value]) -> None:
        top = self.pop()[0]
        top.depth = max(top.depth, 1 + max((v.depth for v in items), default=0))
        self.push(top)

    def memo_put(self, index: int) -> None:
        if not 0 <= index < MAX_MEMO:
            raise self.fail(f"memo index {index} (at most {MAX_MEMO - 1})")
        if not self.stack or self.stack[-1] is _MARK:
            raise self.fail("memo store with an empty stack")
        self.memo[index] = self.stack[-1]

    def memo_get(self, index: int) -> None:
        if index not in self.memo:
            raise self.fail(f"memo index {index} read before it is stored")
        self.push(self.memo[index])

    def scalar(self, _: object) -> None:
        self.push(_SCALAR)

    def empty(self, _: object) -> None:
        self.push(_Value(1))

    def mark(self, _: object) -> None:
        self.push(_MARK)

    def from_mark(self, _: object) -> None:
        self.push(self.container(self.pop_to_mark()))

    def into_top_from_mark(self, _: object) -> None:
        self.grow_top(self.pop_to_mark())

    def into_top(self, _: object) -> None:
        self.grow_top(self.pop())

    def setitem(self, _: object) -> None:
        self.grow_top(self.pop(2))

    def put(self, arg: object) -> None:
        self.memo_put(int(arg))  # type: ignore[call-overload]

    def memoize(self, _: object) -> None:
        self.memo_put(len(self.memo))

    def get(self, arg: object) -> None:
        self.memo_get(int(arg))  # type: ignore[call-overload]

    def drop(self, _: object) -> None:
        self.pop()

    def drop_mark(self, _: object) -> None:
        self.pop_to_mark()

    def dup(self, _: object) -> None:
        self.push(self.pop()[0])
        self.push(self.stack[-1])

    def nothing(self, _: object) -> None:
        pass

    def handlers(self) -> dict[str, Callable[[object], None]]:
        """Opcode name -> how it moves the stack (values built from popped ones nest one level deeper)."""
        table: dict[str, Callable[[object], None]] = dict.fromkeys(_SCALAR_OPS, self.scalar)
        table |= dict.fromkeys(_EMPTY_OPS, self.empty) | dict.fromkeys(_FROM_MARK_OPS, self.from_mark)
        table |= dict.fromkeys(_INTO_TOP_FROM_MARK, self.into_top_from_mark) | dict.fromkeys(_NO_STACK, self.nothing)
        table |= dict.fromkeys(("PUT", "BINPUT", "LONG_BINPUT"), self.put)
        table |= dict.fromkeys(("GET", "BINGET", "LONG_BINGET"), self.get)
        table |= {"MARK": self.mark, "APPEND": self.into_top, "BUILD": self.into_top, "SETITEM": self.setitem}
        table |= {"MEMOIZE": self.memoize, "POP": self.drop, "POP_MARK": self.drop_mark, "DUP": self.dup}
        for name, n in _POP_AND_PUSH.items():
            table[name] = lambda _, n=n: self.push(self.container(self.pop(n)))  # type: ignore[misc]
        return table


def check_pickle(data: bytes, where: str) -> None:
    """Refuse a pickle whose structure could crash or exhaust the C unpickler; builds no object.

    Raises:
        CorruptFileError: too large, nested deeper than `MAX_DEPTH`, a memo index above `MAX_MEMO`,
            more than `MAX_STACK` stacked values, or opcodes that are malformed or truncated.
    """
    if len(data) > MAX_PICKLE_BYTES:
        raise CorruptFileError(f"{where}: data.pkl is {len(data)} bytes (at most {MAX_PICKLE_BYTES} accepted)")
    walk = _Walk(where)
    handlers = walk.handlers()
    try:
        for opcode, arg, _ in pickletools.genops(data):
            handler = handlers.get(opcode.name)
            if handler is None:
                raise walk.fail(f"unsupported opcode {opcode.name}")
            handler(arg)
    except (ValueError, OverflowError) as exc:  # genops: unknown opcode, truncated argument
        raise walk.fail(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from None
