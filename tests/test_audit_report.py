"""The compliance report: self-contained HTML (parsed and checked) and its JSON."""
from __future__ import annotations

import json
from html.parser import HTMLParser

import pytest

import heliosdb
import heliosdb.config
from heliosdb.audit.events import EventFields
from heliosdb.audit.query import to_us
from helpers.audit_log import stamp

SAT = to_us("2031-03-08T11:00:00Z")


class Page(HTMLParser):
    """Collects tags, attributes, ids and the text of each element id."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []
        self.ids: dict[str, list[str]] = {}
        self._stack: list[str] = []
        self.errors: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append((tag, a))
        if tag not in ("meta", "line", "rect", "br", "img", "input", "link"):
            self._stack.append(a.get("id") or "")

    def handle_startendtag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_endtag(self, tag):
        if tag not in ("meta", "line", "rect", "br", "img", "input", "link"):
            if not self._stack:
                self.errors.append(f"unbalanced </{tag}>")
            else:
                self._stack.pop()

    def handle_data(self, data):
        self.text.append(data)
        for i in self._stack:
            if i:
                self.ids.setdefault(i, []).append(data)

    def section(self, id_):
        return " ".join(self.ids.get(id_, []))


def parse(path) -> Page:
    p = Page()
    p.feed(open(path, encoding="utf-8").read())
    p.close()
    return p


@pytest.fixture
def conn(db_path):
    cfg = heliosdb.config.load_config({"extends": "verbose",
                                       "audit": {"sensitive_tables": ["patients"]}})
    c = heliosdb.connect(db_path, config=cfg, audit_user="alice",
                         audit_context={"client_ip": "192.0.2.1"})
    c.execute("CREATE TABLE patients(id INTEGER PRIMARY KEY, name TEXT)")
    c.executemany("INSERT INTO patients(name) VALUES (?)", [("<script>x</script>",), ("b",)])
    c.commit()
    c.execute("SELECT * FROM patients").fetchall()
    c.execute("DELETE FROM patients")
    c.commit()
    with pytest.raises(heliosdb.OperationalError):
        c.execute("SELECT * FROM nosuch")
    stamp(c, [EventFields("DROP_TABLE", target="old", user="bob", query="DROP TABLE old")], SAT)
    yield c
    c.close()


def test_report_html_and_json(conn, tmp_path):
    out = tmp_path / "report.html"
    data = conn.audit.report(out, preset="hipaa")
    assert data["html_path"] == str(out)
    assert data["json_path"] == str(tmp_path / "report.json")
    page = parse(out)
    assert not page.errors
    tags = [t for t, _a in page.tags]
    # self-contained: no script, no external resource
    assert "script" not in tags
    for _t, a in page.tags:
        for k in ("src", "href"):
            assert k not in a or a[k].startswith("#"), a
    html_text = out.read_text()
    assert "http://" not in html_text.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "https://" not in html_text
    # the chart: an inline SVG with one bar group per bucket
    svgs = [a for t, a in page.tags if t == "svg"]
    assert svgs and svgs[0]["id"] == "activity-chart"
    bars = [a for t, a in page.tags if t == "g" and a.get("class") == "bar"]
    assert len(bars) == len(data["activity"]["buckets"]) >= 2
    assert sum(b["events"] for b in data["activity"]["buckets"]) == data["summary"]["events"]
    # user data is escaped, never markup
    assert "<script>x</script>" not in html_text
    # sections: verification, coverage, findings, preset, encryption, retention, config
    assert "yes" in page.section("verification")
    cov = page.section("coverage-table")
    for op in ("CREATE_TABLE", "INSERT", "SELECT", "DELETE", "DROP_TABLE", "LOGIN"):
        assert op in cov
    fnd = page.section("findings-table")
    assert "unbounded_write" in fnd and "drop_table" in fnd and "sensitive_read" in fnd
    drop_id = conn.audit.query().operation("DROP_TABLE").first().id
    assert str(drop_id) in fnd
    assert "audit.retention_days" in page.section("preset-table")
    assert "encryption_enabled" in page.section("encryption")
    assert "__audit_log" in " ".join(page.text)
    # JSON next to it, the same data
    j = json.loads((tmp_path / "report.json").read_text())
    assert j["verification"]["ok"] is True
    assert j["preset"] == "hipaa"
    ops = {c["operation"]: c for c in j["coverage"]}
    assert ops["DELETE"]["events"] == 1 and ops["SELECT"]["failed"] == 1
    assert j["encryption"]["encryption_enabled"] is False
    gaps = {c["key"] for c in j["preset_check"] if not c["ok"]}
    # verbose keeps 365 days, hipaa wants 2555 and encryption
    assert "audit.retention_days" in gaps and "encryption (at rest)" in gaps
    assert j["summary"]["preset_gaps"] == len(gaps)
    assert j["checkpoint"]["taken"] == 0
    assert {f["kind"] for f in j["findings"]} >= {"drop_table", "unbounded_write"}
    assert j["config"]["audit"]["sensitive_tables"] == ["patients"]
    # the report is recorded
    ev = conn.audit.query().operation("EXPORT").order("desc").first()
    assert json.loads(ev.metadata)["details"]["kind"] == "compliance_report"


def test_report_with_checkpoint_and_tampering(conn, tmp_path):
    key = b"r" * 32
    cp = conn.audit.checkpoint(key, tmp_path / "cp.txt")
    d = conn.audit.report(tmp_path / "ok.html", checkpoint=tmp_path / "cp.txt", hmac_key=key)
    assert d["verification"]["ok"] and d["verification"]["with_checkpoint"]
    assert d["checkpoint"]["event_id"] == cp.event_id and d["checkpoint"]["verified"]
    with conn.audit._internal():
        conn.audit._db.execute("UPDATE __audit_log SET user = 'x' WHERE id = 2")
    d = conn.audit.report(tmp_path / "bad.html", record=False)
    assert not d["verification"]["ok"] and d["verification"]["first_bad_id"] == 2
    page = parse(tmp_path / "bad.html")
    assert "modified" in page.section("verification")
    assert "NO" in page.section("summary")


def test_report_default_preset_path_and_period(conn, db_path, tmp_path):
    d = conn.audit.report(record=False)  # a custom config: no preset check
    assert d["html_path"].startswith(db_path) and d["html_path"].endswith(".html")
    assert d["preset_check"] == [] or d["preset"] is not None
    d2 = conn.audit.report(tmp_path / "p.html", since=SAT, record=False)
    assert d2["summary"]["events"] == 1
    assert [f["kind"] for f in d2["findings"] if f["kind"] != "after_hours"] == ["drop_table"]


def test_report_of_a_preset_config(tmp_path, raw_key):
    try:
        c = heliosdb.connect(str(tmp_path / "h.db"), config="soc2", audit_user="u",
                             key=raw_key)
    except heliosdb.errors.EncryptionUnavailableError as exc:  # HELIOSDB_PURE=1, no C VFS
        pytest.skip(str(exc))
    c.execute("CREATE TABLE t(x)")
    d = c.audit.report(tmp_path / "soc2.html")
    assert d["preset"] == "soc2"
    assert all(x["ok"] for x in d["preset_check"]), d["preset_check"]
    assert d["encryption"]["encryption_enabled"] is True and d["summary"]["encrypted"]
    c.close()


def test_report_refuses_inside_a_transaction(conn, tmp_path):
    conn.execute("INSERT INTO patients(name) VALUES ('z')")
    with pytest.raises(heliosdb.ProgrammingError):
        conn.audit.report(tmp_path / "x.html")
    conn.rollback()
