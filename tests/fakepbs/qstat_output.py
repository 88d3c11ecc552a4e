"""How qstat prints a job: `-f` text, and `-F json` as master's and the releases' encoders do.

Attributes reach qstat as (name, resource, value) strings, the way the server sends them:
Variable_List is one comma-joined value in which encode_arst_bs
(src/lib/Libattr/attr_fn_arst.c) has put a backslash before each " ' , and backslash.
Every function here works on bytes where the C code does (signed char on x86-64).
"""
from __future__ import annotations

import math
import re

CHAR_LINE_LIMIT = 78  # src/cmds/qstat.c
ESC = ord("\\")

# qstat's usage text (src/cmds/qstat.c main, errflg), exit status 2.
USAGE_18 = (
    "usage: \n"
    "qstat [-f] [-J] [-p] [-t] [-x] [-E] [-F format | -w] [-D delim] [ job_identifier... | destination... ]\n"
    "qstat [-a|-i|-r|-H|-T] [-J] [-t] [-u user] [-n] [-s] [-G|-M] [-1] [-w]\n"
    "\t[ job_identifier... | destination... ]\n"
    "qstat -Q [-f] [-F format] [-D delim] [ destination... ]\n"
    "qstat -q [-G|-M] [ destination... ]\n"
    "qstat -B [-f] [-F format] [-D delim] [ server_name... ]\n"
    "qstat --version\n"
)
USAGE_14 = (  # v14.1.0: no -F, no -E
    "usage: \n"
    "qstat [-f] [-J] [-p] [-t] [-x] [ job_identifier... | destination... ]\n"
    "qstat [-a|-i|-r|-H|-T] [-J] [-t] [-u user] [-n] [-s] [-G|-M] [-1] [-w]\n"
    "\t[ job_identifier... | destination... ]\n"
    "qstat -Q [-f] [ destination... ]\n"
    "qstat -q [-G|-M] [ destination... ]\n"
    "qstat -B [-f] [ server_name... ]\n"
    "qstat --version\n"
)


def encode_arst_bs(items: list[str]) -> str:
    """Variable_List as the server sends it (attr_fn_arst.c encode_arst_bs)."""
    out = []
    for item in items:
        out.append("".join("\\" + ch if ch in "\"',\\" else ch for ch in item))
    return ",".join(out)


# ---------------------------------------------------------------- text (-f)

def nonprint(data: bytes) -> bytes:
    """src/lib/Libutil/misc_utils.c show_nonprint_chars: a char < 32 but \\n and \\t as
    ^X. `ch` is a signed char on x86-64, so bytes >= 0x80 count as < 32 too."""
    out = bytearray()
    for byte in data:
        ch = byte - 256 if byte >= 128 else byte
        if ch < 32 and byte not in (10, 9):
            out += b"^" + bytes([(ch + 64) & 0xFF])
        else:
            out.append(byte)
    return bytes(out)


def feed_chars(data: bytes) -> bytes:
    """qstat.c convert_feed_chars: newline and form feed as \\n and \\f."""
    return data.replace(b"\n", b"\\n").replace(b"\f", b"\\f")


def prt_attr(name: str, resource: str | None, value: str, one_line: bool) -> bytes:
    """One attribute of `qstat -f` (qstat.c prt_attr, default format): folded at commas
    once a line would pass 78 columns, continued after "\\n\\t"; -w: one line."""
    raw = value.encode("utf-8", "surrogateescape")
    label = f"    {name}" + (f".{resource}" if resource else "") + " = "
    if one_line:
        body = feed_chars(raw) if resource else nonprint(feed_chars(raw))
        return label.encode() + body
    out = bytearray(label.encode())
    start = len(name) + 7 + (len(resource) + 1 if resource else 0)
    tokens = [t for t in raw.split(b",") if t]  # strtok skips empty fields
    for number, token in enumerate(tokens):
        if len(token) + start < CHAR_LINE_LIMIT:
            out += nonprint(token)
            start += len(token)  # the comma is not counted: as in the C code
        else:
            if number:
                out += b"\n\t"
                start = 9
            for byte in token:
                out += nonprint(bytes([byte]))
                start += 1
                if start > CHAR_LINE_LIMIT:
                    start = 8
                    out += b"\n\t"
        if number + 1 < len(tokens):
            out += b","
    return bytes(out)


