"""A job's attributes from qstat, as the PBS releases that sites run print them.

read_job(jobid) runs, first that works first:
  1. `qstat -f -F json JOBID`, read by json.loads;
  2. the same output read leniently (loads_lenient): the JSON encoder of every OpenPBS
     release from 18 to 23.06, and of the PBS Pro versions built on them
     (src/lib/Libcmds/pbs_json.c before the cJSON rewrite of master, commit 74106a6ac),
     writes invalid JSON for some values;
  3. `qstat -f JOBID` text (parse_text), when qstat has no -F json (PBS Pro before 18:
     "qstat: invalid option -- 'F'", exit 2) or -F json fails.
It returns the job's attributes as strings, nested one level for `name.resource`
attributes (Resource_List, resources_used) and for Variable_List, as the JSON has them,
with the source it used; or None with the reason. It raises nothing but KitError.

What the released encoder does (pbs_json.c, add_json_node and strdup_escape; qstat.c
prt_attr calls it with JSON_ESCAPE for every job attribute):
  - a value that strtod reads whole (trailing white space allowed) is written bare:
    v20 and later unless it starts with '0' and is >= 1 (from v22), so nan, inf, .5, 1.,
    1e5, 0x0 and (in v20) 00012 come out bare; v18 and v19 write it through %ld or %lf
    instead (00012 -> 12, nan -> nan). v20 writes an empty value bare too: `"comment":,`.
  - in a string, \\b \\f \\n \\r \\t are escaped; other control characters become ^X
    (src/lib/Libutil/misc_utils.c show_nonprint_chars, v20 on) or stay raw (v18, v19).
    show_nonprint_chars compares a signed char, so on x86-64 a byte >= 0x80 becomes '^'
    and byte + 64: any non-ASCII value comes out as raw control characters and bytes that
    are not UTF-8.
  - a backslash and the next character are copied unchanged (\\u, \\w, \\$ become invalid
    escapes), but \\' and \\, lose the backslash (v22 on); v18 to v20 copy a backslash alone.
  - a double quote is escaped (v22 on) unless it is the value's first character or
    follows a backslash; v18 to v20 never escape it. A value ending in a backslash then
    escapes its own closing quote.
  - keys (attribute, resource and variable names) are written unescaped.
  - Variable_List comes from the server with a backslash before each " ' , and backslash
    (src/lib/Libattr/attr_fn_arst.c encode_arst_bs); qstat drops the one before a comma,
    so `\\u@\\h` of a `qsub -V` prompt arrives as valid `\\\\u@\\\\h`, and v18 to v20 write
    \\' for a quote (read here as the quote). Single backslashes come from attributes
    sent as they are (Submit_arguments, comment, paths). qstat.c copies the character
    after a variable's '=' whatever it is (v20 to 23.06): an empty value takes the next
    variable into it.
  - every value is on its own line: `"key":value` then ",\\n" or "\\n".
loads_lenient reads bare words as strings, keeps invalid escapes as they are, accepts raw
control characters and, when the quotes do not add up, takes a quote as a string's end
only where a JSON document could go on after it (a comma and the next key, a closing
brace, the end).
"""
from __future__ import annotations

import re

from .errors import MALFORMED, KitError

TYPE_CHECKING = False
if TYPE_CHECKING:  # annotations only: typing costs a job start ~8 ms
    from typing import Callable, Optional, Tuple

JSON_SOURCE = "qstat -f -F json"
LENIENT_SOURCE = "qstat -f -F json (invalid JSON from an OpenPBS <= 23.06 qstat, read leniently)"
TEXT_SOURCE = "qstat -f"
TIMEOUT = 30

