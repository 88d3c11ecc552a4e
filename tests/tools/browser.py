#!/usr/bin/env python3
"""A real browser on the job's JupyterLab and dashboard: headless Chromium (Debian's
chromium and chromium-driver) driven by selenium. The tests use it to see that the pages
draw; `screenshots` takes the README's pictures from a running JUPYTER=yes job.

usage: browser.py screenshots [SCHEDULER_FILE] [--out DIR]
  (reads SCHEDULER_FILE's .jupyter.json beside it, default ./scheduler.json; writes
  DIR/jupyterlab.png and DIR/dashboard.png, default docs/)

Bokeh's dashboard draws only once its websocket has connected: wait_dashboard() waits for
its canvases, not for the page's load event.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import sys
import tempfile
import threading
import time

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
# Chromium's own background traffic fails on a closed network, many connections at once.
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--window-size=1400,900"]
# Counts canvases and visible elements, shadow roots included (Bokeh 3 draws in them).
COUNT_JS = """
function walk(root, found) {
  for (const el of root.querySelectorAll('*')) {
    if (el.tagName === 'CANVAS' && el.width > 0 && el.height > 0) found.canvas += 1;
    if (el.offsetWidth > 0 && el.offsetHeight > 0) found.visible += 1;
    if (el.shadowRoot) walk(el.shadowRoot, found);
  }
  return found;
}
return walk(document, {canvas: 0, visible: 0});
"""


def missing() -> str:
    """What this machine lacks to run the browser, or '' when nothing."""
    lacking = [path for path in (CHROMIUM, CHROMEDRIVER) if not os.path.exists(path)]
    try:
        import selenium  # noqa: F401
    except ImportError:
        lacking.append("the selenium package")
    return ", ".join(lacking)


class Browser:
    """Headless Chromium with a private profile, removed on close()."""

    def __init__(self) -> None:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        self.profile = tempfile.mkdtemp(prefix="dpk-chromium-")
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for flag in FLAGS + [f"--user-data-dir={self.profile}"]:
            options.add_argument(flag)
        self.driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)

    def close(self) -> None:
        try:
            self.driver.quit()
        finally:
            shutil.rmtree(self.profile, ignore_errors=True)

    def wait(self, condition, timeout: float, what: str):
        deadline = time.monotonic() + timeout
        while True:
            value = condition()
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what} within {timeout:g} s (page title {self.driver.title!r})")
            time.sleep(0.2)

    def count(self) -> dict:
        return self.driver.execute_script(COUNT_JS)

    def open_lab(self, url: str, timeout: float = 60) -> dict:
        """Open JupyterLab at url (its token in it); wait for its main area and file
        browser. Its counts."""
        from selenium.webdriver.common.by import By

        self.driver.get(url)
        self.wait(lambda: self.driver.find_elements(By.CSS_SELECTOR, "#jp-main-dock-panel")
                  and self.driver.find_elements(By.CSS_SELECTOR, ".jp-DirListing-item"),
                  timeout, "no JupyterLab main area and file browser")
        time.sleep(1)  # the launcher's icons and the sidebars settle
        return {"title": self.driver.title, **self.count()}

    def open_dashboard(self, url: str, timeout: float = 60, canvases: int = 3) -> dict:
        """Open the dashboard's page; wait until Bokeh has drawn (its canvases exist)."""
        self.driver.get(url)
        self.wait(lambda: self.count()["canvas"] >= canvases, timeout, "the dashboard did not draw")
        time.sleep(2)  # a few websocket updates, so that the plots hold data
        return {"title": self.driver.title, **self.count()}

    def shut_down_from_menu(self, timeout: float = 30) -> None:
        """File > Shut Down, then the dialog's Shut Down, as a user does it."""
        from selenium.webdriver.common.by import By

        self.menu("File", "Shut Down", timeout)
        button = self.wait(lambda: [e for e in self.driver.find_elements(
            By.CSS_SELECTOR, ".jp-Dialog-button") if e.text.strip() == "Shut Down"], timeout,
            "no Shut Down button in the dialog")
        button[0].click()

    def screenshot(self, path: str) -> int:
        """Save a PNG of the window; its size in bytes (a blank page compresses to little)."""
        self.driver.save_screenshot(path)
        return os.path.getsize(path)


    def run_notebook(self, url: str, timeout: float = 120) -> None:
        """Open the notebook at url, run all its cells (Run > Run All Cells), wait until
        the last code cell has an output."""
        from selenium.webdriver.common.by import By

        self.driver.get(url)
        self.wait(lambda: self.driver.find_elements(By.CSS_SELECTOR, ".jp-Notebook .jp-Cell"),
                  timeout, "the notebook did not open")
        self.wait(lambda: "Idle" in self.driver.find_element(By.TAG_NAME, "body").text
                  or self.driver.find_elements(By.CSS_SELECTOR, ".jp-Notebook-ExecutionIndicator"),
                  timeout, "no kernel")
        self.menu("Run", "Run All Cells", timeout)

        def done():
            prompts = [e.text for e in self.driver.find_elements(
                By.CSS_SELECTOR, ".jp-CodeCell .jp-InputPrompt")]
            return prompts and all(p.strip() not in ("[ ]:", "[*]:", "") for p in prompts)
        self.wait(done, timeout, "the cells did not run")

    def menu(self, name: str, item: str, timeout: float = 30) -> None:
        """Click menu bar entry name, then its item."""
        from selenium.webdriver.common.by import By

        entry = self.wait(lambda: [e for e in self.driver.find_elements(
            By.CSS_SELECTOR, ".lm-MenuBar-itemLabel") if e.text == name], timeout, f"no {name} menu")
        entry[0].click()
        choice = self.wait(lambda: [e for e in self.driver.find_elements(
            By.CSS_SELECTOR, ".lm-Menu-itemLabel") if e.text == item], timeout,
            f"no {item} in the {name} menu")
        choice[0].click()

    def open_dask_sidebar(self, panes: tuple = (), timeout: float = 30) -> int:
        """Click the Dask tab of the left sidebar (dask-labextension), wait until it lists
        the dashboard's panes (it found the dashboard through Jupyter's proxy), open the
        named ones. The number of panes listed."""
        from selenium.webdriver.common.by import By

        tab = self.wait(lambda: self.driver.find_elements(
            By.CSS_SELECTOR, "[data-id='dask-dashboard-launcher']"), timeout, "no Dask sidebar tab")

        def shown():
            return [i for i in self.driver.find_elements(
                By.CSS_SELECTOR, ".dask-DashboardListing-item") if i.is_displayed()]
        if not shown():
            tab[0].click()  # the tab toggles its panel: click only a closed one
        items = self.wait(shown, timeout, "the Dask sidebar lists no dashboard panes")
        for name in panes:
            item = self.wait(lambda: [i for i in shown() if i.get_attribute(
                "textContent").strip() == name], timeout, f"no {name} in the Dask sidebar")[0]
            self.driver.execute_script("arguments[0].scrollIntoView()", item)
            item.click()
            time.sleep(1)
        return len(items)


