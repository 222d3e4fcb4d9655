"""The evidence in the Prefect UI as a user sees it at 1400 px, in headless Chromium: screenshots, and a width check.

    python scripts/ui_snapshots.py [--out ui-snapshots] [--port 0] [--check] [--no-shots]

Starts `prefect server start` on a free port with a PREFECT_HOME of its own (PREFECT_API_URL and
PREFECT_UI_API_URL point at it) and runs, against the demo's fake pipeline on the local emulator:
the demo (a passing case and the negative case), the demo with ``--fail`` (a failing Athena check), a failing
content check (the demo's case expecting one row too many), ``recover``, a refused run (another run holds the
case's setting past its ``lock_timeout``: NotRun), and the demo's suite with ``--fail`` (a failing suite).
Then it opens, through Chromium's DevTools protocol (``scripts/cdp.py``), every artifact those runs published,
the failing run's page and its Artifacts tab (the UI resets ``?tab=`` on load: the tab is clicked), and:

- with ``--check``, measures every table of every artifact at 1400 px: a table wider than its box (the UI never
  wraps a table cell, so the last columns, often the verdict, are out of sight) is a finding, named by artifact
  and by the columns cut off; the exit code is 1 when there is any;
- saves PNGs of the pages in ``--out`` (unless ``--no-shots``): look at them; nothing may be cut off at 1400 px.

Stops the server at the end. Needs Debian's ``chromium``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: the project's packages, and scripts/cdp.py beside this file
    sys.path.insert(0, str(ROOT))

from flows.run.local_server import free_port  # noqa: E402
from scripts.cdp import Browser, chromium_path  # noqa: E402

WIDTH = 1400
CASE_KEY = "case-orders-ingestion"

#: the scenarios: a name and the Python code run (in the project folder) against the demo's fake pipeline
_PIPELINE = "from flows.demo import demo_pipeline\nfrom flows.cli import main\n"
SCENARIOS: dict[str, list[str]] = {
    "passing case and negative case": ["-m", "flows.demo"],
    "failing Athena check": ["-m", "flows.demo", "--fail"],
    "failing content check, recover, refused run": ["-c", _PIPELINE + """
import logging, pathlib, shutil, sys, tempfile
from flows.run import locks
case = pathlib.Path("examples/cases/orders_ingestion.yaml").read_text()
folder = pathlib.Path(tempfile.mkdtemp())
shutil.copytree("examples/cases/data", folder / "data")  # the case's local files, beside the variants
(folder / "failing.yaml").write_text(case.replace("row_count: 5", "row_count: 6", 1))
(folder / "refused.yaml").write_text(case.replace("case: Orders ingestion", "case: Orders ingestion, setting held"
                                                  "\\nlock_timeout: 1", 1))
with demo_pipeline():
    print("content check:", main([str(folder / "failing.yaml")]))
    print("recover:", main(["recover"]))
    with locks.hold(["ssm:/demo/orders/source_bucket"], "another-run", timeout=60, logger=logging.getLogger("x")):
        print("refused:", main([str(folder / "refused.yaml")]))
"""],
    "failing suite": ["-m", "flows.demo", "--suite", "--fail"],
}

#: per table of the page: its width, its box's, and the header cells past the box's right edge
MEASURE_JS = """(() => {
  const out = [];
  document.querySelectorAll("table").forEach((table, index) => {
    let box = table.parentElement;
    while (box && box !== document.body && getComputedStyle(box).overflowX === "visible") box = box.parentElement;
    if (!box || box === document.body) box = document.documentElement;
    const right = box.getBoundingClientRect().right;
    const heads = [...table.querySelectorAll("th")];
    out.push({index, width: table.scrollWidth, box: box.clientWidth, over: box.scrollWidth - box.clientWidth,
              columns: heads.map(h => h.innerText.trim()),
              cut: heads.filter(h => h.getBoundingClientRect().right > right + 1).map(h => h.innerText.trim())});
  });
  return out;
})()"""
#: an artifact's page has rendered: its description and its content
RENDERED_JS = ("document.querySelectorAll('.markdown-renderer').length > 1 "
               "|| !!document.querySelector('.p-table')")


@dataclass
class Finding:
    """A table wider than its box on an artifact's page."""

    artifact: str
    url: str
    columns: list[str]
    cut: list[str]
    width: int
    box: int

    def __str__(self) -> str:
        return (f"{self.artifact}: table {self.width} px in a {self.box} px box, cut off: "
                f"{', '.join(self.cut) or '(part of the last column)'} (columns: {', '.join(self.columns)}) {self.url}")


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


