"""A real headless Chromium (Debian's `chromium`), driven over the DevTools protocol.

Tests open report pages in it and ask what a user would see: what loaded, what the console
said, which requests were made, which elements are visible after clicking a filter. The
browser gets a fresh profile in a temporary directory and the flags that keep it from
talking to anything on its own (no sync, no component updates, no background networking),
so every request it reports was made by the page.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import shutil
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-extensions",
    "--disable-dev-shm-usage",
    "--remote-debugging-port=0",
)


def chromium_binary() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@dataclass
class Page:
    """One tab, attached with a flat session; events are recorded as they arrive."""

    browser: Browser
    session: str
    events: list[dict[str, Any]] = field(default_factory=list)
    _waiters: dict[str, list[asyncio.Future[dict[str, Any]]]] = field(default_factory=dict)

    async def send(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        return await self.browser.send(method, params, session=self.session)

    def _event(self, method: str, params: dict[str, Any]) -> None:
        self.events.append({"method": method, "params": params})
        for fut in self._waiters.pop(method, []):
            if not fut.done():
                fut.set_result(params)

    def wait_for(self, method: str) -> asyncio.Future[dict[str, Any]]:
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(method, []).append(fut)
        return fut

    async def open(self, url: str, timeout: float = 60.0) -> float:
        """Navigate and wait for the load event; returns the seconds it took."""
        loaded = self.wait_for("Page.loadEventFired")
        t0 = time.monotonic()
        result = await self.send("Page.navigate", {"url": url})
        if result.get("errorText"):
            raise AssertionError(f"navigation to {url} failed: {result['errorText']}")
        await asyncio.wait_for(loaded, timeout)
        return time.monotonic() - t0

    async def evaluate(self, expression: str) -> Any:
        result = await self.send(
            "Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True}
        )
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression!r} threw: {json.dumps(result['exceptionDetails'])[:500]}")
        return result["result"].get("value")

    async def screenshot(self, path: Path, full_page: bool = False) -> Path:
        params: dict[str, Any] = {"format": "png"}
        if full_page:
            params["captureBeyondViewport"] = True
        data = await self.send("Page.captureScreenshot", params)
        path.write_bytes(base64.b64decode(data["data"]))
        return path

    def console_errors(self) -> list[str]:
        """Console errors, uncaught exceptions and browser log errors (CSP violations land here)."""
        out = []
        for ev in self.events:
            p = ev["params"]
            if ev["method"] == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                out.append(" ".join(str(a.get("value", a.get("description"))) for a in p.get("args", [])))
            elif ev["method"] == "Runtime.exceptionThrown":
                out.append(json.dumps(p.get("exceptionDetails"))[:500])
            elif ev["method"] == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
                out.append(p["entry"].get("text", ""))
        return out

    def requests(self) -> list[str]:
        """URLs the page asked for (a request the browser then refused is listed too: see `blocked`)."""
        return [ev["params"]["request"]["url"] for ev in self.events if ev["method"] == "Network.requestWillBeSent"]

    def blocked(self) -> dict[str, str]:
        """URL -> why the browser refused to send it (`csp`, ...)."""
        urls = {
            ev["params"]["requestId"]: ev["params"]["request"]["url"]
            for ev in self.events
            if ev["method"] == "Network.requestWillBeSent"
        }
        return {
            urls.get(ev["params"]["requestId"], "?"): ev["params"].get("blockedReason", "")
            for ev in self.events
            if ev["method"] == "Network.loadingFailed" and ev["params"].get("blockedReason")
        }


class Browser:
    """The browser process and its DevTools websocket."""

    def __init__(
        self, proc: asyncio.subprocess.Process, ws: aiohttp.ClientWebSocketResponse, http: aiohttp.ClientSession
    ) -> None:
        self.proc = proc
        self.ws = ws
        self.http = http
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.pages: dict[str, Page] = {}
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for msg in self.ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            data = json.loads(msg.data)
            if "id" in data:
                fut = self._pending.pop(data["id"], None)
                if fut is not None and not fut.done():
                    if "error" in data:
                        fut.set_exception(AssertionError(f"DevTools error: {data['error']}"))
                    else:
                        fut.set_result(data.get("result", {}))
            elif "method" in data:
                page = self.pages.get(data.get("sessionId", ""))
                if page is not None:
                    page._event(data["method"], data.get("params", {}))
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(AssertionError("the browser closed its DevTools connection"))

    async def send(
        self, method: str, params: dict[str, Any] | None = None, session: str | None = None
    ) -> dict[str, Any]:
        msg_id = next(self._ids)
        msg: dict[str, Any] = {"id": msg_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[msg_id] = fut
        await self.ws.send_str(json.dumps(msg))
        return await asyncio.wait_for(fut, 60)

    async def new_page(self, width: int = 1280, height: int = 900) -> Page:
        target = await self.send("Target.createTarget", {"url": "about:blank"})
        attached = await self.send("Target.attachToTarget", {"targetId": target["targetId"], "flatten": True})
        page = Page(self, attached["sessionId"])
        self.pages[page.session] = page
        for domain in ("Page", "Runtime", "Log", "Network"):
            await page.send(f"{domain}.enable")
        await page.send(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
        )
        return page


@asynccontextmanager
async def chromium(profile: Path) -> AsyncIterator[Browser]:
    """Start headless Chromium with a fresh profile under `profile`; stop it on exit."""
    binary = chromium_binary()
    assert binary, "chromium is not installed (scripts/test installs Debian's chromium)"
    shutil.rmtree(profile, ignore_errors=True)  # fresh: no state, no stale DevToolsActivePort
    profile.mkdir(parents=True)
    proc = await asyncio.create_subprocess_exec(
        binary,
        *FLAGS,
        f"--user-data-dir={profile}",
        "about:blank",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    http = aiohttp.ClientSession()
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not (port_file.exists() and len(port_file.read_text().splitlines()) >= 2):
            if proc.returncode is not None or time.monotonic() > deadline:
                raise AssertionError(f"chromium did not start (exit {proc.returncode})")
            await asyncio.sleep(0.05)
        port, path = port_file.read_text().splitlines()[:2]
        ws = await http.ws_connect(f"ws://127.0.0.1:{port}{path}", max_msg_size=256 << 20)
        browser = Browser(proc, ws, http)
        try:
            yield browser
        finally:
            await ws.close()
            browser._reader.cancel()
    finally:
        await http.close()
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()
