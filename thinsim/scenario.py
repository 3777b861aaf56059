"""The scenario language of tests/kernel/README.md: parser, data pattern, executor contract, runner.

A scenario is a small text program, one operation a line, run against one pool named ``pool``
and thin devices named ``thin<ID>``.  :func:`parse` turns it into :class:`Op` objects,
:func:`run` applies them to an :class:`Executor` (the real kernel or the model) and returns the
transcript, which is what tests compare byte for byte.

>>> ops = parse("pool md=4M data=1G bs=128 lwm=0\\nmsg create_thin 0  # a comment\\n")
>>> [(op.name, op.args, op.kwargs) for op in ops][1]
('msg', ['create_thin', '0'], {})
>>> ops[0].kwargs["data"]
1073741824
>>> pattern(7, 512, 8)
b'7:512\\n7:'
"""

from __future__ import annotations

import abc
import errno as _errno
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from thinsim.constants import SECTOR_SIZE
from thinsim.errors import ThinsimError

__all__ = [
    "SECTOR_SIZE",
    "Executor",
    "Op",
    "ScenarioError",
    "errno_name",
    "parse",
    "parse_size",
    "pattern",
    "run",
    "steps",
]


_SUFFIXES = {"k": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}
# The largest size or offset a file or a device takes (off_t, loff_t): a scenario's sizes
# become file sizes (truncate) and byte offsets (pwrite), which are signed 64-bit.
_MAX_BYTES = (1 << 63) - 1
# A plain count (sectors, ids, seconds, a seed) is at most what a 64-bit field holds.
_MAX_INT = (1 << 64) - 1
_SIZE_RE = re.compile(r"([0-9]+)([kMGT]?)")
_INT_RE = re.compile(r"[0-9]+")


def parse_size(text: str) -> int:
    """Bytes for ``text``: a decimal number with an optional suffix k, M, G or T (powers of 1024).

    >>> parse_size("4k"), parse_size("1G"), parse_size("512")
    (4096, 1073741824, 512)
    """
    m = _SIZE_RE.fullmatch(text)
    if m is None:
        raise ValueError(f"bad size {text!r} (want digits and an optional k/M/G/T suffix)")
    size = int(m.group(1)) * _SUFFIXES.get(m.group(2), 1)
    if size > _MAX_BYTES:
        raise ValueError(f"size {text!r} too large (more than 2^63-1 bytes)")
    return size


def _parse_int(text: str) -> int:
    if _INT_RE.fullmatch(text) is None:
        raise ValueError(f"bad number {text!r} (want plain decimal digits)")
    if len(text) > 20 or int(text) > _MAX_INT:
        raise ValueError(f"number {text!r} too large (more than 2^64-1)")
    return int(text)


def _parse_sectors(text: str) -> int:
    """An I/O offset or length: a size that is a whole number of 512-byte sectors (the
    Executor contract; O_DIRECT refuses anything else)."""
    size = parse_size(text)
    if size % SECTOR_SIZE:
        raise ValueError(f"{text!r} is not a multiple of {SECTOR_SIZE} bytes")
    return size


def _parse_token(text: str) -> str:
    if not text:
        raise ValueError("empty value")
    return text


def _parse_features(text: str) -> list[str]:
    # "features=" (empty) means no features; used by reload to drop all of them.
    return [f for f in text.split(",") if f] if text else []


# Value kinds: how a scenario token becomes a Python value.
_KINDS: dict[str, Callable[[str], Any]] = {
    "size": parse_size,  # bytes, with suffixes
    "sectors": _parse_sectors,  # bytes, with suffixes, whole sectors
    "int": _parse_int,  # a plain count (sectors, ids, seconds, a seed)
    "token": _parse_token,  # verbatim text: a table field the kernel itself parses
    "features": _parse_features,
}