def run_scenarios(env: dict[str, str], work: Path) -> dict[str, int]:
    """Every scenario against the server in ``env``; their exit codes."""
    codes = {}
    for name, args in SCENARIOS.items():
        done = subprocess.run([sys.executable, *args], cwd=ROOT, env={**env, "PYTHONPATH": str(ROOT)},
                              capture_output=True, text=True, timeout=900)
        (work / f"{re.sub(r'[^a-z]+', '-', name.lower())}.log").write_text(done.stdout + done.stderr)
        codes[name] = done.returncode
        print(f"{name}: exit {done.returncode}", flush=True)
    return codes


def artifact_name(artifact: dict[str, Any]) -> str:
    return f"{artifact['type']} {artifact.get('key') or ''} {artifact.get('description') or ''}".strip()


def measure(browser: Browser, base: str, artifacts: list[dict[str, Any]]) -> list[Finding]:
    """Every table of every artifact's page, at the browser's width: those wider than their box."""
    findings = []
    for artifact in artifacts:
        if artifact["type"] not in ("markdown", "table"):
            continue
        url = f"{base}/artifacts/artifact/{artifact['id']}"
        browser.open(url, RENDERED_JS, timeout=30)
        browser.wait_for("false", 1.0)  # the content settles (fonts, late tables)
        for table in browser.eval(MEASURE_JS) or []:
            if table["over"] > 0:
                findings.append(Finding(artifact_name(artifact), url, table["columns"], table["cut"], table["width"],
                                        table["box"]))
    return findings


def open_tab(browser: Browser, name: str) -> bool:
    """Click a tab of a run's page by its label (the UI resets ``?tab=`` in the URL on load)."""
    script = ("(() => { const label = [...document.querySelectorAll('body *')].find(e => e.children.length === 0 "
              f"&& e.textContent.trim() === {json.dumps(name)}); if (!label) return false; "
              "(label.closest('[role=tab], button, a, li') || label).click(); return true; })()")
    clicked = bool(browser.wait_for(script, 30))
    browser.wait_for("false", 2.0)
    return clicked


def shoot_pages(browser: Browser, base: str, out: Path, runs: list[dict[str, Any]],
                artifacts: list[dict[str, Any]]) -> None:
    """PNGs: the failing case's run (logs, then its Artifacts tab), its report, its failed step, the suite's
    report, recover's report, and the case's artifact history."""
    failing = next((r for r in runs if r["state_type"] == "FAILED" and "orders-ingestion" in r["name"]),
                   None)
    if failing is not None:
        url = f"{base}/runs/flow-run/{failing['id']}"
        browser.open(url, "document.querySelector('.flow-run, .p-tabs, [role=tab]')", 60)
        browser.wait_for("false", 3.0)
        print(f"saved {browser.screenshot(out / 'flow-run.png')}")
        if open_tab(browser, "Artifacts"):
            print(f"saved {browser.screenshot(out / 'flow-run-artifacts-tab.png')}")
    wanted = {
        "case-report.png": lambda a: a.get("key") == f"{CASE_KEY}-report" and "FAILED" in (a.get("description") or ""),
        "failed-step.png": lambda a: not a.get("key") and (a.get("description") or "").startswith("FAILED · step"),
        "suite-report.png": lambda a: (a.get("key") or "").startswith("suite-") and (a.get("key") or "").endswith(
            "-report"),
        "suite-table.png": lambda a: (a.get("key") or "").startswith("suite-") and a["type"] == "table",
        "recover.png": lambda a: a.get("key") == "pipeline-test-recover",
        "not-run.png": lambda a: (a.get("key") or "").endswith("-not-run"),
    }
    for name, match in wanted.items():
        artifact = next((a for a in artifacts if match(a)), None)
        if artifact is not None:
            browser.open(f"{base}/artifacts/artifact/{artifact['id']}", RENDERED_JS, 30)
            browser.wait_for("false", 1.5)
            print(f"saved {browser.screenshot(out / name)}")
    browser.open(f"{base}/artifacts/key/{CASE_KEY}", "document.querySelector('table, .p-table')", 30)
    browser.wait_for("false", 2.0)
    print(f"saved {browser.screenshot(out / 'case-history.png')}")


