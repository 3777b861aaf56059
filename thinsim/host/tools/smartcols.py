"""libsmartcols 2.38 tables as util-linux tools print them to a pipe or a file (not a
terminal): the human format (column widths from the data, the header and the width hint),
``--raw`` and ``--json``.  Trees, colours and terminal width reduction are not simulated."""

from __future__ import annotations

from dataclasses import dataclass

STRING, NUMBER, BOOLEAN = "string", "number", "boolean"


@dataclass
class Column:
    name: str
    whint: float = 0
    right: bool = False
    json_type: str = STRING


def _width(text: str) -> int:
    return len(text)


def _raw_cell(text: str) -> str:
    # carefulputc.h: fputs_nonblank
    out = []
    for ch in text:
        if ch in " \t\\" or not ch.isprintable() or ord(ch) < 32 or ord(ch) == 127:
            out.extend(f"\\x{b:02x}" for b in ch.encode())
        else:
            out.append(ch)
    return "".join(out)


def _json_string(text: str) -> str:
    # jsonwrt.c: fputs_quoted_case_json
    out = ['"']
    short = {"\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ord(ch) >= 0x20:
            out.append(ch)
        else:
            out.append(short.get(ch, f"\\u00{ord(ch):02x}"))
    out.append('"')
    return "".join(out)


def _json_value(col: Column, data: str) -> str:
    if col.json_type == NUMBER:
        return data if data else "null"
    if col.json_type == BOOLEAN:
        false = not data or data[0] in "0Nn"
        return "false" if false else "true"
    return _json_string(data) if data else "null"


def render(
    columns: list[Column],
    rows: list[list[str | None]],
    *,
    raw: bool = False,
    json: bool = False,
    noheadings: bool = False,
    name: str | None = None,
) -> str:
    """What scols_print_table writes for these rows (None: a cell without data)."""
    rows = [[c or "" for c in r] for r in rows]
    if json:
        # print-api.c: do_print_table; jsonwrt.c
        if not rows:
            return "{\n" + f'   "{(name or "").lower()}": [\n' + "\n   ]\n}\n"
        out = ["{\n", f'   "{(name or "").lower()}": [\n']
        for k, r in enumerate(rows):
            out.append(",{\n" if k else "      {\n")
            values = [
                f'         "{c.name.lower()}": {_json_value(c, v)}' for c, v in zip(columns, r)
            ]
            out.append(",\n".join(values))
            out.append("\n      }")
        out.append("\n   ]\n}\n")
        return "".join(out)
    if not rows:
        return ""
    lines = []
    if raw:
        if not noheadings:
            lines.append(" ".join(_raw_cell(c.name) for c in columns))
        lines.extend(" ".join(_raw_cell(v) for v in r) for r in rows)
        return "".join(line + "\n" for line in lines)
    widths = []
    for k, col in enumerate(columns):
        # calculate.c: count_column_width (non-terminal output)
        width_min = max(_width(col.name), 1)
        width = max([_width(r[k]) for r in rows] + [0])
        if width < width_min:
            width = width_min
        elif col.whint >= 1 and width < col.whint and width_min < col.whint:
            width = int(col.whint)
        widths.append(width)
    table = ([] if noheadings else [[c.name for c in columns]]) + rows
    for r in table:
        cells = []
        last = len(columns) - 1
        for k, (col, text) in enumerate(zip(columns, r)):
            # print.c: print_data
            width = widths[k]
            if k == last and _width(text) < width and not col.right:
                width = _width(text)
            if text and col.right:
                text = " " * (width - _width(text)) + text
            if k != last:
                text = text + " " * (width - _width(text))
            cells.append(text)
        lines.append(" ".join(cells))
    return "".join(line + "\n" for line in lines)
