"""Issue 19: the compliance report (``heliosdb report``) as a person sees it, rendered by a
real browser: headless Chromium (Debian's ``chromium``; installed here with apt-get when
missing and this runs as root, else the test is skipped saying why).

The check runs in the page: a copy of the report gets a script that measures the laid
out page and writes the result into it, read back with ``--dump-dom``. Checked: the
chart is there and has a size; nothing overflows the page; bars stand at their time
(a three-day gap is a gap: the x distance between bars is proportional to the time
between them); the axis labels differ and do not overlap; timestamps in tables do not
wrap; the legend names both colours; the findings card says which number is what. A
screenshot is saved under the test's tmp dir.
"""
from __future__ import annotations

import html
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

import heliosdb
import heliosdb.config
from helpers.cli import run_cli

DAY_US = 86_400 * 1_000_000
HOUR_US = 3_600 * 1_000_000


def _chromium() -> str:
    """The chromium binary, installing Debian's package when missing (root only)."""
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    if not shutil.which("apt-get"):
        pytest.skip("chromium is not installed and there is no apt-get to install it "
                    "(install Debian's 'chromium' package to run this check)")
    if hasattr(os, "geteuid") and os.geteuid() != 0:
        pytest.skip("chromium is not installed, and installing it needs root: "
                    "sudo apt-get install chromium")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    proc = subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", "chromium"],
                          capture_output=True, text=True, env=env, timeout=1200)
    path = shutil.which("chromium")
    if proc.returncode != 0 or not path:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        pytest.skip("chromium could not be installed with apt-get install chromium: "
                    + " / ".join(tail))
    return path


@pytest.fixture(scope="module")
def chromium():
    return _chromium()


def _browser(chromium: str, tmp: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         "--no-first-run", "--disable-extensions", f"--user-data-dir={tmp / 'profile'}",
         "--window-size=1280,900", *args],
        capture_output=True, text=True, timeout=180, cwd=str(tmp))


