"""A small Chrome DevTools Protocol client for headless Chromium: open a page, run JavaScript, take a screenshot.

Used by ``scripts/ui_snapshots.py`` and the UI width test to look at the Prefect UI as a user does, at a fixed
width. Needs Debian's ``chromium``; the websocket client is ``websockets`` (a dependency of Prefect). No extra
package: Chromium's ``--remote-debugging-port`` speaks the protocol itself.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from websockets.sync.client import ClientConnection, connect

#: the flags a headless Chromium needs on a machine with no network beyond localhost and no display
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--hide-scrollbars",
         "--disable-background-networking", "--disable-component-update", "--disable-sync")


def chromium_path() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


class Browser:
    """One headless Chromium with one page, driven over the DevTools protocol. Use as a context manager."""

    def __init__(self, width: int = 1400, height: int = 2000, chromium: str | None = None) -> None:
        self.width, self.height = width, height
        self._chromium = chromium or chromium_path()
        if not self._chromium:
            raise RuntimeError("chromium is not installed (Debian: apt-get install chromium)")
        self._profile = tempfile.mkdtemp(prefix="cdp-profile-")
        self._process: subprocess.Popen[bytes] | None = None
        self._ws: ClientConnection | None = None
        self._next_id = 0

    def __enter__(self) -> Browser:
        self._process = subprocess.Popen(
            [self._chromium, *FLAGS, f"--user-data-dir={self._profile}", "--remote-debugging-port=0",
             f"--window-size={self.width},{self.height}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port_file = Path(self._profile) / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not (port_file.exists() and "\n" in port_file.read_text()):
            if time.monotonic() > deadline or self._process.poll() is not None:
                self.__exit__(None, None, None)
                raise RuntimeError("chromium did not open its DevTools port")
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json", timeout=30) as response:
            targets = json.loads(response.read())
        page = next(t for t in targets if t["type"] == "page")
        self._ws = connect(page["webSocketDebuggerUrl"], max_size=None, open_timeout=30)
        self.call("Emulation.setDeviceMetricsOverride", width=self.width, height=self.height, deviceScaleFactor=1,
                  mobile=False)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._ws is not None:
            self._ws.close()
        if self._process is not None:
            self._process.kill()
            self._process.wait(timeout=30)
        shutil.rmtree(self._profile, ignore_errors=True)

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        """One protocol command; its result (events that arrive meanwhile are dropped)."""
        assert self._ws is not None, "use Browser as a context manager"
        self._next_id += 1
        ident = self._next_id
        self._ws.send(json.dumps({"id": ident, "method": method, "params": params}))
        while True:
            message = json.loads(self._ws.recv(timeout=120))
            if message.get("id") == ident:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                result: dict[str, Any] = message.get("result", {})
                return result

    def eval(self, expression: str) -> Any:
        """The value of a JavaScript expression (promises awaited)."""
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"JavaScript failed: {result['exceptionDetails'].get('text')}")
        return result.get("result", {}).get("value")

    def open(self, url: str, ready: str = "document.readyState === 'complete'", timeout: float = 60) -> bool:
        """Go to ``url`` and wait until the JavaScript condition ``ready`` holds (False when it never did)."""
        self.call("Page.navigate", url=url)
        return self.wait_for(ready, timeout)

    def wait_for(self, condition: str, timeout: float = 60) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if self.eval(f"Boolean({condition})"):
                    return True
            except RuntimeError:
                pass  # the page is still loading
            time.sleep(0.25)
        return False

    def screenshot(self, out: Path, height: int | None = None, scale: float = 1.0) -> Path:
        """A PNG of the page at the browser's width (the full page height when ``height`` is None, capped),
        scaled by ``scale`` (0.5: half as wide, for a small picture in the docs)."""
        full = height or min(int(self.eval("document.documentElement.scrollHeight") or self.height), 6000)
        self.call("Emulation.setDeviceMetricsOverride", width=self.width, height=full, deviceScaleFactor=1,
                  mobile=False)
        data = self.call("Page.captureScreenshot", format="png",
                         clip={"x": 0, "y": 0, "width": self.width, "height": full, "scale": scale})["data"]
        self.call("Emulation.setDeviceMetricsOverride", width=self.width, height=self.height, deviceScaleFactor=1,
                  mobile=False)
        out.write_bytes(base64.b64decode(data))
        return out