def full_text(job_id: str, attrs: list[tuple[str, str | None, str]], one_line: bool) -> bytes:
    lines = [f"Job Id: {job_id}".encode()]
    lines += [prt_attr(n, r, v, one_line) for n, r, v in attrs]
    return b"\n".join(lines) + b"\n\n"


# ---------------------------------------------------------------- Variable_List split

def split_variables(value: bytes, released: bool) -> list[tuple[bytes, bytes | None]]:
    """qstat.c prt_attr, FORMAT_JSON, ATTR_v: split at commas not escaped by a backslash
    (only the comma is unescaped), then at the first '='. In 23.06 the character after
    '=' is copied unconditionally, so an empty value swallows the next comma and entry
    (fixed in master)."""
    items: list[tuple[bytes, bytes | None]] = []
    i, n = 0, len(value)
    while i < n:
        key, val = bytearray(), None
        while i < n and value[i] != ord(","):
            if value[i] == ESC and i + 1 < n and value[i + 1] == ord(","):
                i += 1
            if val is None and value[i] == ord("="):
                val = bytearray()
                i += 1
                if released:
                    if i < n:
                        val.append(value[i])
                        i += 1
                    continue
                continue
            (key if val is None else val).append(value[i])
            i += 1
        items.append((bytes(key), None if val is None else bytes(val)))
        i += 1
    return items


# ---------------------------------------------------------------- releases (pbs_json.c)

STRTOD_RE = re.compile(
    rb"[ \t\n\v\f\r]*[+-]?(?:"
    rb"0[xX](?:[0-9a-fA-F]+\.?[0-9a-fA-F]*|\.[0-9a-fA-F]+)(?:[pP][+-]?[0-9]+)?"
    rb"|(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?"
    rb"|[iI][nN][fF](?:[iI][nN][iI][tT][yY])?"
    rb"|[nN][aA][nN](?:\([0-9A-Za-z_]*\))?)"
)


def c_strtod(data: bytes) -> tuple[float, int]:
    """glibc strtod in the C locale: (value, bytes consumed); 0 consumed if no number."""
    m = STRTOD_RE.match(data)
    if not m:
        return 0.0, 0
    text = m.group(0).strip().decode()
    body = text.lstrip("+-")
    sign = -1.0 if text.startswith("-") else 1.0
    low = body.lower()
    if low.startswith("0x"):
        digits = body[2:]
        if "p" not in low:
            digits += "p0"
        number = float.fromhex("0x" + digits)
    elif low.startswith("nan"):
        number = math.nan
    elif low.startswith("inf"):
        number = math.inf
    else:
        number = float(body)
    return sign * number, m.end()


def released_is_number(value: bytes) -> bool:
    """pbs_json.c add_json_node (22.05, 23.06): bare when strtod reads it whole (trailing
    white space allowed) unless it starts with '0' and is >= 1; white space only: string."""
    if not value.strip(b" \t\n\v\f\r"):
        return False
    number, used = c_strtod(value)
    if used == 0 or value[used:].strip(b" \t\n\v\f\r"):
        return False
    return value[:1] != b"0" or number < 1  # NaN < 1 is false, as in C


def released_escape(value: bytes) -> bytes:
    """pbs_json.c strdup_escape(JSON_ESCAPE): \\b \\f \\n \\r \\t escaped; a backslash
    before ' or , is dropped, before anything else copied with that next character as
    is; a '"' gets a backslash unless the byte before it is one (a leading '"' gets none:
    the C code compares with the byte before the string)."""
    out = bytearray()
    controls = {8: b"\\b", 12: b"\\f", 10: b"\\n", 13: b"\\r", 9: b"\\t"}
    i = 0
    while i < len(value):
        byte = value[i]
        if byte in controls:
            out += controls[byte]
        elif byte == ord('"'):
            if i > 0 and value[i - 1] != ESC:
                out.append(ESC)
            out.append(byte)
        elif byte == ESC:
            if i + 1 < len(value) and value[i + 1] in b"',":
                i += 1
                out.append(value[i])
            else:
                out.append(byte)
                if i + 1 < len(value):
                    i += 1
                    out.append(value[i])
        else:
            out.append(byte)
        i += 1
    return bytes(out)


