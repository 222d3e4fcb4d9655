"""Screenshots of the evidence in the Prefect UI, as a new user sees it, at 1400 px (and 1920 px) in headless Chromium.

    python scripts/ui_snapshots.py [--out ui-snapshots] [--port 0]

Starts `prefect server start` on a free port with a PREFECT_HOME of its own (PREFECT_API_URL and
PREFECT_UI_API_URL point at it), runs the demo twice (the passing example case and the negative case, then
``--fail``: a failing case), reads back the failing run and its artifacts, and saves PNGs of the flow run, its
cases' artifacts, the case report artifact (with the case's last runs) and the case's artifact history. Stops the
server at the end. Needs Debian's ``chromium``. Look at the PNGs: nothing may be cut off at 1400 px.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from flows.local_server import free_port

ROOT = Path(__file__).resolve().parent.parent
CASE_KEY = "case-orders-ingestion"
WIDTHS = (1400, 1920)


def api(base: str, path: str, body: dict[str, Any] | None = None) -> Any:
    request = urllib.request.Request(f"{base}{path}", data=json.dumps(body or {}).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST" if body is not None
                                     else "GET")
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def wait_for(base: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            api(base, "/health")
            return
        except OSError:
            time.sleep(1)
    raise SystemExit(f"the Prefect server at {base} did not answer in {timeout:.0f} s")


def shoot(chromium: str, url: str, out: Path, width: int, height: int = 2000) -> None:
    """A screenshot of a page of the UI (a JS app: given a virtual-time budget to render)."""
    subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    f"--window-size={width},{height}", "--virtual-time-budget=25000", f"--screenshot={out}", url],
                   check=True, capture_output=True, timeout=120)
    print(f"saved {out}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="ui-snapshots", help="folder for the PNGs (default: ui-snapshots)")
    parser.add_argument("--port", type=int, default=0, help="the server's port (default: a free one)")
    args = parser.parse_args(argv)
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        raise SystemExit("chromium is not installed (apt-get install chromium)")
    port = args.port or free_port()
    base = f"http://127.0.0.1:{port}"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    home = tempfile.mkdtemp(prefix="ui-snapshots-")
    env = {**os.environ, "PREFECT_HOME": home, "PREFECT_API_URL": f"{base}/api",
           "PREFECT_UI_API_URL": f"{base}/api", "PREFECT_UI_URL": base, "PREFECT_SERVER_API_PORT": str(port)}
    server = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                               "--port", str(port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        wait_for(f"{base}/api")
        work = Path(home) / "work"
        work.mkdir()
        for extra in ([], ["--fail"]):  # passing and negative cases, then a failing case: a history of three
            done = subprocess.run([sys.executable, "-m", "flows.demo", *extra], cwd=work, env={
                **env, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=600)
            print(f"demo {' '.join(extra) or '(passing)'}: exit {done.returncode}")
        runs = api(f"{base}/api", "/flow_runs/filter", {"sort": "START_TIME_DESC", "limit": 20,
                                                         "flow_runs": {"name": {"like_": "orders-ingestion"}}})
        failing = next((r for r in runs if r["state_type"] == "FAILED"), runs[0] if runs else None)
        if failing is None:
            raise SystemExit("no flow run of the demo case was found")
        run_url = f"{base}/runs/flow-run/{failing['id']}"
        reports = api(f"{base}/api", "/artifacts/filter", {"sort": "CREATED_DESC", "limit": 1, "artifacts": {
            "key": {"any_": [f"{CASE_KEY}-report"]}}})
        for width in WIDTHS:
            shoot(chromium, run_url, out / f"flow-run-{width}.png", width)
            shoot(chromium, f"{base}/artifacts", out / f"artifacts-{width}.png", width)
            if reports:
                shoot(chromium, f"{base}/artifacts/artifact/{reports[0]['id']}", out / f"case-report-{width}.png",
                      width, 3000)
            shoot(chromium, f"{base}/artifacts/key/{CASE_KEY}", out / f"case-history-{width}.png", width)
        steps = api(f"{base}/api", "/artifacts/filter", {"sort": "CREATED_DESC", "limit": 50, "artifacts": {
            "flow_run_id": {"any_": [failing["id"]]}, "type": {"any_": ["markdown"]}}})
        for artifact in steps:
            if "FAILED" in (artifact.get("description") or "") and artifact.get("task_run_id"):
                shoot(chromium, f"{base}/artifacts/artifact/{artifact['id']}", out / "failed-step-1400.png", 1400,
                      3000)
                break
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        shutil.rmtree(home, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