_WS = " \t\n\r"
_SPECIAL = re.compile(r'["\\]')
_HEX4 = re.compile(r"[0-9a-fA-F]{4}")
_ESCAPES = {'"': '"', "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}
# Not JSON, but what v18 to v20 write for a quote the server escaped in a Variable_List
# value (attr_fn_arst.c encode_arst_bs); v22 on drop that backslash.
_LENIENT_ESCAPES = dict(_ESCAPES, **{"'": "'"})
_MAX_DEPTH = 200


def read_job(jobid: str, run: Optional[Callable] = None) -> Tuple[Optional[dict], str]:
    """(attributes, source) of the job from qstat, or (None, why not)."""
    if run is None:
        import subprocess

        run = subprocess.run
    done, failure = _run(run, ["qstat", "-f", "-F", "json", jobid])
    if done is None and failure.startswith("no qstat"):
        return None, failure
    reasons = []
    if done is not None:
        attrs, source = _from_json(_decode(done.stdout), jobid)
        if attrs is not None:
            return attrs, source
        reasons.append(f"{JSON_SOURCE}: {source}")
    else:
        reasons.append(f"{JSON_SOURCE}: {failure}")
        if "timed out" in failure:
            return None, reasons[0]
    done, failure = _run(run, ["qstat", "-f", jobid])
    if done is not None:
        try:
            attrs = parse_text(done.stdout)
        except KitError as exc:
            reasons.append(f"{TEXT_SOURCE}: {exc}")
        else:
            return attrs, TEXT_SOURCE
    else:
        reasons.append(f"{TEXT_SOURCE}: {failure}")
    return None, "; ".join(reasons)


def _run(run: Callable, argv: list):
    """(completed process, "") when the command exited 0, else (None, what went wrong)."""
    import subprocess

    try:
        done = run(argv, capture_output=True, timeout=TIMEOUT)
    except FileNotFoundError:
        return None, "no qstat on PATH"
    except subprocess.TimeoutExpired:
        return None, f"timed out after {TIMEOUT} s"
    except (OSError, ValueError) as exc:
        return None, f"cannot run qstat ({getattr(exc, 'strerror', None) or exc})"
    if done.returncode != 0:
        err = _decode(done.stderr or b"").strip().splitlines()
        first = err[0] if err else "no message"
        return None, f"exit status {done.returncode} ({first})"
    return done, ""


def _decode(data) -> str:
    if isinstance(data, str):
        return data
    return (data or b"").decode("utf-8", errors="replace")


def _from_json(text: str, jobid: str) -> Tuple[Optional[dict], str]:
    import json

    source = JSON_SOURCE
    try:
        doc = json.loads(text, parse_int=str, parse_float=str, parse_constant=str)
    except ValueError:
        try:
            doc = loads_lenient(text)
        except KitError as exc:
            return None, str(exc)
        source = LENIENT_SOURCE
    attrs = job_of(doc, jobid)
    if attrs is None:
        return None, "no job in the output"
    return attrs, source


def job_of(doc, jobid: str) -> Optional[dict]:
    """The attributes of jobid (or of the only job) in a parsed qstat -F json document."""
    jobs = doc.get("Jobs") if isinstance(doc, dict) else None
    if not isinstance(jobs, dict) or not jobs:
        return None
    job = jobs.get(jobid)
    if job is None:
        job = next(iter(jobs.values())) if len(jobs) == 1 else None
    if not isinstance(job, dict):
        return None
    return {str(name): _strings(value, nested=True) for name, value in job.items()}


def _strings(value, nested: bool):
    """Every value a string ('3' for 3, '' for null), dicts one level deep."""
    if isinstance(value, dict) and nested:
        return {str(key): _strings(sub, nested=False) for key, sub in value.items()}
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, (list, dict)):
        return ",".join(str(_strings(item, False)) for item in value)
    return str(value)


# ------------------------------------------------------------------ lenient JSON


class _Fail(Exception):
    pass


def loads_lenient(text: str):
    """Parse JSON as json.loads does, and the released qstat encoder's invalid JSON too.

    Strings come back as str, objects as dict, bare words (numbers, nan, true) as the
    str of their text; arrays as lists. Raises KitError (MALFORMED) if it cannot.
    """
    if not isinstance(text, str):
        raise KitError("qstat's JSON output is not text", MALFORMED)
    last = "nothing"
    for guess_quotes in (False, True):
        try:
            return _Lenient(text, guess_quotes).document()
        except _Fail as exc:
            last = str(exc)
        except (RecursionError, ValueError, IndexError) as exc:  # belt and braces
            last = type(exc).__name__
    raise KitError(f"cannot read qstat's JSON output, even leniently ({last})", MALFORMED)


