#!/usr/bin/env python3
"""Run one cell in a new kernel of a Jupyter server, through its REST API and websocket,
as JupyterLab's page does: the tests' way to use the notebook a job started.

usage: jupyter_cell.py BASE_URL TOKEN CODE [--timeout SECONDS]
Prints what the cell printed and the text of its results. Exit status: 0 the cell ran,
1 it raised (its traceback on stderr), 2 the server could not be used (refused, bad token).
Needs websocket-client, which jupyter_server itself depends on.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import urllib.request
import uuid


def api(base: str, token: str, method: str, path: str, body: dict | None = None):
    """One REST call with the token; the decoded JSON reply (None when empty)."""
    request = urllib.request.Request(
        base.rstrip("/") + path, method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": f"token {token}", "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as reply:
        data = reply.read()
    return json.loads(data) if data else None


def run_cell(base: str, token: str, kernel: str, code: str, timeout: float) -> tuple:
    """(stdout, results, error or None) of one execute_request on the kernel's channels."""
    import websocket

    url = base.rstrip("/").replace("http", "ws", 1) + f"/api/kernels/{kernel}/channels"
    ws = websocket.create_connection(url, header=[f"Authorization: token {token}"], timeout=timeout)
    try:
        msg_id = uuid.uuid4().hex
        ws.send(json.dumps({
            "header": {"msg_id": msg_id, "msg_type": "execute_request", "username": "test",
                       "session": uuid.uuid4().hex, "version": "5.3"},
            "parent_header": {}, "metadata": {}, "channel": "shell", "buffers": [],
            "content": {"code": code, "silent": False, "store_history": False,
                        "user_expressions": {}, "allow_stdin": False, "stop_on_error": True}}))
        out, results, error = [], [], None
        idle = replied = False
        while not (idle and replied):
            message = json.loads(ws.recv())
            if message.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            kind, content = message["msg_type"], message["content"]
            if kind == "stream":
                out.append(content["text"])
            elif kind in ("execute_result", "display_data"):
                results.append(content["data"].get("text/plain", ""))
            elif kind == "error":
                trace = re.sub(r"\x1b\[[0-9;]*m", "", "\n".join(content["traceback"]))
                error = f"{trace}\n{content['ename']}: {content['evalue']}"
            elif kind == "status" and content["execution_state"] == "idle":
                idle = True
            elif kind == "execute_reply":
                replied = True
        return "".join(out), results, error
    finally:
        ws.close()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base_url")
    parser.add_argument("token")
    parser.add_argument("code")
    parser.add_argument("--timeout", type=float, default=120)
    opts = parser.parse_args(argv)
    try:
        kernel = api(opts.base_url, opts.token, "POST", "/api/kernels", {"name": "python3"})["id"]
    except OSError as exc:
        print(f"jupyter_cell: cannot start a kernel: {exc}", file=sys.stderr)
        return 2
    try:
        out, results, error = run_cell(opts.base_url, opts.token, kernel, opts.code, opts.timeout)
    finally:
        api(opts.base_url, opts.token, "DELETE", f"/api/kernels/{kernel}")
    sys.stdout.write(out)
    for result in results:
        print(result)
    if error:
        print(error, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