def released_value(value: bytes | None) -> bytes | None:
    if value is None:
        return None  # JSON_NULL value type: generate_json prints nothing, no comma either
    if released_is_number(value):
        return value
    return b'"' + nonprint(released_escape(value)) + b'"'


def released_json(jobs: list[tuple[str, list]], timestamp: int, version: str, server: str) -> bytes:
    """The whole `qstat -f -F json` document as pbs_json.c generate_json writes it."""
    root: list = [(b"timestamp", str(timestamp).encode()),
                  (b"pbs_version", b'"' + version.encode() + b'"'),
                  (b"pbs_server", b'"' + server.encode() + b'"')]
    job_nodes = []
    for job_id, attrs in jobs:
        job_nodes.append((job_id.encode(), released_job(attrs)))
    root.append((b"Jobs", job_nodes))
    return b"{" + released_members(root, 4) + b"\n}\n"


def released_job(attrs: list[tuple[str, str | None, str]]) -> list:
    members: list = []
    groups: dict[str, list] = {}
    for name, resource, value in attrs:
        raw = value.encode("utf-8", "surrogateescape")
        if name == "Variable_List":
            members.append((name.encode(), [(k, released_value(v))
                                            for k, v in split_variables(raw, True)]))
        elif resource is not None:
            if name not in groups:
                groups[name] = []
                members.append((name.encode(), groups[name]))
            groups[name].append((resource.encode(), released_value(raw)))
        else:
            members.append((name.encode(), released_value(raw)))
    return members


def released_members(members: list, indent: int) -> bytes:
    out = bytearray()
    comma = False
    pad = b" " * indent
    for key, value in members:
        if value is None:
            continue
        out += b",\n" if comma else b"\n"
        if isinstance(value, list):
            out += pad + b'"' + key + b'":{' + released_members(value, indent + 4)
            out += b"\n" + pad + b"}"
        else:
            out += pad + b'"' + key + b'":' + value
        comma = True
    return bytes(out)


# ---------------------------------------------------------------- master (cJSON)

class CJSONError(ValueError):
    """cJSON_ParseWithOpts failed: the value goes in as a string."""


def cjson_parse(text: bytes) -> object:
    """cJSON_ParseWithOpts(value, NULL, 1) as cJSON 1.7 does it (parse_value & co.):
    numbers start with '-' or a digit and are what strtod reads of [0-9+-eE.]; leading
    zeros, '1.' and control characters inside strings are accepted."""
    value, end = _cj_value(text, _cj_ws(text, 3 if text.startswith(b"\xef\xbb\xbf") else 0))
    if _cj_ws(text, end) != len(text):
        raise CJSONError(text)
    return value


def _cj_ws(text: bytes, i: int) -> int:
    while i < len(text) and text[i] <= 32:
        i += 1
    return i


def _cj_value(text: bytes, i: int) -> tuple[object, int]:
    for word, value in ((b"null", None), (b"false", False), (b"true", True)):
        if text.startswith(word, i):
            return value, i + len(word)
    if i >= len(text):
        raise CJSONError(text)
    first = text[i:i + 1]
    if first == b'"':
        return _cj_string(text, i)
    if first == b"-" or first.isdigit():
        m = re.match(rb"[0-9+\-eE.]{1,63}", text[i:])
        number, used = c_strtod(m.group(0))
        if used == 0:
            raise CJSONError(text)
        return float(number), i + used
    if first == b"[":
        return _cj_sequence(text, i, b"]", False)
    if first == b"{":
        return _cj_sequence(text, i, b"}", True)
    raise CJSONError(text)


