"""libdm's report engine (lvm2 libdm/libdm-report.c, 2.03.16) as dmsetup uses it: field lists
with ``all`` and ``help``, sort keys, selection (-S), aligned columns, separators, name
prefixes, and the help texts it prints on stderr."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

STR, NUM, SIZ = 1, 2, 4  # DM_REPORT_FIELD_TYPE_STRING, _NUMBER, _SIZE

SPECIAL = 0x80000000  # SPECIAL_REPORT_TYPE
REPORT_TYPES_ALL = 0xFFFFFFFF


class ReportFieldError(Exception):
    """A field's report function failed; the message (if any) is dmsetup's log_error."""


@dataclass(frozen=True)
class ObjectType:
    id: int
    desc: str
    prefix: str


@dataclass(frozen=True)
class FieldType:
    """One dm_report_field_type: ``fn(obj) -> (report_string, sort_value)``."""

    type: int
    flags: int
    heading: str
    width: int
    id: str
    desc: str
    fn: Callable | None = None


_SPECIAL_TYPE = ObjectType(SPECIAL, "Special", "special_")
_IMPLICIT_FIELDS = (
    FieldType(SPECIAL, NUM, "Selected", 8, "selected", "Set if item passes selection criteria."),
    FieldType(SPECIAL, NUM, "Help", 8, "help", "Show help."),
    FieldType(SPECIAL, NUM, "Help", 8, "?", "Show help."),
)


@dataclass
class _Prop:
    num: int
    implicit: bool
    width: int
    flags: int
    hidden: bool = False
    sort_posn: int = -1
    descending: bool = False


@dataclass
class _Row:
    fields: list = field(default_factory=list)  # (prop, report_string, sort_value)
    selected: bool = True


class ReportError(Exception):
    """dm_report_init failed (its messages are already printed)."""


def _canon(name: str) -> str:
    return name.replace("_", "")


class Report:
    """dm_report_init_with_selection and dm_report_object/dm_report_output."""

    def __init__(
        self,
        report_types: int,
        types: list[ObjectType],
        fields: list[FieldType],
        output_fields: str,
        separator: str,
        *,
        aligned: bool,
        buffered: bool,
        headings: bool,
        field_prefixes: bool,
        quoted: bool,
        sort_keys: str,
        columns_as_rows: bool = False,
        selection: str | None,
        warn: Callable[[str], None],
        out: Callable[[str], None],
    ) -> None:
        self.types = types
        self.fields = fields
        self.separator = separator
        self.aligned = aligned
        self.headings = headings
        self.field_prefixes = field_prefixes
        self.quoted = quoted
        self.sort_required = buffered
        # with columns as rows libdm buffers and never aligns
        self.columns_as_rows = columns_as_rows
        if columns_as_rows:
            self.aligned = False
            self.sort_required = True
        self.warn = warn
        self.out = out
        self.props: list[_Prop] = []
        self.rows: list[_Row] = []
        self.keys_count = 0
        self.headings_printed = False
        self.already_reported = False
        self.output_field_name_prefix = ""
        self.report_types = report_types
        t = self._find_type(report_types)
        self.field_prefix = t.prefix if t is not None else ""
        self.canonical = [_canon(f.id) for f in fields]
        for only_types in (True, False):
            if not self._parse_fields(output_fields, only_types) or not self._parse_keys(
                sort_keys, only_types
            ):
                raise ReportError
        self.selection = None
        if selection is not None:
            self.selection = self._parse_selection_string(selection)
        if self._help_requested():
            self._display_fields(True, False)
            self.warn(" ")
            self.already_reported = True

    # -- field lists (dm_report_init) ---------------------------------------------------

    def _find_type(self, type_id: int) -> ObjectType | None:
        if type_id == SPECIAL:
            return _SPECIAL_TYPE
        return next((t for t in self.types if t.id == type_id), None)

    def _all_types(self) -> int:
        return self.report_types or REPORT_TYPES_ALL

    def _is_same_field(self, canonical1: str, canonical2: str) -> bool:
        if canonical1.lower() == canonical2.lower():
            return True
        plen = len(self.field_prefix) - 1
        return (
            plen >= 0
            and canonical1[:plen].lower() == self.field_prefix[:plen].lower()
            and canonical1[plen:].lower() == canonical2.lower()
        )

    def _get_field(self, name: str) -> tuple[int, bool] | None:
        if not name:
            return None
        canon = _canon(name)
        for i, f in enumerate(_IMPLICIT_FIELDS):
            if self._is_same_field(f.id, canon):
                return i, True
        for i, c in enumerate(self.canonical):
            if self._is_same_field(c, canon):
                return i, False
        return None

    def _all_match(self, name: str) -> int:
        types = 0
        unprefixed_all = False
        if name.lower() == "all":
            if not self.field_prefix:
                return self.report_types or REPORT_TYPES_ALL
            unprefixed_all = True
            name = self.field_prefix
            types = self.report_types
        canon = _canon(name)
        for t in self.types:
            plen = len(t.prefix) - 1
            if t.prefix[:plen].lower() == canon[:plen].lower() and (
                (unprefixed_all and len(canon) == plen)
                or (canon[plen : plen + 3].lower() == "all" and len(canon) == plen + 3)
            ):
                types |= t.id
        return types

    def _add_field(self, num: int, implicit: bool, hidden: bool = False) -> _Prop:
        f = (_IMPLICIT_FIELDS if implicit else self.fields)[num]
        prop = _Prop(num, implicit, f.width, f.flags, hidden)
        if hidden:
            self.props.insert(0, prop)
        else:
            self.props.append(prop)
        return prop

    def _ftype(self, prop: _Prop) -> FieldType:
        return (_IMPLICIT_FIELDS if prop.implicit else self.fields)[prop.num]

    def _field_match(self, name: str, only_types: bool) -> bool:
        if not name:
            return False
        found = self._get_field(name)
        if found is not None:
            num, implicit = found
            if only_types:
                self.report_types |= (_IMPLICIT_FIELDS if implicit else self.fields)[num].type
            else:
                self._add_field(num, implicit)
            return True
        types = self._all_match(name)
        if types:
            if only_types:
                self.report_types |= types
            else:
                for i, f in enumerate(self.fields):
                    if f.type & types:
                        self._add_field(i, False)
            return True
        return False

    def _words(self, text: str) -> list[str]:
        words = []
        i = 0
        while i < len(text):
            while i < len(text) and text[i] == ",":
                i += 1
            j = i
            while j < len(text) and text[j] != ",":
                j += 1
            words.append(text[i:j])
            i = j
        return words

    def _parse_fields(self, text: str, only_types: bool) -> bool:
        for word in self._words(text):
            if not self._field_match(word, only_types):
                self._display_fields(True, False)
                self.warn(" ")
                self.warn(f"Unrecognised field: {word}")
                return False
        return True

    def _parse_keys(self, text: str, only_types: bool) -> bool:
        for word in self._words(text or ""):
            if not self._key_match(word, only_types):
                self._display_fields(True, False)
                self.warn(" ")
                self.warn(f"dm_report: Unrecognised field: {word}")
                return False
        return True

    def _key_match(self, key: str, only_types: bool) -> bool:
        if not key:
            return False
        descending = key[0] == "-"
        if key[0] in "+-":
            key = key[1:]
        if not key:
            self.warn("dm_report: Missing sort field name")
            return False
        found = self._get_field(key)
        if found is None:
            return False
        num, implicit = found
        prop = next((p for p in self.props if p.implicit == implicit and p.num == num), None)
        if prop is None:
            if only_types:
                self.report_types |= (_IMPLICIT_FIELDS if implicit else self.fields)[num].type
                return True
            prop = self._add_field(num, implicit, hidden=True)
        if only_types:
            return True
        if prop.sort_posn >= 0:
            self.warn(f"dm_report: Ignoring duplicate sort field: {self._ftype(prop).id}.")
            return True
        prop.sort_posn = self.keys_count
        self.keys_count += 1
        prop.descending = descending
        return True

    def _help_requested(self) -> bool:
        return any(p.implicit and _IMPLICIT_FIELDS[p.num].id in ("help", "?") for p in self.props)

    # -- help ---------------------------------------------------------------------------

    def _display_fields(self, all_item: bool, field_types: bool) -> None:
        id_len = max(len(f.id) for f in list(_IMPLICIT_FIELDS) + list(self.fields))
        self._display_fields_more(self.fields, id_len, all_item, field_types)
        self.warn(" ")
        self._display_fields_more(list(_IMPLICIT_FIELDS), id_len, all_item, field_types)

    def _display_fields_more(self, fields, id_len, all_item, field_types) -> None:
        id_len = max([id_len] + [len(f.id) for f in fields])
        id_len = max([id_len] + [len(t.prefix) + 3 for t in self.types])
        last_desc = None
        for f in fields:
            t = self._find_type(f.type)
            desc = t.desc or " "
            if desc != last_desc:
                if last_desc:
                    self.warn(" ")
                self.warn(f"{desc} Fields")
                self.warn("-" * (len(desc) + 7))
                if all_item and t.id != SPECIAL:
                    pad = " " * (id_len - 3 - len(t.prefix))
                    self.warn(f"  {t.prefix}all{pad} - All fields in this section.")
            extra = ""
            if field_types:
                kind = {STR: "string", NUM: "number", SIZ: "size"}.get(f.flags & 7, "unknown")
                unselectable = "unselectable " if f.type == SPECIAL and f.id != "selected" else ""
                extra = f" [{unselectable}{kind}]"
            self.warn(f"  {f.id:<{id_len}} - {f.desc}{extra}")
            last_desc = desc

    # -- selection (-S) -----------------------------------------------------------------

    def _parse_selection_string(self, text: str):
        node, rest = self._parse_or(text)
        if node is None:
            raise ReportError
        rest = rest.lstrip()
        if rest:
            self.warn(f"Expecting logical operator at '{rest}'.")
            self.warn("Use 'help' for selection to get more help.")
            raise ReportError
        return node

    _OP_LOG = (
        ("&&", "and"),
        (",", "and"),
        ("||", "or"),
        ("#", "or"),
        ("!", "not"),
        ("(", "ps"),
        (")", "pe"),
    )
    _OP_CMP = ("=~", "!~", "=", "!=", ">=", ">", "<=", "<")
    _OP_CMP_DESC = (
        ("=~", "Matching regular expression. [regex]"),
        ("!~", "Not matching regular expression. [regex]"),
        ("=", "Equal to. [number, size, percent, string, string list, time]"),
        ("!=", "Not equal to. [number, size, percent, string, string_list, time]"),
        (">=", "Greater than or equal to. [number, size, percent, time]"),
        (">", "Greater than. [number, size, percent, time]"),
        ("<=", "Less than or equal to. [number, size, percent, time]"),
        ("<", "Less than. [number, size, percent, time]"),
        ("since", "Since specified time (same as '>='). [time]"),
        ("after", "After specified time (same as '>'). [time]"),
        ("until", "Until specified time (same as '<='). [time]"),
        ("before", "Before specified time (same as '<'). [time]"),
    )
    _OP_LOG_DESC = (
        ("&&", "All fields must match"),
        (",", "All fields must match"),
        ("||", "At least one field must match"),
        ("#", "At least one field must match"),
        ("!", "Logical negation"),
        ("(", "Left parenthesis"),
        (")", "Right parenthesis"),
        ("[", "List start"),
        ("]", "List end"),
        ("{", "List subset start"),
        ("}", "List subset end"),
    )

    def _display_selection_help(self) -> None:
        """_display_selection_help (dmsetup has no reserved values)."""
        w = self.warn
        w("Selection operands")
        w("------------------")
        w("  field               - Reporting field.")
        w("  number              - Non-negative integer value.")
        w(
            "  size                - Floating point value with units, 'm' unit used by "
            "default if not specified."
        )
        w("  percent             - Non-negative integer with or without % suffix.")
        w("  string              - Characters quoted by ' or \" or unquoted.")
        w("  string list         - Strings enclosed by [ ] or { } and elements delimited by either")
        w(
            '                        "all items must match" or "at least one item must '
            'match" operator.'
        )
        w("  regular expression  - Characters quoted by ' or \" or unquoted.")
        w(" ")
        w("Selection operators")
        w("-------------------")
        w("  Comparison operators:")
        for op, desc in self._OP_CMP_DESC:
            w(f"    {op:>6}  - {desc}")
        w(" ")
        w("  Logical and grouping operators:")
        for op, desc in self._OP_LOG_DESC:
            w(f"    {op:>4}  - {desc}")
        w(" ")

    def _tok_log(self, s: str, expect: tuple[str, ...]) -> tuple[str | None, str]:
        s = s.lstrip()
        for op, kind in self._OP_LOG:
            if kind in expect and s.startswith(op):
                return kind, s[len(op) :]
        return None, s

    def _parse_or(self, s: str):
        items = []
        while True:
            node, s = self._parse_and(s)
            if node is None:
                return None, s
            items.append(node)
            kind, rest = self._tok_log(s, ("or",))
            if kind is None:
                break
            s = rest
        return (items[0] if len(items) == 1 else ("or", items)), s

    def _parse_and(self, s: str):
        items = []
        while True:
            node, s = self._parse_ex(s)
            if node is None:
                return None, s
            items.append(node)
            kind, rest = self._tok_log(s, ("and",))
            if kind is None:
                break
            s = rest
        return (items[0] if len(items) == 1 else ("and", items)), s

    def _parse_ex(self, s: str):
        kind, rest = self._tok_log(s, ("not", "ps"))
        if kind == "not":
            kind2, rest2 = self._tok_log(rest, ("ps",))
            if kind2 is None:
                self.warn(f"Syntax error: left parenthesis expected at '{rest}'")
                return None, s
            node, rest3 = self._parse_or(rest2)
            if node is None:
                return None, s
            kind3, rest4 = self._tok_log(rest3, ("pe",))
            if kind3 is None:
                self.warn(f"Syntax error: right parenthesis expected at '{rest3}'")
                return None, s
            return ("not", node), rest4
        if kind == "ps":
            node, rest2 = self._parse_or(rest)
            if node is None:
                return None, s
            kind2, rest3 = self._tok_log(rest2, ("pe",))
            if kind2 is None:
                self.warn(f"Syntax error: right parenthesis expected at '{rest2}'")
                return None, s
            return node, rest3
        return self._parse_item(s.lstrip())

    def _sel_bad(self, s: str):
        self.warn(f"Selection syntax error at '{s}'.")
        self.warn("Use 'help' for selection to get more help.")
        return None, s

    def _parse_item(self, s: str):
        m = re.match(r"[A-Za-z0-9_-]*", s)
        name = m.group(0)
        rest = s[len(name) :]
        if not name:
            self.warn("Expecting field name")
            return self._sel_bad(s)
        found = self._get_field(name)
        if found is None:
            self._display_fields(False, True)
            self.warn(" ")
            self.warn(f"Unrecognised selection field: {name}")
            return self._sel_bad(s)
        num, implicit = found
        ft = (_IMPLICIT_FIELDS if implicit else self.fields)[num]
        if implicit and ft.id != "selected":
            self._display_fields(False, True)
            self.warn(" ")
            self.warn(f"Selection field is uncomparable: {name}.")
            return self._sel_bad(s)
        rest = rest.lstrip()
        op = next((o for o, _ in self._OP_CMP_DESC if rest.startswith(o)), None)
        if op is None:
            self._display_selection_help()
            self.warn(f"Unrecognised comparison operator: {rest}")
            return self._sel_bad(s)
        if op in ("since", "after", "until", "before"):
            self._display_selection_help()
            self.warn(f"Operator can be used only with time fields: {s}")
            return self._sel_bad(s)
        rest = rest[len(op) :].lstrip()
        if op in (">=", ">", "<=", "<") and not ft.flags & (NUM | SIZ):
            self._display_selection_help()
            self.warn(f"Operator can be used only with number, size, time or percent fields: {s}")
            return self._sel_bad(s)
        if op in ("=~", "!~"):
            # _tok_value_regex
            if not rest:
                self.warn(f"Regular expression expected for selection field {ft.id}")
                return self._sel_bad(s)
            close = {"(": ")", "{": "}", "[": "]", '"': '"', "'": "'"}.get(rest[0], "")
            value, rest = self._tok_string(rest[1:] if close else rest, close)
            if value is None:
                self.warn(f"Failed to parse regex value for selection field {ft.id}.")
                return self._sel_bad(s)
            if not ft.flags & STR:
                # _create_field_selection refuses it (no syntax error report follows)
                self.warn(f"dm_report: incompatible comparison type for selection field {ft.id}")
                return None, s
        elif ft.flags & (NUM | SIZ):
            m = re.match(r"\d*(\.\d*)?", rest)
            if not m.group(0) or m.group(1):
                if not m.group(0):
                    self.warn(f"Failed to parse numeric value for selection field {ft.id}.")
                    return self._sel_bad(s)
                return self._not_simulated(s)
            value, rest = int(m.group(0)), rest[len(m.group(0)) :]
        else:
            close = rest[:1] if rest[:1] in ("'", '"') else ""
            value, rest = self._tok_string(rest[1:] if close else rest, close)
            if value is None:
                self.warn(f"Failed to parse string value for selection field {ft.id}.")
                return self._sel_bad(s)
        prop = next((p for p in self.props if p.implicit == implicit and p.num == num), None)
        if prop is None:
            prop = self._add_field(num, implicit, hidden=True)
            self.report_types |= ft.type
        return ("item", prop, op, value), rest

    def _tok_string(self, s: str, close: str):
        """_tok_value_string: up to the closing quote, else up to a space or a logical
        operator (&&, ',', ||, #, ')'); (None, s) for a missing end quote."""
        if close:
            end = s.find(close)
            if end < 0:
                self.warn("Missing end quote.")
                return None, s
            return s[:end], s[end + 1 :]
        i = 0
        while i < len(s) and s[i] != " " and not s.startswith(("&&", ",", "||", "#", ")"), i):
            i += 1
        return s[:i], s[i:]

    def _not_simulated(self, s: str):
        self.warn(f"thinsim: dmsetup: that selection ({s}) is not simulated")
        return None, s

    def _check(self, node, values: dict) -> bool:
        kind = node[0]
        if kind == "and":
            return all(self._check(n, values) for n in node[1])
        if kind == "or":
            return any(self._check(n, values) for n in node[1])
        if kind == "not":
            return not self._check(node[1], values)
        _, prop, op, value = node
        text, sort = values[id(prop)]
        if op in ("=~", "!~"):
            hit = re.search(value, text) is not None
            return hit if op == "=~" else not hit
        have = sort if isinstance(value, int) else text
        return {
            "=": have == value,
            "!=": have != value,
            ">=": have >= value,
            ">": have > value,
            "<=": have <= value,
            "<": have < value,
        }[op]

    # -- rows (dm_report_object) ----------------------------------------------------------

    def is_selected(self, get_object: Callable[[int], object], output: bool = True) -> bool:
        """_do_report_object: run every field's function, apply the selection, keep the row
        for output.  Raises ReportFieldError when a field fails."""
        if self.already_reported:
            return True
        row = _Row()
        values = {}
        for prop in self.props:
            ft = self._ftype(prop)
            if prop.implicit:
                text, sort = "1", 1  # "selected": fixed after the selection below
            else:
                obj = get_object(ft.type)
                if obj is None:
                    self.warn(f"_do_report_object: no data assigned to field {ft.id}")
                    raise ReportFieldError("")
                try:
                    text, sort = ft.fn(obj)
                except ReportFieldError as e:
                    if str(e):
                        self.warn(str(e))
                    self.warn(f"_do_report_object: report function failed for field {ft.id}")
                    raise
            values[id(prop)] = (text, sort)
            row.fields.append([prop, text, sort])
        if self.selection is not None and not self._check(self.selection, values):
            row.selected = False
            sel = next(
                (
                    f
                    for f in row.fields
                    if f[0].implicit and _IMPLICIT_FIELDS[f[0].num].id == "selected"
                ),
                None,
            )
            if sel is None or sel[0].hidden:
                return False
            sel[1], sel[2] = "0", 0
        if output:
            self.rows.append(row)
        return row.selected

    def is_empty(self) -> bool:
        return not self.rows

    # -- output ---------------------------------------------------------------------------

    def _recalculate(self) -> None:
        for row in self.rows:
            for prop, text, _ in row.fields:
                prop.width = max(prop.width, len(text))

    def _heading_line(self) -> str:
        parts = []
        visible = [p for p in self.props if not p.hidden]
        for i, prop in enumerate(visible):
            heading = self._ftype(prop).heading
            parts.append(f"{heading:<{prop.width}.{prop.width}}" if self.aligned else heading)
            if i != len(visible) - 1:
                parts.append(self.separator)
        return "".join(parts)

    def output(self) -> None:
        """dm_report_output: headings (once), then the rows, sorted."""
        if not self.rows:
            return
        self._recalculate()
        if self.sort_required and self.keys_count:
            self._sort()
        if self.columns_as_rows:
            self._output_as_rows()
            return
        if not self.headings_printed:
            self.headings_printed = True
            if self.headings:
                self.out(self._heading_line() + "\n")
        for row in self.rows:
            parts = []
            for prop, text, _ in row.fields:
                if prop.hidden:
                    continue
                if parts:
                    parts.append(self.separator)
                parts.append(self._field_text(prop, text))
            self.out("".join(parts) + "\n")
        self.rows = []
        for prop in self.props:
            prop.width = self._ftype(prop).width

    def _output_as_rows(self) -> None:
        """_output_as_rows: one line per field, its heading then every row's value."""
        for prop in self.props:
            if prop.hidden:
                continue
            line = ""
            if self.headings:
                line += self._ftype(prop).heading + self.separator
            values = [
                self._field_text(prop, next(f[1] for f in row.fields if f[0] is prop))
                for row in self.rows
            ]
            self.out(line + self.separator.join(values) + "\n")
        self.rows = []

    def _field_text(self, prop: _Prop, text: str) -> str:
        out = ""
        if self.field_prefixes:
            out += self.output_field_name_prefix + self._ftype(prop).id.upper() + "="
            if self.quoted:
                out += "'"
        if not self.aligned:
            out += text
        elif prop.flags & (NUM | SIZ):
            out += f"{text:>{prop.width}.{prop.width}}"
        else:
            out += f"{text:<{prop.width}.{prop.width}}"
        if self.field_prefixes and self.quoted:
            out += "'"
        return out

    def _sort(self) -> None:
        import functools

        keyed = sorted((p for p in self.props if p.sort_posn >= 0), key=lambda p: p.sort_posn)

        def compare(a: _Row, b: _Row) -> int:
            for prop in keyed:
                va = next(f[2] for f in a.fields if f[0] is prop)
                vb = next(f[2] for f in b.fields if f[0] is prop)
                if va == vb:
                    continue
                less = va < vb
                if prop.descending:
                    return -1 if not less else 1
                return -1 if less else 1
            return 0

        self.rows.sort(key=functools.cmp_to_key(compare))

    def column_headings(self) -> None:
        """dm_report_column_headings (for repeated reports)."""
        self._recalculate()
        self.headings_printed = True
        if self.headings:
            self.out(self._heading_line() + "\n")
