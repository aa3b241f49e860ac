"""Headless Chromium driven over the DevTools protocol, for tests of the report page: what the
page logged, which requests it made, which dialogs it opened, values computed in the page,
and a screenshot of the whole page. Needs Debian's `chromium` (`.ci/run` installs it)."""

from __future__ import annotations

import asyncio
import base64
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@dataclass
class PageVisit:
    """What one visit of a page showed."""

    errors: list[str] = field(default_factory=list)  # console errors, exceptions, log errors
    requests: list[str] = field(default_factory=list)  # every URL the page asked for
    dialogs: list[str] = field(default_factory=list)  # alert/confirm/prompt messages
    values: dict[str, Any] = field(default_factory=dict)  # the probes' results
    screenshot: bytes = b""


class _Session:
    def __init__(self, ws: aiohttp.ClientWebSocketResponse, visit: PageVisit) -> None:
        self.ws, self.visit, self.next_id = ws, visit, 0
        self.pending: dict[int, asyncio.Future] = {}
        self.events: dict[str, asyncio.Event] = {}
        self.session: str | None = None

    async def send(self, method: str, **params: Any) -> dict[str, Any]:  # noqa: ANN401
        self.next_id += 1
        message: dict[str, Any] = {"id": self.next_id, "method": method, "params": params}
        if self.session and not method.startswith("Target."):
            message["sessionId"] = self.session
        future = asyncio.get_running_loop().create_future()
        self.pending[self.next_id] = future
        await self.ws.send_json(message)
        return await asyncio.wait_for(future, 60)

    def seen(self, event: str) -> asyncio.Event:
        return self.events.setdefault(event, asyncio.Event())

    async def listen(self) -> None:
        async for msg in self.ws:
            data = msg.json()
            if "id" in data:
                future = self.pending.pop(data["id"], None)
                if future is not None and not future.done():
                    if "error" in data:
                        future.set_exception(RuntimeError(str(data["error"])))
                    else:
                        future.set_result(data.get("result", {}))
                continue
            method, params = data.get("method", ""), data.get("params", {})
            self._record(method, params)
            self.seen(method).set()

    def _record(self, method: str, params: dict[str, Any]) -> None:
        visit = self.visit
        if method == "Runtime.consoleAPICalled" and params["type"] in ("error", "assert"):
            visit.errors.append(" ".join(str(a.get("value", a.get("description", "")))
                                         for a in params["args"]))
        elif method == "Runtime.exceptionThrown":
            visit.errors.append(params["exceptionDetails"].get("text", "exception"))
        elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
            visit.errors.append(params["entry"]["text"])
        elif method == "Network.requestWillBeSent":
            visit.requests.append(params["request"]["url"])
        elif method == "Page.javascriptDialogOpening":
            visit.dialogs.append(params["message"])
            asyncio.ensure_future(self.send("Page.handleJavaScriptDialog", accept=False))


async def _visit(ws_url: str, page: str, probes: dict[str, str], visit: PageVisit) -> None:
    async with aiohttp.ClientSession() as http, http.ws_connect(ws_url, max_msg_size=0) as ws:
        s = _Session(ws, visit)
        listener = asyncio.ensure_future(s.listen())
        target = await s.send("Target.createTarget", url="about:blank")
        attached = await s.send("Target.attachToTarget", targetId=target["targetId"],
                                flatten=True)
        s.session = attached["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            await s.send(f"{domain}.enable")
        loaded = s.seen("Page.loadEventFired")
        await s.send("Page.navigate", url=page)
        await asyncio.wait_for(loaded.wait(), 60)
        await asyncio.sleep(0.5)  # late errors and requests
        for name, expression in probes.items():
            got = await s.send("Runtime.evaluate", expression=expression, returnByValue=True)
            if "exceptionDetails" in got:
                raise AssertionError(f"probe {name} failed: {got['exceptionDetails']}")
            visit.values[name] = got["result"].get("value")
        size = (await s.send("Page.getLayoutMetrics"))["cssContentSize"]  # the whole page
        shot = await s.send("Page.captureScreenshot", format="png", captureBeyondViewport=True,
                            clip={"x": 0, "y": 0, "width": size["width"],
                                  "height": size["height"], "scale": 1})
        visit.screenshot = base64.b64decode(shot["data"])
        listener.cancel()


def visit_page(path: Path, probes: dict[str, str], width: int = 1280) -> PageVisit:
    """Open ``path`` in headless Chromium, evaluate each probe (a JS expression) after load."""
    binary = chromium()
    assert binary, "chromium is not installed: apt-get install -y chromium"
    profile = tempfile.mkdtemp(prefix="cp-chromium-")
    proc = subprocess.Popen(
        [binary, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--remote-debugging-port=0", "--remote-allow-origins=*", f"--user-data-dir={profile}",
         f"--window-size={width},1000", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        ws_url = None
        assert proc.stderr is not None
        for line in proc.stderr:
            found = re.search(r"DevTools listening on (ws://\S+)", line)
            if found:
                ws_url = found.group(1)
                break
        assert ws_url, "chromium did not start its DevTools endpoint"
        visit = PageVisit()
        asyncio.run(_visit(ws_url, path.resolve().as_uri(), probes, visit))
        return visit
    finally:
        proc.kill()
        proc.wait()
        shutil.rmtree(profile, ignore_errors=True)