def _cj_string(text: bytes, i: int) -> tuple[str, int]:
    out = bytearray()
    i += 1
    simple = {ord("b"): b"\b", ord("f"): b"\f", ord("n"): b"\n", ord("r"): b"\r",
              ord("t"): b"\t", ord('"'): b'"', ord("\\"): b"\\", ord("/"): b"/"}
    while i < len(text) and text[i] != ord('"'):
        if text[i] != ESC:
            out.append(text[i])
            i += 1
            continue
        if i + 1 >= len(text):
            raise CJSONError(text)
        code = text[i + 1]
        if code in simple:
            out += simple[code]
            i += 2
        elif code == ord("u") and re.match(rb"[0-9a-fA-F]{4}", text[i + 2:i + 6]):
            out += chr(int(text[i + 2:i + 6], 16)).encode("utf-8", "surrogatepass")
            i += 6
        else:
            raise CJSONError(text)
    if i >= len(text):
        raise CJSONError(text)
    return out.decode("utf-8", "surrogateescape"), i + 1


def _cj_sequence(text: bytes, i: int, close: bytes, keyed: bool) -> tuple[object, int]:
    items: list = []
    i = _cj_ws(text, i + 1)
    if text[i:i + 1] == close:
        return (dict(items) if keyed else items), i + 1
    while True:
        i = _cj_ws(text, i)
        key = None
        if keyed:
            if text[i:i + 1] != b'"':
                raise CJSONError(text)
            key, i = _cj_string(text, i)
            i = _cj_ws(text, i)
            if text[i:i + 1] != b":":
                raise CJSONError(text)
            i = _cj_ws(text, i + 1)
        value, i = _cj_value(text, i)
        items.append((key, value) if keyed else value)
        i = _cj_ws(text, i)
        if text[i:i + 1] == b",":
            i += 1
            continue
        if text[i:i + 1] == close:
            return (dict(items) if keyed else items), i + 1
        raise CJSONError(text)


def cjson_number(number: float) -> str:
    """cJSON print_number: NaN/inf as null, else %1.15g, or %1.17g if that loses."""
    if math.isnan(number) or math.isinf(number):
        return "null"
    text = "%1.15g" % number
    if float(text) != number:
        text = "%1.17g" % number
    return text


def cjson_string(value: str) -> str:
    """cJSON print_string_ptr: " \\ and control characters escaped, the rest as is."""
    out = []
    for ch in value:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch in "\b\f\n\r\t":
            out.append({"\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t"}[ch])
        elif ord(ch) < 32:
            out.append("\\u%04x" % ord(ch))
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def cjson_print(value: object, depth: int = 0) -> str:
    """cJSON_Print (formatted): tabs, '"key":<tab>value'."""
    if value is None:
        return "null"
    if value is True or value is False:
        return "true" if value else "false"
    if isinstance(value, float):
        return cjson_number(value)
    if isinstance(value, str):
        return cjson_string(value)
    if isinstance(value, list):
        return "[" + ", ".join(cjson_print(v, depth + 1) for v in value) + "]"
    tabs = "\t" * (depth + 1)
    body = ",\n".join(f"{tabs}{cjson_string(k)}:\t{cjson_print(v, depth + 1)}" for k, v in value.items())
    return "{\n" + body + ("\n" if body else "") + "\t" * depth + "}"


def parsed(value: bytes) -> object:
    """pbs_cjson.c pbs_json_insert_parsed: JSON if cJSON parses it, else the string."""
    try:
        return cjson_parse(value)
    except (CJSONError, IndexError, ValueError):
        return value.decode("utf-8", "surrogateescape")


MASTER_STRINGS = {"Job_Name", "project", "Account_Name"}  # qstat.c batch_item_json_type_triage


def master_json(jobs: list[tuple[str, list]], timestamp: int, version: str, server: str) -> bytes:
    root: dict = {"timestamp": float(timestamp), "pbs_version": version, "pbs_server": server}
    root["Jobs"] = {job_id: master_job(attrs) for job_id, attrs in jobs}
    return (cjson_print(root) + "\n").encode("utf-8", "surrogateescape")


def master_job(attrs: list[tuple[str, str | None, str]]) -> dict:
    out: dict = {}
    for name, resource, value in attrs:
        raw = value.encode("utf-8", "surrogateescape")
        if name == "Variable_List":
            out[name] = {k.decode("utf-8", "surrogateescape"): parsed(v if v is not None else b"")
                         for k, v in split_variables(raw, False)}
        elif resource is not None:
            out.setdefault(name, {})[resource] = parsed(raw)
        elif name in MASTER_STRINGS:
            out[name] = value
        else:
            out[name] = parsed(raw)
    return out