class Tunnel:
    """What `ssh -N -L PORT:HOST:PORT login` gives a laptop, on this machine: localhost:PORT
    relayed to HOST:PORT (the login node, here, reaches the compute nodes)."""

    def __init__(self, port: int, host: str, target_port: int) -> None:
        self.target = (host, target_port)
        self.server = socket.create_server(("127.0.0.1", port))
        self.server.settimeout(0.2)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                client, _ = self.server.accept()
            except OSError:
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=10)
            except OSError:
                client.close()
                continue
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=2)
        self.server.close()


def busy_cluster(where: dict, seconds: float = 25) -> threading.Thread:
    """A computation in a kernel of the job's JupyterLab, in the background, so that the
    dashboard has tasks to draw."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import jupyter_cell

    base, token = where["local_url"].split("/lab?token=")
    code = ("import os, time\nfrom dask.distributed import Client\nimport dask.array as da\n"
            "client = Client(scheduler_file=os.environ['DASK_SCHEDULER_FILE'])\n"
            f"end = time.time() + {seconds}\n"
            "while time.time() < end:\n"
            "    (da.random.random((12000, 12000), chunks=(1000, 1000)) ** 2).sum().compute()\n")
    thread = threading.Thread(target=jupyter_cell.main, args=([base, token, code],), daemon=True)
    thread.start()
    return thread


def screenshots(scheduler_file: str, out: str, notebook: str = "examples/dask-notebook.ipynb") -> None:
    """The README's two pictures, from the running job that wrote scheduler_file: its
    JupyterLab with the example notebook run and the Dask sidebar open, and the dashboard
    through Jupyter's proxy while the cluster computes."""
    stem = scheduler_file[:-5] if scheduler_file.endswith(".json") else scheduler_file
    with open(stem + ".jupyter.json", encoding="utf-8") as fh:
        where = json.load(fh)
    base, token = where["local_url"].split("/lab?token=")
    browser = Browser()
    try:
        browser.open_lab(where["local_url"])
        browser.run_notebook(f"{base}/lab/tree/{notebook}?token={token}")
        work = busy_cluster(where, seconds=20)
        browser.open_dask_sidebar(panes=("Task Stream",))
        time.sleep(5)
        size = browser.screenshot(os.path.join(out, "jupyterlab.png"))
        print(f"jupyterlab.png: {size} bytes")
        work.join(timeout=60)
        work = busy_cluster(where)
        time.sleep(4)
        board = browser.open_dashboard(where["dashboard"])
        time.sleep(4)
        size = browser.screenshot(os.path.join(out, "dashboard.png"))
        print(f"dashboard.png: {size} bytes, {board}")
        work.join(timeout=60)
    finally:
        browser.close()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["screenshots"])
    parser.add_argument("scheduler_file", nargs="?", default="scheduler.json")
    parser.add_argument("--out", default="docs")
    opts = parser.parse_args(argv)
    lacking = missing()
    if lacking:
        print(f"browser.py: this machine lacks {lacking} (apt-get install chromium "
              "chromium-driver; pip install selenium)", file=sys.stderr)
        return 2
    os.makedirs(opts.out, exist_ok=True)
    screenshots(opts.scheduler_file, opts.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