@dataclass(frozen=True)
class _Syntax:
    positional: tuple[tuple[str, str], ...] = ()  # (name, kind), all required
    optional: tuple[tuple[str, str], ...] = ()  # (name, kind), trailing, optional
    rest: bool = False  # takes one or more free words (msg)
    keywords: tuple[tuple[str, str], ...] = ()  # (name, kind)
    required: tuple[str, ...] = ()  # required keywords


_ID = ("id", "int")
_IO = (_ID, ("off", "sectors"), ("len", "sectors"))
_TABLE_KEYWORDS = (
    ("md", "size"),
    ("data", "size"),
    ("bs", "token"),
    ("lwm", "token"),
    ("len", "int"),
    ("features", "features"),
)

_SYNTAX: dict[str, _Syntax] = {
    "pool": _Syntax(keywords=_TABLE_KEYWORDS, required=("md", "data", "bs", "lwm")),
    "reload": _Syntax(keywords=_TABLE_KEYWORDS),
    "msg": _Syntax(rest=True),
    "thin": _Syntax(positional=(_ID, ("len", "int"))),
    "remove_thin": _Syntax(positional=(_ID,)),
    "remove_pool": _Syntax(),
    "suspend": _Syntax(),
    "resume": _Syntax(),
    "suspend_thin": _Syntax(positional=(_ID,)),
    "resume_thin": _Syntax(positional=(_ID,)),
    "write": _Syntax(positional=_IO, optional=(("seed", "int"),)),
    "write_nosync": _Syntax(positional=_IO, optional=(("seed", "int"),)),
    "read": _Syntax(positional=_IO),
    "discard": _Syntax(positional=_IO),
    "flush": _Syntax(positional=(_ID,)),
    "status": _Syntax(),
    "status_noflush": _Syntax(),
    "thin_status": _Syntax(positional=(_ID,)),
    "table": _Syntax(),
    "thin_table": _Syntax(positional=(_ID,)),
    "events": _Syntax(),
    "dump": _Syntax(),
    "du": _Syntax(),
    "no_space_timeout": _Syntax(positional=(("seconds", "int"),)),
}

#: Every operation name of the language, in the order the README lists them.
OP_NAMES: tuple[str, ...] = tuple(_SYNTAX)


@dataclass(frozen=True)
class Op:
    """One parsed scenario line.

    ``args`` holds the positional values and ``kwargs`` the ``key=value`` ones, converted by
    kind: sizes (``md``, ``data``, offsets and lengths in bytes) to ``int`` with their suffix
    applied; counts (thin ids, ``len`` in sectors, seeds, seconds) to ``int``; ``bs`` and
    ``lwm`` stay ``str`` (the kernel parses them from the table, so malformed values are
    legal scenario text); ``features`` becomes ``list[str]``; ``msg`` words stay ``str``.
    ``line`` is the source line without its comment and with whitespace collapsed.
    """

    name: str
    args: list[Any] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)
    line: str = ""
    lineno: int = 0


class ScenarioError(ValueError):
    """A scenario line that cannot be run: its message starts ``line N: 'LINE': `` and says
    what is wrong; ``lineno`` is N."""

    def __init__(self, lineno: int, message: str) -> None:
        super().__init__(message)
        self.lineno = lineno


def _parse_line(words: list[str], lineno: int) -> Op:
    try:
        return _parse_words(words, lineno)
    except ScenarioError:
        raise
    except ValueError as e:
        raise ScenarioError(lineno, str(e)) from None


