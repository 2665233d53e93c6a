"""Real headless Chromium for tests, driven over the DevTools protocol on a pipe (no websocket library).

Chromium started with ``--remote-debugging-pipe`` reads protocol messages from its fd 3 and writes
replies and events to its fd 4, each a JSON document ended by a NUL byte.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time

__all__ = ["Chromium", "chromium_binary"]

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--hide-scrollbars", "--remote-debugging-pipe"]


def chromium_binary() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


class Chromium:
    """One headless browser with one page; collects console errors, exceptions and network requests.

    Parameters
    ----------
    width, height : int
        The page's viewport in CSS pixels.
    timeout : float
        Seconds to wait for any one protocol reply.
    """

    def __init__(self, width: int = 1280, height: int = 900, timeout: float = 60.0):
        self.width = width
        self.height = height
        self.timeout = timeout
        self.errors: list[str] = []  # console errors, uncaught exceptions, browser log errors
        self.requests: list[str] = []  # every URL the page asked for
        self._profile = tempfile.mkdtemp(prefix="driftmon-chromium-")
        self._next_id = 0
        self._replies: dict[int, dict] = {}
        self._events: list[dict] = []
        self._cond = threading.Condition()
        binary = chromium_binary()
        if binary is None:
            raise RuntimeError("chromium is not installed (scripts/setup.sh installs the Debian package)")
        to_child_r, self._to_child = os.pipe()
        self._from_child, from_child_w = os.pipe()

        def wire():  # runs in the child before exec: the protocol pipes become its fds 3 and 4
            os.dup2(to_child_r, 3)
            os.dup2(from_child_w, 4)

        self._log = open(os.path.join(self._profile, "chromium.log"), "wb")
        self.proc = subprocess.Popen([binary, *FLAGS, f"--user-data-dir={self._profile}",
                                      f"--window-size={width},{height}", "about:blank"],
                                     stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
                                     preexec_fn=wire, pass_fds=(3, 4))
        os.close(to_child_r)
        os.close(from_child_w)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        target = self.send("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.send(f"{domain}.enable", session=True)
        self.send("Emulation.setDeviceMetricsOverride", session=True, width=width, height=height,
                  deviceScaleFactor=1, mobile=False)

    # ---- protocol ----------------------------------------------------------------------------------

    def _read(self) -> None:
        buf = b""
        while True:
            try:
                chunk = os.read(self._from_child, 1 << 16)
            except OSError:
                chunk = b""
            if not chunk:
                with self._cond:
                    self._cond.notify_all()
                return
            buf += chunk
            while b"\0" in buf:
                raw, buf = buf.split(b"\0", 1)
                msg = json.loads(raw)
                with self._cond:
                    if "id" in msg:
                        self._replies[msg["id"]] = msg
                    else:
                        self._on_event(msg)
                        self._events.append(msg)
                    self._cond.notify_all()

    def _on_event(self, msg: dict) -> None:
        method, params = msg.get("method"), msg.get("params", {})
        if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            self.errors.append("console: " + " ".join(str(a.get("value", a.get("description")))
                                                      for a in params.get("args", [])))
        elif method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            self.errors.append("exception: " + str(details.get("exception", {}).get("description", details.get("text"))))
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            self.errors.append("log: " + params["entry"].get("text", ""))
        elif method == "Network.requestWillBeSent":
            self.requests.append(params.get("request", {}).get("url", ""))

    def send(self, method: str, session: bool = False, **params) -> dict:
        """Send one command and return its result; raise RuntimeError on a protocol error."""
        with self._cond:
            self._next_id += 1
            mid = self._next_id
        msg = {"id": mid, "method": method, "params": params}
        if session:
            msg["sessionId"] = self.session
        os.write(self._to_child, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + self.timeout
        with self._cond:
            while mid not in self._replies:
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    raise RuntimeError(f"no reply to {method} (chromium exit code {self.proc.poll()})")
                self._cond.wait(min(left, 1.0))
            reply = self._replies.pop(mid)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply.get("result", {})

    def wait_event(self, method: str, since: int = 0) -> dict:
        """The first event named ``method`` at or after position ``since`` of the event list."""
        deadline = time.monotonic() + self.timeout
        with self._cond:
            while True:
                for event in self._events[since:]:
                    if event.get("method") == method:
                        return event
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    raise RuntimeError(f"no {method} event (chromium exit code {self.proc.poll()})")
                self._cond.wait(min(left, 1.0))

    # ---- page --------------------------------------------------------------------------------------

    def open(self, url: str) -> "Chromium":
        """Navigate and wait for the load event."""
        with self._cond:
            mark = len(self._events)
        self.send("Page.navigate", session=True, url=url)
        self.wait_event("Page.loadEventFired", since=mark)
        return self

    def evaluate(self, expression: str):
        """The JSON value of a JavaScript expression in the page."""
        result = self.send("Runtime.evaluate", session=True, expression=expression, returnByValue=True,
                           awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"page script failed: {result['exceptionDetails']}")
        return result["result"].get("value")

    def screenshot(self, path: str, height: int | None = None) -> bytes:
        """A PNG of the top ``height`` CSS pixels of the page (default: the whole page), written to ``path``."""
        full = int(self.evaluate("document.documentElement.scrollHeight"))
        h = min(full, height) if height else full
        self.send("Emulation.setDeviceMetricsOverride", session=True, width=self.width, height=h,
                  deviceScaleFactor=1, mobile=False)
        data = base64.b64decode(self.send("Page.captureScreenshot", session=True, format="png")["data"])
        self.send("Emulation.setDeviceMetricsOverride", session=True, width=self.width, height=self.height,
                  deviceScaleFactor=1, mobile=False)
        with open(path, "wb") as fh:
            fh.write(data)
        return data

    def close(self) -> None:
        try:
            self.send("Browser.close")
        except (RuntimeError, OSError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for fd in (self._to_child, self._from_child):
            try:
                os.close(fd)
            except OSError:
                pass
        self._log.close()
        shutil.rmtree(self._profile, ignore_errors=True)

    def __enter__(self) -> "Chromium":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