class _Lenient:
    """Recursive descent over one document. guess_quotes: a '"' (or '\\"') ends a
    string only where the document can go on after it (the released encoder leaves
    some quotes unescaped and lets a final backslash escape the closing quote)."""

    def __init__(self, text: str, guess_quotes: bool) -> None:
        self.text, self.guess, self.pos = text, guess_quotes, 0

    def fail(self, what: str):
        return _Fail(f"{what} at character {self.pos}")

    def ws(self, pos: int) -> int:
        text = self.text
        while pos < len(text) and text[pos] in _WS:
            pos += 1
        return pos

    def document(self):
        self.pos = self.ws(0)
        value = self.value("top", 0)
        self.pos = self.ws(self.pos)
        if self.pos != len(self.text):
            raise self.fail("extra text after the document")
        return value

    def value(self, context: str, depth: int):
        if depth > _MAX_DEPTH:
            raise self.fail("too deeply nested")
        char = self.text[self.pos:self.pos + 1]
        if char == "{":
            return self.obj(depth)
        if char == "[":
            return self.array(depth)
        if char == '"':
            return self.string(context)
        return self.bare()

    def obj(self, depth: int) -> dict:
        out: dict = {}
        if self.empty("}"):
            return out
        while True:
            if self.text[self.pos:self.pos + 1] != '"':
                raise self.fail("expected a key")
            key = self.string("key")
            self.pos = self.ws(self.pos)
            if self.text[self.pos:self.pos + 1] != ":":
                raise self.fail("expected ':'")
            self.pos = self.ws(self.pos + 1)
            out[key] = self.value("object", depth + 1)
            if not self.more("}"):
                return out

    def array(self, depth: int) -> list:
        out: list = []
        if self.empty("]"):
            return out
        while True:
            out.append(self.value("array", depth + 1))
            if not self.more("]"):
                return out

    def empty(self, close: str) -> bool:
        """At an opening bracket: past it and the white space after; True (and past close
        too) when close comes next."""
        self.pos = self.ws(self.pos + 1)
        if self.text[self.pos:self.pos + 1] == close:
            self.pos += 1
            return True
        return False

    def more(self, close: str) -> bool:
        """After a member: past a ',' (True: another member follows) or close (False)."""
        self.pos = self.ws(self.pos)
        char = self.text[self.pos:self.pos + 1]
        self.pos = self.ws(self.pos + 1)
        if char == close:
            return False
        if char != ",":
            raise self.fail(f"expected ',' or '{close}'")
        return True

    def bare(self) -> str:
        """A bare word (number, nan, true, or v20's nothing at all) up to , } ] or a newline."""
        text, start = self.text, self.pos
        end = start
        while end < len(text) and text[end] not in ",}]\n":
            end += 1
        if text[start:start + 1] in (":", "{", "["):
            raise self.fail("unexpected character")
        self.pos = end
        return text[start:end].strip(_WS)

    def string(self, context: str) -> str:
        text = self.text
        pos = self.pos + 1
        parts = []
        while True:
            match = _SPECIAL.search(text, pos)
            if match is None:
                raise self.fail("unterminated string")
            at = match.start()
            parts.append(text[pos:at])
            if match.group() == '"':
                if not self.guess or self.ends_here(at + 1, context):
                    self.pos = at + 1
                    return "".join(parts)
                parts.append('"')
                pos = at + 1
                continue
            after = text[at + 1:at + 2]
            if after == '"' and self.guess and self.ends_here(at + 2, context):
                parts.append("\\")  # a value's final backslash, not an escape
                self.pos = at + 2
                return "".join(parts)
            if after in _LENIENT_ESCAPES:
                parts.append(_LENIENT_ESCAPES[after])
                pos = at + 2
            elif after == "u" and _HEX4.fullmatch(text, at + 2, at + 6):
                code = int(text[at + 2:at + 6], 16)
                pos = at + 6
                if 0xD800 <= code <= 0xDBFF and text[pos:pos + 2] == "\\u" and _HEX4.fullmatch(text, pos + 2, pos + 6):
                    low = int(text[pos + 2:pos + 6], 16)
                    if 0xDC00 <= low <= 0xDFFF:
                        code = 0x10000 + (((code - 0xD800) << 10) | (low - 0xDC00))
                        pos += 6
                parts.append(chr(code))
            else:
                parts.append("\\" + after)  # invalid escape: kept as written
                pos = at + 1 + len(after)

    def ends_here(self, pos: int, context: str) -> bool:
        """Can the document go on after a string that ends just before pos?"""
        text = self.text
        pos = self.ws(pos)
        char = text[pos:pos + 1]
        if context == "key":
            return char == ":"
        if char == "":
            return True
        if context == "top":
            return False
        if char == ",":
            return context == "array" or self.key_follows(self.ws(pos + 1))
        while char in ("}", "]"):
            pos = self.ws(pos + 1)
            char = text[pos:pos + 1]
            if char == "":
                return True
            if char == ",":
                nxt = self.ws(pos + 1)
                return self.key_follows(nxt) or text[nxt:nxt + 1] in ("{", "[")
        return False

    def key_follows(self, pos: int) -> bool:
        """Is there `"name":` at pos (a name on one line, without quotes)?"""
        text = self.text
        if text[pos:pos + 1] != '"':
            return False
        end = pos + 1
        while end < len(text) and text[end] not in '"\n':
            end += 2 if text[end] == "\\" else 1
        if text[end:end + 1] != '"':
            return False
        after = self.ws(end + 1)
        return text[after:after + 1] == ":"