@pytest.fixture
def report(tmp_path):
    """A report of a log with activity on days 0, 1 and 5 (nothing on days 2 to 4), some
    failures and findings, written by ``heliosdb report``."""
    from heliosdb.audit import store
    from heliosdb.audit.events import EventFields

    path = tmp_path / "clinic.db"
    cfg = heliosdb.config.load_config({"extends": "default", "audit": {"log_auth": False}})
    conn = heliosdb.connect(str(path), config=cfg, audit_user="alice", isolation_level=None)
    start = (int(time.time() * 1e6) // DAY_US - 6) * DAY_US
    s = conn.audit
    with s._internal():
        for day, hours in ((0, (9, 10, 11)), (1, (9, 14)), (5, (8, 9, 23))):
            for h in hours:
                evs = [EventFields("INSERT", target="patients", user="alice",
                                   affected_rows=1)] * 3
                evs += [EventFields("SELECT", target="patients", user="mallory", success=0,
                                    error="denied")] * (2 if day == 5 else 0)
                store.append(s._db, s.table, evs, now_us=start + day * DAY_US + h * HOUR_US)
    conn.close()
    out = tmp_path / "report.html"
    proc = run_cli(["report", "clinic.db", "--out", "report.html"], cwd=tmp_path)
    assert proc.returncode in (0, 1), proc.stderr
    return out


_PROBE = r"""
<script>
(function () {
  const r = {};
  const chart = document.getElementById('activity-chart');
  r.chart = !!chart;
  const cb = chart ? chart.getBoundingClientRect() : null;
  r.chart_size = cb ? [cb.width, cb.height] : null;
  const body = document.body.getBoundingClientRect();
  r.page_overflow = document.documentElement.scrollWidth - window.innerWidth;
  r.overflowing = [];
  for (const el of document.body.querySelectorAll('*')) {
    const b = el.getBoundingClientRect();
    if (b.width && (b.right > body.right + 1 || b.left < body.left - 1))
      r.overflowing.push(el.tagName + '#' + el.id + '.' + el.className.baseVal
                         + el.className + ' ' + Math.round(b.left) + '..' + Math.round(b.right));
    if (el.scrollWidth > el.clientWidth + 1 && getComputedStyle(el).overflowX === 'visible'
        && el.clientWidth > 0 && !(el instanceof SVGElement))
      r.overflowing.push('content of ' + el.tagName + '#' + el.id);
  }
  r.bars = [...document.querySelectorAll('#activity-chart g.bar')].map(g => {
    const rect = g.querySelector('rect').getBoundingClientRect();
    return [Date.parse(g.dataset.start), rect.left, rect.width];
  });
  r.ticks = [...document.querySelectorAll('#activity-chart text.tick')].map(t => {
    const b = t.getBoundingClientRect();
    return [t.textContent, b.left, b.right];
  });
  r.legend = document.getElementById('chart-legend')
    ? document.getElementById('chart-legend').textContent : null;
  r.wrapped = [];
  for (const td of document.querySelectorAll('td.ts')) {
    const range = document.createRange();
    range.selectNodeContents(td);
    const lines = new Set([...range.getClientRects()].map(q => Math.round(q.top)));
    if (lines.size > 1) r.wrapped.push(td.textContent);
  }
  r.cards = [...document.querySelectorAll('#summary .card')].map(c => c.innerText);
  const pre = document.createElement('pre');
  pre.id = 'layout-result';
  pre.textContent = JSON.stringify(r);
  document.body.appendChild(pre);
})();
</script>
"""


def test_report_renders_in_chromium(chromium, report, tmp_path):
    # A screenshot of the report itself, kept with the test's files.
    shot = tmp_path / "report.png"
    proc = _browser(chromium, tmp_path, f"--screenshot={shot}", "--window-size=1280,2400",
                    report.as_uri())
    assert shot.exists() and shot.stat().st_size > 10_000, proc.stderr[-2000:]

    probe = tmp_path / "report-probe.html"
    probe.write_text(report.read_text().replace("</body>", _PROBE + "</body>"))
    proc = _browser(chromium, tmp_path, "--dump-dom", "--virtual-time-budget=3000",
                    probe.as_uri())
    start = proc.stdout.find('<pre id="layout-result">')
    assert start >= 0, proc.stderr[-2000:]
    raw = proc.stdout[start:].split(">", 1)[1].split("</pre>", 1)[0]
    r = json.loads(html.unescape(raw))

    assert r["chart"] and r["chart_size"][0] > 300 and r["chart_size"][1] > 100, r
    assert r["page_overflow"] <= 0, r
    assert r["overflowing"] == [], r["overflowing"]
    assert r["wrapped"] == [], r["wrapped"]
    # Bars at their time: x per millisecond is the same between any two bars, so the
    # empty days 2-4 are as wide as three days of bars would be.
    bars = sorted(r["bars"])
    data = json.loads((tmp_path / "report.json").read_text())["activity"]
    assert len(bars) == len(data["buckets"]) >= 4  # one bar per bucket with events
    (t0, x0, _), (t1, x1, _) = bars[0], bars[-1]
    scale = (x1 - x0) / (t1 - t0)
    for t, x, _w in bars:
        assert abs((x - x0) - (t - t0) * scale) < 2.0, (t, x, bars)
    gap = [b for a, b in zip(bars, bars[1:]) if b[0] - a[0] > 3 * DAY_US / 1000]
    assert len(gap) == 1  # the only long stretch: day 1 to day 5
    # Axis labels: distinct, readable (no overlap), inside the chart.
    labels = [t[0] for t in r["ticks"]]
    assert len(labels) >= 2 and len(set(labels)) == len(labels), labels
    for (_, _l1, r1), (_, l2, _r2) in zip(r["ticks"], r["ticks"][1:]):
        assert r1 < l2, r["ticks"]
    assert "succeeded" in r["legend"] and "failed or denied" in r["legend"]
    findings = [c for c in r["cards"] if c.startswith("Findings")]
    assert findings and "high" in findings[0].splitlines()[-1], r["cards"]


def test_one_bucket_has_two_different_axis_labels():
    from heliosdb.audit.reports import _svg_chart

    svg = _svg_chart({"bucket": "hour", "bucket_seconds": 3600,
                      "buckets": [{"start": "2026-03-01T10:00:00Z", "events": 4,
                                   "failed": 1}]})
    import re

    labels = re.findall(r'class="tick"[^>]*>([^<]+)<', svg)
    assert labels == ["2026-03-01 10:00", "2026-03-01 11:00"]
    assert 'id="chart-legend"' in svg