def _parse_words(words: list[str], lineno: int) -> Op:
    name, rest = words[0], words[1:]
    syntax = _SYNTAX.get(name)
    where = f"line {lineno}: {' '.join(words)!r}"
    if syntax is None:
        raise ValueError(f"{where}: unknown operation {name!r}")
    if syntax.rest:
        if not rest:
            raise ValueError(f"{where}: {name} needs at least one word")
        return Op(name, list(rest), {}, " ".join(words), lineno)
    positional = [w for w in rest if "=" not in w]
    keyword = [w for w in rest if "=" in w]
    kinds = dict(syntax.keywords)
    kwargs: dict[str, Any] = {}
    for word in keyword:
        key, _, value = word.partition("=")
        if key not in kinds:
            raise ValueError(f"{where}: unknown keyword {key!r}")
        if key in kwargs:
            raise ValueError(f"{where}: keyword {key!r} given twice")
        try:
            kwargs[key] = _KINDS[kinds[key]](value)
        except ValueError as e:
            raise ValueError(f"{where}: {key}: {e}") from None
    missing = [k for k in syntax.required if k not in kwargs]
    if missing:
        raise ValueError(f"{where}: missing {', '.join(k + '=' for k in missing)}")
    lo = len(syntax.positional)
    hi = lo + len(syntax.optional)
    if not lo <= len(positional) <= hi:
        want = str(lo) if lo == hi else f"{lo} to {hi}"
        raise ValueError(f"{where}: {name} takes {want} arguments, got {len(positional)}")
    args = []
    for word, (argname, kind) in zip(positional, syntax.positional + syntax.optional):
        try:
            args.append(_KINDS[kind](word))
        except ValueError as e:
            raise ValueError(f"{where}: {argname}: {e}") from None
    return Op(name, args, kwargs, " ".join(words), lineno)


def parse(text: str) -> list[Op]:
    """Parse scenario text into operations; raise :class:`ScenarioError` (a ValueError)
    naming the line if one is malformed.

    ``#`` starts a comment anywhere on a line; blank lines are ignored.  Lines end at ``\n``
    alone, so that line numbers are an editor's (other line breaks are blanks).
    """
    ops = []
    for lineno, raw in enumerate(text.split("\n"), 1):
        words = raw.split("#", 1)[0].split()
        if words:
            ops.append(_parse_line(words, lineno))
    return ops