#: the pictures in the docs: file name, which artifact, how much of the page's top (px at 1400 px)
DOC_SHOTS = [
    ("ui-failed-step.png", lambda a: not a.get("key") and (a.get("description") or "").startswith(
        "FAILED · step"), 1300),
    ("ui-case-report.png", lambda a: a.get("key") == f"{CASE_KEY}-report" and (a.get("description") or "")
     .startswith("FAILED"), 1300),
    ("ui-suite-report.png", lambda a: (a.get("key") or "").startswith("suite-") and (a.get("key") or "").endswith(
        "-report"), 700),
    ("ui-not-run.png", lambda a: (a.get("key") or "").endswith("-not-run"), 800),
    ("ui-content-check.png", lambda a: not a.get("key") and (a.get("description") or "").startswith(
        "FAILED · step 3 curated-file-written"), 1300),
    ("ui-recover.png", lambda a: a.get("key") == "pipeline-test-recover", 500),
    ("ui-passing-case.png", lambda a: a.get("key") == f"{CASE_KEY}-report" and (a.get("description") or "")
     .startswith("passed"), 1300),
]


def shoot_docs(browser: Browser, base: str, folder: Path, artifacts: list[dict[str, Any]]) -> None:
    """Small PNGs for the docs (``docs/images``): the top of a few artifact pages at 1400 px, scaled down."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, match, height in DOC_SHOTS:
        artifact = next((a for a in artifacts if match(a)), None)
        if artifact is None:
            print(f"no artifact for {name}", file=sys.stderr)
            continue
        browser.open(f"{base}/artifacts/artifact/{artifact['id']}", RENDERED_JS, 30)
        browser.wait_for("false", 1.5)
        print(f"saved {browser.screenshot(folder / name, height=height, scale=0.55)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="ui-snapshots", help="folder for the PNGs (default: ui-snapshots)")
    parser.add_argument("--port", type=int, default=0, help="the server's port (default: a free one)")
    parser.add_argument("--check", action="store_true", help="measure every artifact's tables at 1400 px; exit 1 "
                        "when one is wider than its box")
    parser.add_argument("--no-shots", action="store_true", help="take no screenshots")
    parser.add_argument("--docs", metavar="DIR", help="also save small PNGs (0.55 scale, the page's top) of the "
                        "failed Athena step, the failed and the passing case report, the suite report, a refused "
                        "run, a failed content check and recover's report in DIR (docs/images)")
    args = parser.parse_args(argv)
    if not chromium_path():
        raise SystemExit("chromium is not installed (apt-get install chromium)")
    port = args.port or free_port()
    base = f"http://127.0.0.1:{port}"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    home = Path(tempfile.mkdtemp(prefix="ui-snapshots-"))
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_API_URL": f"{base}/api",
           "PREFECT_UI_API_URL": f"{base}/api", "PREFECT_UI_URL": base, "PREFECT_SERVER_API_PORT": str(port),
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PYTHONUTF8": "1"}
    server = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                               "--port", str(port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    findings: list[Finding] = []
    try:
        wait_for(f"{base}/api")
        codes = run_scenarios(env, out)
        expected = {"passing case and negative case": 0, "failing Athena check": 1,
                    "failing content check, recover, refused run": 0, "failing suite": 1}
        said = (out / "failing-content-check-recover-refused-run.log")
        lines = said.read_text().splitlines() if said.exists() else []
        for what, code in (("content check", 1), ("recover", 0), ("refused", 3)):
            if f"{what}: {code}" not in lines:
                codes[f"{what} (expected exit {code})"] = -1
                expected[f"{what} (expected exit {code})"] = code
        wrong = {name: code for name, code in codes.items() if code != expected[name]}
        if wrong:
            print(f"scenarios that did not end as expected (see their logs in {out}): {wrong}", file=sys.stderr)
        runs = api(f"{base}/api", "/flow_runs/filter", {"sort": "START_TIME_DESC", "limit": 50})
        artifacts = api(f"{base}/api", "/artifacts/filter", {"sort": "CREATED_DESC", "limit": 200})
        with Browser(WIDTH) as browser:
            if args.check:
                findings = measure(browser, base, artifacts)
                checked = sum(a["type"] in ("markdown", "table") for a in artifacts)
                print(f"{checked} artifact(s) measured at {WIDTH} px: {len(findings)} table(s) wider than their box")
                for finding in findings:
                    print(f"  {finding}")
            if not args.no_shots:
                shoot_pages(browser, base, out, runs, artifacts)
            if args.docs:
                shoot_docs(browser, base, Path(args.docs), artifacts)
        if wrong:
            return 2
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        shutil.rmtree(home, ignore_errors=True)
    return 1 if findings else 0


if __name__ == "__main__":
    raise SystemExit(main())