# ------------------------------------------------------------------ qstat -f text

_ATTR_LINE = re.compile(rb"^    ([^\s.=]+)(?:\.([^\s=]+))? = ?(.*)$", re.DOTALL)


def parse_text(data) -> dict:
    """The job's attributes from `qstat -f` text (src/cmds/qstat.c prt_attr).

    prt_attr cuts a value at commas and, once a line passes CHAR_LINE_LIMIT (78)
    columns, goes on after "\\n\\t"; a piece longer than a line is cut anywhere (even
    inside a UTF-8 character, hence bytes here). A value's own newline is printed raw.
    """
    if isinstance(data, str):
        data = data.encode("utf-8", errors="surrogateescape")
    if not isinstance(data, (bytes, bytearray)):
        raise KitError("qstat -f printed nothing readable", MALFORMED)
    entries: list = []
    seen_job = False
    for line in bytes(data).split(b"\n"):
        if line.startswith(b"Job Id:"):
            if seen_job:
                break  # one job only
            seen_job = True
            continue
        if not seen_job:
            continue
        if line.startswith(b"\t") and entries:
            entries[-1][2] += line[1:]
            continue
        match = _ATTR_LINE.match(line)
        if match:
            entries.append([match.group(1), match.group(2), bytearray(match.group(3))])
        elif line and entries:
            entries[-1][2] += b"\n" + line  # a newline inside the value
    if not entries:
        raise KitError("qstat -f printed no job attributes", MALFORMED)
    attrs: dict = {}
    for name, resource, value in entries:
        key = name.decode("utf-8", errors="replace")
        text = bytes(value).decode("utf-8", errors="replace")
        if key == "Variable_List" and resource is None:
            attrs[key] = split_variable_list(text)
        elif resource is not None:
            sub = attrs.get(key)
            if not isinstance(sub, dict):
                sub = attrs[key] = {}
            sub[resource.decode("utf-8", errors="replace")] = text
        else:
            attrs[key] = text
    return attrs


def split_variable_list(text: str) -> dict:
    """NAME=value pairs of a Variable_List as qstat -f prints it: the server puts a
    backslash before each " ' , and backslash of a value (src/lib/Libattr/attr_fn_arst.c
    encode_arst_bs), so a comma without one separates two variables."""
    items, current, i = [], [], 0
    while i < len(text):
        char = text[i]
        if char == "\\" and i + 1 < len(text):
            current.append(text[i + 1])
            i += 2
            continue
        if char == ",":
            items.append("".join(current))
            current = []
        else:
            current.append(char)
        i += 1
    items.append("".join(current))
    out: dict = {}
    for item in items:
        if item:
            name, _, value = item.partition("=")
            out[name] = value
    return out