def pattern(seed: int, off: int, length: int) -> bytes:
    """The bytes ``write ID OFF LEN SEED`` writes: ``length`` bytes starting at byte ``off``.

    Each 512-byte sector at absolute byte offset ``o`` holds ``f"{seed}:{o}\\n"`` repeated and
    cut to 512 bytes, so a read shows which write put which sector where.  ``off`` and
    ``length`` need not be sector aligned (the covering sectors are built, then sliced).

    >>> pattern(1, 0, 12)
    b'1:0\\n1:0\\n1:0\\n'
    >>> len(pattern(3, 4096, 1 << 20))
    1048576
    """
    if off < 0 or length < 0:
        raise ValueError("negative offset or length")
    if length == 0:
        return b""
    first = off - off % SECTOR_SIZE
    end = off + length
    parts = []
    for o in range(first, end, SECTOR_SIZE):
        unit = f"{seed}:{o}\n"
        parts.append((unit * (SECTOR_SIZE // len(unit) + 1))[:SECTOR_SIZE])
    data = "".join(parts).encode("ascii")
    return data[off - first : off - first + length]


def errno_name(code: int) -> str:
    """The name the transcript prints for an errno (``EOPNOTSUPP`` rather than ``ENOTSUP``)."""
    return _PREFERRED_NAMES.get(code) or _errno.errorcode.get(code, str(code))


_PREFERRED_NAMES = {
    _errno.EOPNOTSUPP: "EOPNOTSUPP",
    _errno.EAGAIN: "EAGAIN",
    _errno.EDEADLK: "EDEADLK",
}


class Executor(abc.ABC):
    """Carries out scenario operations on one backend (the real kernel, or the model).

    Contract shared by every operation method:

    - Arguments are keyword-only and already parsed and resolved by :func:`run`: byte sizes,
      offsets and lengths are ``int`` bytes; sector and block counts are ``int`` and named
      ``*_sectors`` / ``*_blocks``; ``features`` is a ``list[str]`` as written (the kernel
      normalises case, order and duplicates).  Pool table fields the kernel parses itself
      (``block_size_sectors``, ``low_water_blocks``) are ``str`` exactly as written.
    - The return value is the list of output lines the operation printed, without newlines,
      exactly as the tool printed them (the pool status line keeps its trailing space).
      Operations that print nothing return ``[]``.
    - Failure is signalled by raising :class:`thinsim.errors.ThinsimError` (use
      ``thinsim.errors.error_for(errno)``) carrying the errno the kernel returned.  An
      operation that fails has printed nothing (except where noted).
    - Devices: the pool is the dm device ``pool``, built on metadata loop device ``loop0`` and
      data loop device ``loop1`` (so its table shows ``7:0 7:1``); thin ``N`` is the dm device
      ``thinN``.  dm minors are handed out lowest-free-first from 0 (pool creation takes one
      even when it fails, and gives it back), the dm major is 254.
    - I/O goes to thin devices only, in 512-byte sectors; offsets and lengths are multiples
      of 512.  Writes and reads are issued as one O_DIRECT request per pool data block
      (split at block boundaries, ascending, one at a time), so at most one block is in flight.
    """

    # -- pool lifecycle -------------------------------------------------------------------

    @abc.abstractmethod
    def pool(
        self,
        *,
        md_bytes: int,
        data_bytes: int,
        length_sectors: int,
        block_size_sectors: str,
        low_water_blocks: str,
        features: list[str],
    ) -> list[str]:
        """Create fresh zero-filled sparse metadata and data files of the given sizes, attach
        them as loop0 and loop1, and create ``pool`` with the table
        ``0 LEN thin-pool /dev/loop0 /dev/loop1 BS LWM [N f1 ... fN]`` (the feature group
        only when ``features`` is non-empty).  If the table is rejected, the loop devices and
        files are removed again (a later ``pool`` starts afresh) and the errno is raised.
        Returns ``[]``."""

    @abc.abstractmethod
    def reload(
        self,
        *,
        md_bytes: int,
        data_bytes: int,
        length_sectors: int,
        block_size_sectors: str,
        low_water_blocks: str,
        features: list[str],
    ) -> list[str]:
        """Set the backing files to ``md_bytes`` / ``data_bytes`` (``truncate`` plus
        ``losetup -c`` for each file whose size changes; new space reads as zeros), then
        suspend the pool, load the table built from the arguments as in :meth:`pool`, and
        resume.  If the load or the resume fails, the pool is resumed again if it is left
        suspended (that second resume's own failure is ignored) and the first errno is raised;
        the file size changes stay.  Returns ``[]``."""

    @abc.abstractmethod
    def remove_pool(self) -> list[str]:
        """Remove the ``pool`` dm device (loop devices and files stay until the scenario
        ends).  Returns ``[]``."""

    @abc.abstractmethod
    def suspend(self) -> list[str]:
        """``dmsetup suspend pool`` (flushes and commits).  Returns ``[]``."""

    @abc.abstractmethod
    def resume(self) -> list[str]:
        """``dmsetup resume pool`` (resets the low-water-mark trigger).  Returns ``[]``."""

    @abc.abstractmethod
    def msg(self, *, message: str) -> list[str]:
        """Send ``message`` (the scenario's words joined by single spaces) to the pool, as
        ``dmsetup message pool 0 WORDS...``.  Returns ``[]``."""

    @abc.abstractmethod
    def no_space_timeout(self, *, seconds: int) -> list[str]:
        """Set the ``dm_thin_pool`` module parameter ``no_space_timeout`` (seconds; 0 means
        queue forever).  It is restored to its previous value when the executor is closed.
        Returns ``[]``."""

    # -- thin devices ---------------------------------------------------------------------

    @abc.abstractmethod
    def thin(self, *, thin_id: int, length_sectors: int) -> list[str]:
        """Create the dm device ``thin<thin_id>`` with the table
        ``0 LEN thin /dev/mapper/pool ID``.  Returns ``[]``."""

    @abc.abstractmethod
    def remove_thin(self, *, thin_id: int) -> list[str]:
        """Remove the dm device ``thin<thin_id>`` (``dmsetup remove --retry``).  Returns
        ``[]``."""

    @abc.abstractmethod
    def suspend_thin(self, *, thin_id: int) -> list[str]:
        """``dmsetup suspend thin<thin_id>``.  Returns ``[]``."""

    @abc.abstractmethod
    def resume_thin(self, *, thin_id: int) -> list[str]:
        """``dmsetup resume thin<thin_id>``.  Returns ``[]``."""

    # -- I/O ------------------------------------------------------------------------------

    @abc.abstractmethod
    def write(self, *, thin_id: int, offset: int, length: int, seed: int) -> list[str]:
        """Write ``pattern(seed, offset, length)`` to ``thin<thin_id>`` at byte ``offset``
        with O_DIRECT, one request per pool data block (see the class docstring), then fsync
        the device (a flush, which commits the pool).  The first failing request raises its
        errno and stops the operation (earlier requests stay written, no fsync is done).
        Returns ``[]``."""

    @abc.abstractmethod
    def write_nosync(self, *, thin_id: int, offset: int, length: int, seed: int) -> list[str]:
        """As :meth:`write`, without the final fsync.  Returns ``[]``."""

    @abc.abstractmethod
    def read(self, *, thin_id: int, offset: int, length: int) -> list[str]:
        """Read ``length`` bytes at ``offset`` from ``thin<thin_id>`` with O_DIRECT, one
        request per pool data block.  Returns ``["md5 <32 lowercase hex digits>"]`` of the
        bytes read."""

    @abc.abstractmethod
    def discard(self, *, thin_id: int, offset: int, length: int) -> list[str]:
        """``blkdiscard -o OFFSET -l LENGTH /dev/mapper/thin<thin_id>``.  Returns ``[]``."""

    @abc.abstractmethod
    def flush(self, *, thin_id: int) -> list[str]:
        """fsync ``thin<thin_id>`` (an empty flush bio; commits if the device changed).
        Returns ``[]``."""

    # -- observation ----------------------------------------------------------------------

    @abc.abstractmethod
    def status(self) -> list[str]:
        """``dmsetup status pool``: one line, e.g.
        ``"0 2097152 thin-pool 0 112/1024 0/16384 - rw discard_passdown queue_if_no_space - 256 "``
        (commits first unless the pool is suspended)."""

    @abc.abstractmethod
    def status_noflush(self) -> list[str]:
        """``dmsetup status --noflush pool``: as :meth:`status` without the commit."""

    @abc.abstractmethod
    def thin_status(self, *, thin_id: int) -> list[str]:
        """``dmsetup status thin<thin_id>``: one line, e.g. ``"0 2097152 thin 128 127"``."""

    @abc.abstractmethod
    def table(self) -> list[str]:
        """``dmsetup table pool``: one line, e.g. ``"0 2097152 thin-pool 7:0 7:1 128 0 0 "``."""

    @abc.abstractmethod
    def thin_table(self, *, thin_id: int) -> list[str]:
        """``dmsetup table thin<thin_id>``: one line, e.g. ``"0 2097152 thin 254:0 0"``."""

    @abc.abstractmethod
    def events(self) -> list[str]:
        """The pool's event counter: ``["event_nr N"]``."""

    @abc.abstractmethod
    def dump(self) -> list[str]:
        """Send ``reserve_metadata_snap``, run ``thin_dump -m /dev/loop0``, send
        ``release_metadata_snap``; return the XML lines.  If the reserve fails its errno is
        raised and nothing else is done."""

    @abc.abstractmethod
    def du(self) -> list[str]:
        """``["allocated BYTES"]``: the data file's ``st_blocks * 512``."""

    # -- bookkeeping ----------------------------------------------------------------------

    @abc.abstractmethod
    def log_lines(self) -> list[str]:
        """The kernel log lines starting with ``device-mapper:`` printed since the previous
        call (or since the executor was made), oldest first, without timestamps."""

    def close(self) -> None:
        """Remove every device and file this executor made and restore module parameters."""


def _table_args(cfg: dict[str, Any]) -> dict[str, Any]:
    return {
        "md_bytes": cfg["md"],
        "data_bytes": cfg["data"],
        "length_sectors": cfg["len"],
        "block_size_sectors": cfg["bs"],
        "low_water_blocks": cfg["lwm"],
        "features": list(cfg["features"]),
    }


class _Runner:
    """Resolves operations to executor calls; remembers the pool table for ``reload``."""

    def __init__(self, executor: Executor) -> None:
        self.executor = executor
        self.cfg: dict[str, Any] | None = None

    def call(self, op: Op) -> list[str]:
        ex = self.executor
        a = op.args
        if op.name == "pool":
            cfg = {"len": None, "features": [], **op.kwargs}
            if cfg["len"] is None:
                cfg["len"] = cfg["data"] // SECTOR_SIZE
            self.cfg = cfg
            return ex.pool(**_table_args(cfg))
        if op.name == "reload":
            if self.cfg is None:
                raise ScenarioError(
                    op.lineno, f"line {op.lineno}: {op.line!r}: reload before any pool"
                )
            new = {**self.cfg, **op.kwargs}
            if "len" not in op.kwargs and "data" in op.kwargs:
                new["len"] = new["data"] // SECTOR_SIZE
            # Grown files stay grown even when the reload fails; table fields do not change.
            self.cfg["md"], self.cfg["data"] = new["md"], new["data"]
            out = ex.reload(**_table_args(new))
            self.cfg = new
            return out
        if op.name == "msg":
            return ex.msg(message=" ".join(a))
        if op.name == "thin":
            return ex.thin(thin_id=a[0], length_sectors=a[1])
        if op.name in ("write", "write_nosync"):
            seed = a[3] if len(a) > 3 else 1
            method = ex.write if op.name == "write" else ex.write_nosync
            return method(thin_id=a[0], offset=a[1], length=a[2], seed=seed)
        if op.name in ("read", "discard"):
            return getattr(ex, op.name)(thin_id=a[0], offset=a[1], length=a[2])
        if op.name in ("remove_thin", "suspend_thin", "resume_thin", "flush"):
            return getattr(ex, op.name)(thin_id=a[0])
        if op.name in ("thin_status", "thin_table"):
            return getattr(ex, op.name)(thin_id=a[0])
        if op.name == "no_space_timeout":
            return ex.no_space_timeout(seconds=a[0])
        return getattr(ex, op.name)()


def run(ops: Iterable[Op], executor: Executor) -> str:
    """Apply ``ops`` to ``executor`` in order and return the transcript.

    For each operation the transcript has ``$ `` + its collapsed line, then its output lines,
    then ``error: ENAME`` if it raised :class:`ThinsimError`, then ``log: TEXT`` for each
    kernel log line it produced.  Every line ends with ``\\n``.

    Argument resolution (so executors get complete arguments):

    - ``pool``: ``len`` defaults to ``data // 512``; ``features`` to none.
    - ``reload``: a field not given keeps the value of the last ``pool`` or successful
      ``reload``; if ``data`` is given but ``len`` is not, ``len`` becomes ``data // 512``;
      ``features=`` (empty) gives no features.  A failed reload changes only the remembered
      file sizes.
    - ``write``: ``SEED`` defaults to 1.
    """
    return "".join(steps(ops, executor))


def steps(ops: Iterable[Op], executor: Executor) -> Iterator[str]:
    """:func:`run` one operation at a time: each operation's part of the transcript, as soon
    as it is done (``thinsim scenario`` prints each as it comes)."""
    runner = _Runner(executor)
    for op in ops:
        out = ["$ " + op.line]
        try:
            out.extend(runner.call(op))
        except ThinsimError as e:
            out.append(f"error: {errno_name(e.errno)}")
        out.extend("log: " + line for line in executor.log_lines())
        yield "".join(line + "\n" for line in out)
