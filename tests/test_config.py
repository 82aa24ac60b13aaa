"""Tests of heliosdb.config: presets, files, dicts, errors with key/file/line, docs tables."""
from __future__ import annotations

import dataclasses
import datetime as dt
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import heliosdb
from heliosdb import config as hc
from heliosdb.config import (
    AfterHours, AuditConfig, CaptureMetadata, Config, DatabaseConfig, EncryptionConfig,
    KeySource, category_of, find_key_line, load_config, preset_names, preset_path,
)
from heliosdb.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

REPO = Path(__file__).resolve().parent.parent
ALL_PRESETS = ["minimal", "default", "verbose", "compliance", "soc2", "hipaa", "gdpr",
               "pci-dss", "fda-part11"]


def write(tmp_path: Path, text: str, name: str = "app.toml") -> Path:
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def error_of(spec) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_config(spec)
    return info.value


# --------------------------------------------------------------------------------------------
# plain config and presets
# --------------------------------------------------------------------------------------------


def test_none_and_empty_dict_give_the_plain_config():
    plain = load_config(None)
    assert plain == Config() == load_config({}).replace(name="plain")
    assert plain.audit.enabled is False and plain.encryption.enabled is False
    assert plain.source is None and plain.name == "plain"
    assert load_config(plain) is plain


def test_config_error_is_a_heliosdb_error_and_a_value_error():
    e = error_of({"audit": {"enabled": 1}})
    assert isinstance(e, heliosdb.Error) and isinstance(e, ValueError)
    assert heliosdb.ConfigError is ConfigError


def test_all_presets_are_shipped():
    assert sorted(ALL_PRESETS) == preset_names()
    assert hc.presets_dir().samefile(REPO / "configs")


@pytest.mark.parametrize("name", ALL_PRESETS)
def test_every_preset_loads_with_a_header_comment(name):
    cfg = load_config(name)
    assert cfg.name == name
    assert cfg.audit.enabled
    assert Path(cfg.source) == preset_path(name)
    assert cfg.description
    text = preset_path(name).read_text()
    assert text.startswith(f"# HeliosDB preset: {name}\n")
    # Presets round-trip through to_toml() like any config.
    assert load_config(tomllib.loads(cfg.to_toml())) == cfg.replace()


# DESIGN.md section 4's table: DDL, DML, SELECT, transactions, auth, retention, checksums
# (False / True / "mandatory").
DESIGN_TABLE = {
    "minimal": (1, 0, 0, 0, 0, 30, False),
    "default": (1, 1, 0, 0, 1, 90, True),
    "verbose": (1, 1, 1, 1, 1, 365, True),
    "compliance": (1, 1, 0, 1, 1, 2555, "mandatory"),
    "soc2": (1, 1, 0, 0, 1, 90, True),
    "hipaa": (1, 1, 1, 1, 1, 2555, "mandatory"),
    "gdpr": (1, 1, 1, 1, 1, 1095, True),
}


@pytest.mark.parametrize("name", sorted(DESIGN_TABLE))
def test_presets_follow_the_design_table(name):
    ddl, dml, sel, tx, auth, days, checks = DESIGN_TABLE[name]
    a = load_config(name).audit
    assert (a.log_ddl, a.log_dml, a.log_select, a.log_transactions, a.log_auth) == tuple(
        map(bool, (ddl, dml, sel, tx, auth)))
    assert a.retention_days == days
    assert a.enable_checksums == bool(checks)
    assert a.checksums_mandatory == (checks == "mandatory")


def test_compliance_preset_specifics():
    soc2 = load_config("soc2").audit
    assert dict(soc2.retention_overrides) == {"DDL": 365, "SECURITY": 730}
    assert soc2.retention_for("CREATE_TABLE") == 365
    assert soc2.retention_for("LOGIN") == 730
    assert soc2.retention_for("insert") == 90
    assert soc2.retention_for("INSERT", failed=True) == 730
    assert soc2.active_days_for("CREATE_TABLE") == 90      # the 90 + 275 split

    hipaa = load_config("hipaa")
    a, m = hipaa.audit, hipaa.audit.capture_metadata
    assert a.log_select and a.capture_row_values and a.checksums_mandatory
    assert m.client_ip and m.application_name and m.execution_time
    assert (a.retention_days, a.active_days, a.archive_days) == (2555, 365, 2190)
    assert hipaa.encryption.enabled and hipaa.encryption.key_source is None

    gdpr = load_config("gdpr").audit
    assert gdpr.retention_days == 1095 and gdpr.active_days == 180
    assert gdpr.capture_metadata.client_ip and gdpr.capture_metadata.custom_fields
    assert gdpr.capture_metadata.custom_field_names == ("legal_basis", "purpose")

    pci = load_config("pci-dss").audit
    assert pci.log_select and pci.log_dml and pci.log_ddl and pci.log_auth
    assert (pci.retention_days, pci.active_days) == (365, 90)  # PCI DSS 10.5.1 / 10.7
    assert pci.checksums_mandatory

    fda = load_config("fda-part11").audit
    assert fda.capture_row_values and fda.require_reason and fda.checksums_mandatory


@pytest.mark.parametrize("spelling", ["HIPAA", "Hipaa", " hipaa "])
def test_preset_names_are_case_insensitive(spelling):
    assert load_config(spelling).name == "hipaa"


def test_pci_dss_underscore_spelling():
    assert load_config("pci_dss").name == "pci-dss"


def test_unknown_preset_suggests_the_closest():
    e = error_of("hipa")
    assert "did you mean preset 'hipaa'" in str(e)
    with pytest.raises(ConfigError, match="did you mean 'soc2'"):
        preset_path("soc3")


# --------------------------------------------------------------------------------------------
# files
# --------------------------------------------------------------------------------------------


def test_file_by_str_and_by_path(tmp_path):
    p = write(tmp_path, """
name = "mine"
[audit]
enabled = true
retention_days = 10
[database]
enable_wal = true
""")
    for spec in (str(p), p):
        cfg = load_config(spec)
        assert cfg.name == "mine" and cfg.source == str(p)
        assert cfg.audit.retention_days == 10 and cfg.database.enable_wal is True


def test_file_name_defaults_to_stem(tmp_path):
    assert load_config(write(tmp_path, "", "ops.toml")).name == "ops"


def test_missing_file(tmp_path):
    e = error_of(str(tmp_path / "nope.toml"))
    assert "config file not found" in str(e) and e.file.endswith("nope.toml")


def test_relative_key_file_resolves_against_the_config_file(tmp_path):
    p = write(tmp_path, '[encryption]\nenabled = true\nkey_source = { file = "db.key" }\n')
    ks = load_config(p).encryption.key_source
    assert ks == KeySource("file", str(tmp_path / "db.key"))
    # A dict has no directory: its relative path stays as given.
    cfg = load_config({"encryption": {"key_source": {"file": "db.key"}}})
    assert cfg.encryption.key_source == KeySource("file", "db.key")


@pytest.mark.parametrize("toml_ks, expected", [
    ('{ env = "HELIOS_KEY" }', KeySource("env", "HELIOS_KEY")),
    ('{ passphrase_env = "PASS" }', KeySource("passphrase_env", "PASS")),
    ('{ file = "/secure/db.key" }', KeySource("file", "/secure/db.key")),
])
def test_key_sources(tmp_path, toml_ks, expected):
    p = write(tmp_path, f"[encryption]\nenabled = true\nkey_source = {toml_ks}\n")
    assert load_config(p).encryption.key_source == expected


def test_design_sample_loads(tmp_path):
    """The sample of DESIGN.md section 4, verbatim, with the product's [database] section."""
    p = write(tmp_path, """
[database]
path = "/var/lib/app.db"
memory_limit_mb = 64
enable_wal = true
page_size = 4096

[audit]
enabled = true
log_ddl = true
log_dml = true
log_select = false
log_transactions = false
log_auth = true
retention_days = 90
async_buffer_size = 100      # SELECT events buffered, flushed at commit/close/full
enable_checksums = true
max_query_length = 10000

[audit.capture_metadata]
capture_client_ip = true
capture_application_name = true
capture_database_name = true
capture_execution_time = true
capture_custom_fields = false

[encryption]
enabled = true
algorithm = "aes-256-gcm"
key_source = { file = "/secure/db.key" }   # or { env = "VAR" }, { passphrase_env = "VAR" }
rotation_interval_days = 90
""")
    cfg = load_config(p)
    assert cfg.audit.capture_metadata == CaptureMetadata(True, True, True, True, False)
    assert cfg.encryption.key_source == KeySource("file", "/secure/db.key")
    assert cfg.database.pragmas() == [("page_size", 4096), ("journal_mode", "WAL"),
                                      ("cache_size", -65536)]
    assert cfg.database.ignored("/tmp/other.db") == ["database.path"]
    assert cfg.database.ignored(":memory:") == ["database.path", "database.enable_wal"]


# --------------------------------------------------------------------------------------------
# errors: unknown keys, bad values, syntax
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text, key, line, suggestion", [
    ('nmae = "x"\n', "nmae", 1, "did you mean name?"),
    ("# c\n[audit]\nenabled = true\nretention_dayz = 5\n", "audit.retention_dayz", 4,
     "did you mean audit.retention_days?"),
    ("[audit]\n[audit.capture_metadata]\n\nclient_ipp = true\n",
     "audit.capture_metadata.client_ipp", 4, "did you mean audit.capture_metadata.client_ip?"),
    ("[audit.after_hours]\nstrat = \"19:00\"\n", "audit.after_hours.strat", 2,
     "did you mean audit.after_hours.start?"),
    ("[encryption]\nenabled = true\nkey_source = { file = \"k\", envv = \"X\" }\n",
     "encryption.key_source.envv", 3, "did you mean env?"),
    ("[audit.retention_overrides]\nDDL = 1\nDLL = 3\n", "audit.retention_overrides.DLL", 3,
     "did you mean DML?"),
    ("audit.log_selct = true\n", "audit.log_selct", 1, "did you mean audit.log_select?"),
    ("[audti]\nenabled = true\n", "audti", 1, "did you mean audit?"),
    ("[encryption]\nretention_days = 3\n", "encryption.retention_days", 2,
     "did you mean audit.retention_days (it belongs in [audit])?"),
])
def test_unknown_keys_name_key_file_line_and_suggest(tmp_path, text, key, line, suggestion):
    p = write(tmp_path, text)
    e = error_of(p)
    assert (e.key, e.file, e.line) == (key, str(p), line)
    assert str(e).startswith(f"{p}:{line}: {key}: ")
    assert suggestion in str(e)


@pytest.mark.parametrize("text, key, fragment", [
    ("[audit]\nretention_days = -3\n", "audit.retention_days",
     "expected a positive integer, got -3"),
    ('[audit]\nretention_days = "90"\n', "audit.retention_days", 'got "90" (string)'),
    ("[audit]\nretention_days = 1.5\n", "audit.retention_days", "got 1.5 (float)"),
    ("[audit]\nretention_days = true\n", "audit.retention_days", "got true (boolean)"),
    ("[audit]\nretention_days = 99999\n", "audit.retention_days", "expected at most 36500"),
    ("[audit]\nenabled = 1\n", "audit.enabled", "expected true or false, got 1 (integer)"),
    ('[audit]\nlog_select = "yes"\n', "audit.log_select", "expected true or false"),
    ("[audit]\nasync_buffer_size = -1\n", "audit.async_buffer_size", "non-negative"),
    ("[audit]\nmax_query_length = 0\n", "audit.max_query_length", "positive"),
    ('[audit]\ntable_name = "x; DROP TABLE t"\n', "audit.table_name", "plain SQL identifier"),
    ('[audit]\ntable_name = "select"\n', "audit.table_name", "SQL keyword"),
    ('[audit]\ntable_name = "sqlite_log"\n', "audit.table_name", "reserved"),
    ('[audit]\ntable_name = "9log"\n', "audit.table_name", "plain SQL identifier"),
    ('[audit]\nsensitive_tables = "patients"\n', "audit.sensitive_tables", "array"),
    ('[audit]\nsensitive_tables = ["a", 3]\n', "audit.sensitive_tables", "item 1"),
    ("[audit]\nretention_days = 30\narchive_days = 30\n", "audit.archive_days",
     "less than audit.retention_days (30)"),
    ("[audit.retention_overrides]\nDDL = 0\n", "audit.retention_overrides.DDL", "positive"),
    ("[audit.retention_overrides]\nddl = 5\nDDL = 6\n", "audit.retention_overrides.DDL",
     "given twice"),
    ('[audit.after_hours]\nstart = "25:00"\n', "audit.after_hours.start", "HH:MM"),
    ('[audit.after_hours]\ntimezone = "Mars/Olympus"\n', "audit.after_hours.timezone",
     "IANA time zone"),
    ("[audit.capture_metadata]\nclient_ip = true\ncapture_client_ip = true\n",
     "audit.capture_metadata.capture_client_ip", "given twice"),
    ('[audit.capture_metadata]\ncustom_field_names = ["purpose"]\n',
     "audit.capture_metadata.custom_field_names", "custom_fields is false"),
    ("[audit]\nenable_checksums = false\nchecksums_mandatory = true\n",
     "audit.enable_checksums", "checksums_mandatory is true"),
    ('[encryption]\nalgorithm = "aes-256-gmc"\n', "encryption.algorithm",
     "did you mean 'aes-256-gcm'"),
    ('[encryption]\nkdf_profile = "fast"\n', "encryption.kdf_profile", "expected one of"),
    ("[encryption]\nnonce_warning_fraction = 1.5\n", "encryption.nonce_warning_fraction",
     "(0, 1]"),
    ('[encryption]\nkey_source = "/k"\n', "encryption.key_source", "expected a table"),
    ('[encryption]\nkey_source = { env = "A B" }\n', "encryption.key_source.env",
     "environment variable name"),
    ('[encryption]\nkey_source = { env = "A", file = "f" }\n', "encryption.key_source",
     "exactly one"),
    ("[database]\npage_size = 1000\n", "database.page_size", "power of two"),
    ("[database]\npage_size = 131072\n", "database.page_size", "at most 65536"),
    ("[database]\nmemory_limit_mb = 0\n", "database.memory_limit_mb", "positive"),
    ("audit = 3\n", "audit", "expected a table [audit]"),
    ("name = 3\n", "name", "expected a string"),
])
def test_bad_values_name_key_file_line(tmp_path, text, key, fragment):
    p = write(tmp_path, text)
    e = error_of(p)
    assert e.key == key and e.file == str(p)
    assert e.line == find_key_line(text, key) and e.line is not None
    assert fragment in str(e)
    assert str(e).startswith(f"{p}:{e.line}: {key}: ")


@pytest.mark.parametrize("text, line", [
    ("[audit]\nenabled = \n", 2),
    ("[audit]\nenabled = true\nenabled = false\n", 3),
    ('a = 1\nb = "unterminated\n', 2),
    ("[audit\n", 1),
])
def test_toml_syntax_errors_name_file_and_line(tmp_path, text, line):
    p = write(tmp_path, text)
    e = error_of(p)
    assert e.file == str(p) and e.line == line and e.key is None
    assert str(e).startswith(f"{p}:{line}: TOML syntax error: ")
    assert isinstance(e.__cause__, tomllib.TOMLDecodeError)


def test_dict_errors_say_dict_and_no_line():
    e = error_of({"audit": {"retention_days": -3}})
    assert (e.key, e.file, e.line) == ("audit.retention_days", "<dict>", None)
    assert str(e) == "<dict>: audit.retention_days: expected a positive integer, got -3"
    e = error_of({"audit": {"capture_metadata": {"client_ipx": True}}})
    assert e.key == "audit.capture_metadata.client_ipx" and "client_ip?" in str(e)
    e = error_of({"bogus": 1})
    assert e.key == "bogus"


def test_bad_spec_type():
    with pytest.raises(ConfigError, match="expected None, a preset name"):
        load_config(42)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# dicts, aliases, frozen, mandatory checksums, extends, replace
# --------------------------------------------------------------------------------------------


def test_dict_config_and_both_capture_spellings():
    a = load_config({"audit": {"enabled": True,
                               "capture_metadata": {"capture_client_ip": False}}})
    b = load_config({"audit": {"enabled": True, "capture_metadata": {"client_ip": False}}})
    assert a == b and a.audit.capture_metadata.client_ip is False
    assert a.name == "custom" and a.source is None
    assert load_config({"name": "x"}).name == "x"


def test_overrides_accept_case_insensitive_names():
    a = load_config({"audit": {"retention_overrides": {"security": 7, "delete": 9}}}).audit
    assert dict(a.retention_overrides) == {"SECURITY": 7, "DELETE": 9}
    assert a.retention_for("DELETE") == 9 and a.retention_for("LOGOUT") == 7
    assert a.retention_for("MY_CUSTOM_OP") == a.retention_days


def test_configs_are_frozen_and_hashable():
    cfg = load_config("soc2")
    for obj, attr, value in [(cfg, "name", "x"), (cfg.audit, "retention_days", 1),
                             (cfg.encryption, "enabled", False), (cfg.database, "path", "p"),
                             (cfg.audit.capture_metadata, "client_ip", False),
                             (cfg.audit.after_hours, "start", "00:00"),
                             (cfg.encryption, "key_source", None)]:
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(obj, attr, value)
    with pytest.raises(TypeError):
        cfg.audit.retention_overrides["DDL"] = 1  # type: ignore[index]
    with pytest.raises(AttributeError):
        cfg.audit.retention_overrides._d = {}  # type: ignore[attr-defined]
    assert isinstance(cfg.audit.sensitive_tables, tuple)
    assert hash(cfg) == hash(load_config("soc2"))
    assert {cfg: 1}[load_config("soc2")] == 1


@pytest.mark.parametrize("parent", ["compliance", "hipaa", "pci-dss", "fda-part11"])
@pytest.mark.parametrize("change", ["enable_checksums = false",
                                    "checksums_mandatory = false\nenable_checksums = false",
                                    "checksums_mandatory = false"])
def test_mandatory_checksums_cannot_be_turned_off(tmp_path, parent, change):
    p = write(tmp_path, f'extends = "{parent}"\n\n[audit]\nlog_select = true\n{change}\n')
    e = error_of(p)
    assert e.file == str(p) and e.key.startswith("audit.")
    assert e.line == find_key_line(p.read_text(), e.key) and e.line >= 5
    assert f"checksums are mandatory in {parent!r}" in str(e)
    with pytest.raises(ConfigError, match="mandatory"):
        load_config({"extends": parent, "audit": {"enable_checksums": False,
                                                  "checksums_mandatory": False}})
    with pytest.raises(ConfigError, match="mandatory"):
        load_config(parent).replace(audit={"enable_checksums": False,
                                           "checksums_mandatory": False})


def test_non_mandatory_checksums_can_be_turned_off(tmp_path):
    cfg = load_config({"extends": "soc2", "audit": {"enable_checksums": False}})
    assert cfg.audit.enable_checksums is False
    assert load_config("default").replace(audit={"enable_checksums": False}).audit \
        .enable_checksums is False


def test_extends_inherits_and_overrides(tmp_path):
    p = write(tmp_path, """extends = "hipaa"
[audit]
sensitive_tables = ["patients"]
[audit.capture_metadata]
capture_custom_fields = true
[encryption]
key_source = { passphrase_env = "HELIOS_PASS" }
""", "clinic.toml")
    cfg = load_config(p)
    hipaa = load_config("hipaa")
    assert cfg.name == "clinic" and cfg.description == ""
    assert cfg.audit.sensitive_tables == ("patients",)
    assert cfg.audit.capture_metadata.custom_fields
    assert cfg.audit.capture_metadata.client_ip == hipaa.audit.capture_metadata.client_ip
    assert cfg.audit.retention_days == 2555 and cfg.audit.log_select
    assert cfg.encryption.key_source == KeySource("passphrase_env", "HELIOS_PASS")
    assert cfg.encryption.enabled


def test_extends_a_relative_file_and_errors_point_into_the_parent(tmp_path):
    (tmp_path / "sub").mkdir()
    write(tmp_path, "[audit]\nenabled = true\nretention_days = 0\n", "base.toml")
    child = write(tmp_path / "sub", 'extends = "../base.toml"\n[audit]\nlog_select = true\n')
    e = error_of(child)
    assert e.file == str(tmp_path / "sub" / "../base.toml") and e.line == 3
    assert e.key == "audit.retention_days"
    # Fix the parent: the child now inherits it.
    write(tmp_path, "[audit]\nenabled = true\nretention_days = 7\n", "base.toml")
    cfg = load_config(child)
    assert cfg.audit.retention_days == 7 and cfg.audit.log_select


def test_extends_cycles_and_bad_targets(tmp_path):
    write(tmp_path, 'extends = "b.toml"\n', "a.toml")
    write(tmp_path, 'extends = "a.toml"\n', "b.toml")
    e = error_of(tmp_path / "a.toml")
    assert "cycle" in str(e) and e.key == "extends" and e.line == 1
    e = error_of(write(tmp_path, '\nextends = "hipa"\n', "c.toml"))
    assert e.key == "extends" and e.line == 2 and "hipaa" in str(e)
    e = error_of(write(tmp_path, "extends = 3\n", "d.toml"))
    assert e.key == "extends" and "expected a preset name" in str(e)


def test_replace_merges_and_validates():
    cfg = load_config("gdpr")
    new = cfg.replace(audit={"sensitive_tables": ["users"], "after_hours": {"start": "20:00"}},
                      name="gdpr-users")
    assert new.name == "gdpr-users" and new.source == cfg.source
    assert new.audit.sensitive_tables == ("users",)
    assert new.audit.after_hours.start == "20:00" and new.audit.after_hours.end == "07:00"
    assert new.audit.retention_days == 1095
    assert cfg.replace(encryption=EncryptionConfig()).encryption == EncryptionConfig()
    with pytest.raises(ConfigError, match="audit.retention_days"):
        cfg.replace(audit={"retention_days": 0})
    with pytest.raises(ConfigError, match="did you mean audit"):
        cfg.replace(audti={})


# --------------------------------------------------------------------------------------------
# helpers: line finder, categories, pragmas, after hours, KDF profiles
# --------------------------------------------------------------------------------------------

LINE_DOC = '''# comment: enabled = true
top = 1
description = """
[audit]
enabled = "not a key, inside a string"
"""

[audit]   # the section
enabled = true
  "quoted key" = 1
x.y = 2

[audit.capture_metadata]
client_ip = true

[ encryption ]
key_source = { file = "k" }
'''


@pytest.mark.parametrize("key, line", [
    ("top", 2), ("description", 3), ("audit", 8), ("audit.enabled", 9),
    ("audit.quoted key", 10), ("audit.x.y", 11), ("audit.x", 11),
    ("audit.capture_metadata", 13), ("audit.capture_metadata.client_ip", 14),
    ("encryption", 16), ("encryption.key_source", 17), ("encryption.key_source.file", 17),
    ("audit.missing", 8), ("nowhere", None),
])
def test_find_key_line(key, line):
    assert find_key_line(LINE_DOC, key) == line


def test_category_of():
    assert category_of("CREATE_TABLE") == "DDL" and category_of("update") == "DML"
    assert category_of("SELECT") == "QUERY" and category_of("COMMIT") == "TRANSACTION"
    assert category_of("KEY_ROTATION") == "SECURITY" and category_of("PRAGMA") == "ADMIN"
    assert category_of("SOMETHING_ELSE") == "APPLICATION"
    assert set(map(category_of, hc.OPERATIONS)) == set(hc.CATEGORIES)


def test_database_pragmas_and_ignored():
    assert DatabaseConfig().pragmas() == [] and DatabaseConfig().ignored("x.db") == []
    d = DatabaseConfig(enable_wal=False, memory_limit_mb=2)
    assert d.pragmas() == [("journal_mode", "DELETE"), ("cache_size", -2048)]
    assert DatabaseConfig(path="p").ignored(None) == []
    assert DatabaseConfig(enable_wal=True).ignored("file::memory:?cache=shared") == [
        "database.enable_wal"]


def test_after_hours_window():
    ah = AfterHours(start="19:00", end="07:00", timezone="Europe/Paris", weekends=True)
    wed = dt.datetime(2026, 11, 25, tzinfo=dt.timezone.utc)  # a Wednesday; Paris is UTC+1
    assert ah.contains(wed.replace(hour=18, minute=30))      # 19:30 in Paris
    assert not ah.contains(wed.replace(hour=12))
    assert ah.contains(wed.replace(hour=5, minute=59))       # 06:59 in Paris
    assert not ah.contains(wed.replace(hour=6))              # 07:00 in Paris
    assert ah.contains(dt.datetime(2026, 11, 28, 12, tzinfo=dt.timezone.utc))  # Saturday
    assert not AfterHours(weekends=False).contains(dt.datetime(2026, 11, 28, 12))
    day = AfterHours(start="09:00", end="17:00")              # a window inside the day
    assert day.contains(dt.datetime(2026, 11, 25, 10)) and not day.contains(
        dt.datetime(2026, 11, 25, 18))
    assert not AfterHours(start="00:00", end="00:00", weekends=False).contains(
        dt.datetime(2026, 11, 25, 3))


def test_direct_construction_stays_immutable():
    a = AuditConfig(retention_overrides={"ddl": 5}, sensitive_tables=["t"])
    assert a.retention_overrides == {"DDL": 5} and a.sensitive_tables == ("t",)
    assert hash(a) == hash(AuditConfig(retention_overrides={"DDL": 5}, sensitive_tables=("t",)))
    assert CaptureMetadata(custom_field_names=["x"]).custom_field_names == ("x",)
    with pytest.raises(ConfigError, match="kind must be"):
        KeySource("url", "http://x")  # type: ignore[arg-type]


def test_encryption_defaults_and_kdf_profiles():
    enc = load_config({"encryption": {"enabled": True}}).encryption
    assert enc.key_source is None          # the key must be passed to connect()
    assert enc.kdf_params == hc.KDF_PROFILES["default"]
    # One table: the config offers exactly the profiles connect() derives keys with.
    from heliosdb.crypto.keys import KDF_PROFILES as key_profiles

    assert set(hc.KDF_PROFILES) == set(key_profiles)
    for name, p in key_profiles.items():
        assert load_config({"encryption": {"kdf_profile": name}}).encryption.kdf_params == {
            "time_cost": p.time_cost, "memory_kib": p.memory_kib,
            "parallelism": p.parallelism}


def test_schema_covers_every_dataclass_field():
    for section, (keys, subsections) in hc._SECTIONS.items():
        obj = Config()
        for part in section:
            obj = getattr(obj, part)
        fields = {f.name for f in dataclasses.fields(obj)}
        assert fields == {k.name for k in keys} | set(subsections), section


# --------------------------------------------------------------------------------------------
# docs
# --------------------------------------------------------------------------------------------


def test_docs_tables_match_the_presets_and_the_schema():
    """docs/CONFIG.md's generated tables are what the preset files and schema say now.

    On failure, run: python -m heliosdb.config --write-docs docs/CONFIG.md
    """
    text = (REPO / "docs" / "CONFIG.md").read_text(encoding="utf-8")
    assert hc.update_docs(text) == text
    for name in ALL_PRESETS:
        assert f"| `{name}` |" in text
    for section, (keys, _) in hc._SECTIONS.items():
        for k in keys:
            assert f"`{k.name}`" in text


def test_docs_table_changes_when_a_preset_changes(tmp_path, monkeypatch):
    for name in ALL_PRESETS:
        (tmp_path / f"{name}.toml").write_text(preset_path(name).read_text())
    before = hc.render_preset_table()
    monkeypatch.setattr(hc, "presets_dir", lambda: tmp_path)
    assert hc.render_preset_table() == before
    p = tmp_path / "soc2.toml"
    p.write_text(p.read_text().replace("retention_days = 90", "retention_days = 91"))
    assert hc.render_preset_table() != before and "| 91 |" in hc.render_preset_table()


def test_cli_show_and_write_docs(tmp_path, capsys):
    assert hc._main(["hipaa"]) == 0
    assert 'name = "hipaa"' in capsys.readouterr().out
    assert hc._main([str(write(tmp_path, "[audit]\nenabled = 2\n"))]) == 1
    assert "audit.enabled" in capsys.readouterr().err
    doc = tmp_path / "CONFIG.md"
    doc.write_text("x\n<!-- generated:presets:begin -->\nOLDTEXT\n<!-- generated:presets:end -->\n"
                   "<!-- generated:keys:begin -->\n<!-- generated:keys:end -->\n")
    assert hc._main(["--write-docs", str(doc)]) == 0
    assert "| `hipaa` |" in doc.read_text() and "OLDTEXT" not in doc.read_text()


# --------------------------------------------------------------------------------------------
# property: valid dicts round-trip through to_dict / to_toml / load_config
# --------------------------------------------------------------------------------------------

_names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=12)
_texts = st.text(min_size=0, max_size=20)
_env = st.from_regex(r"[A-Z_][A-Z0-9_]{0,10}", fullmatch=True)
_hhmm = st.builds(lambda h, m: f"{h:02d}:{m:02d}", st.integers(0, 23), st.integers(0, 59))


def _subdict(**strategies):
    """A dict holding a random subset of the given keys (omitted keys take defaults)."""
    return st.fixed_dictionaries({}, optional=strategies)


@st.composite
def _audit(draw):
    d = draw(_subdict(
        enabled=st.booleans(), log_ddl=st.booleans(), log_dml=st.booleans(),
        log_select=st.booleans(), log_transactions=st.booleans(), log_auth=st.booleans(),
        async_buffer_size=st.integers(0, 10**6), max_query_length=st.integers(1, 10**6),
        capture_row_values=st.booleans(), require_reason=st.booleans(),
        table_name=st.sampled_from(["__audit_log", "audit_events", "_log2", "AuditTrail"]),
        sensitive_tables=st.lists(_names, max_size=4, unique=True),
        retention_overrides=st.dictionaries(
            st.sampled_from(hc.CATEGORIES + hc.OPERATIONS), st.integers(1, 36500),
            max_size=4),
        after_hours=_subdict(start=_hhmm, end=_hhmm, weekends=st.booleans(),
                             timezone=st.sampled_from(["UTC", "Europe/Paris",
                                                       "America/New_York"])),
        capture_metadata=_subdict(client_ip=st.booleans(), application_name=st.booleans(),
                                  database_name=st.booleans(), execution_time=st.booleans()),
    ))
    retention = draw(st.integers(1, 36500))
    d["retention_days"] = retention
    d["archive_days"] = draw(st.integers(0, retention - 1))
    if draw(st.booleans()):
        d.setdefault("capture_metadata", {})["custom_fields"] = True
        d["capture_metadata"]["custom_field_names"] = draw(
            st.lists(_names, max_size=3, unique=True))
    checks = draw(st.sampled_from([(True, True), (True, False), (False, False)]))
    d["enable_checksums"], d["checksums_mandatory"] = checks
    return d


_encryption = _subdict(
    enabled=st.booleans(), algorithm=st.just("aes-256-gcm"),
    key_source=st.one_of(st.none(),
                         st.builds(lambda p: {"file": "/keys/" + p}, _names),
                         st.builds(lambda v: {"env": v}, _env),
                         st.builds(lambda v: {"passphrase_env": v}, _env)),
    kdf_profile=st.sampled_from(sorted(hc.KDF_PROFILES)),
    rotation_interval_days=st.integers(0, 36500),
    nonce_warning_fraction=st.floats(0.001, 1.0),
)
_database = _subdict(
    path=st.one_of(st.none(), _names.map(lambda s: f"/data/{s}.db")),
    memory_limit_mb=st.one_of(st.none(), st.integers(1, 4096)),
    enable_wal=st.one_of(st.none(), st.booleans()),
    page_size=st.one_of(st.none(), st.sampled_from([512 << i for i in range(8)])),
)
_configs = _subdict(name=_names, description=_texts, database=_database,
                    encryption=_encryption, audit=_audit())


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_configs)
def test_valid_dicts_round_trip(raw):
    cfg = load_config(raw)
    again = load_config(cfg.to_dict())
    assert again == cfg
    assert again.to_dict() == cfg.to_dict()
    via_toml = load_config(tomllib.loads(cfg.to_toml()))
    assert via_toml == cfg
    # What was given is what is in force.
    for key, value in raw.get("audit", {}).items():
        got = getattr(cfg.audit, key)
        if key == "retention_overrides":
            assert dict(got) == value
        elif key in ("after_hours", "capture_metadata"):
            for k, v in value.items():
                assert getattr(got, k) == (tuple(v) if isinstance(v, list) else v)
        else:
            assert got == (tuple(value) if isinstance(value, list) else value)


# --------------------------------------------------------------------------------------------
# the product documents' config files: foreign sections, spellings, fips_mode (issue 16.5)
# --------------------------------------------------------------------------------------------


def load_warned(spec):
    """(config, [ConfigWarning messages]) of a load, every warning recorded."""
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cfg = load_config(spec)
    return cfg, [w.message for w in caught if issubclass(w.category, heliosdb.ConfigWarning)]


@pytest.mark.parametrize("spelling", ["Aes256Gcm", "AES-256-GCM", "aes-256-gcm", "aes_256_gcm",
                                      "AES256GCM", "Aes-256-Gcm", "aes 256 gcm"])
def test_algorithm_spellings_mean_aes_256_gcm(tmp_path, spelling):
    cfg, warned = load_warned(write(tmp_path, f'[encryption]\nalgorithm = "{spelling}"\n'))
    assert cfg.encryption.algorithm == "aes-256-gcm" and warned == []


@pytest.mark.parametrize("spelling", ["Aes128Gcm", "AES-256-CBC", "ChaCha20Poly1305", ""])
def test_other_algorithms_stay_errors(tmp_path, spelling):
    p = write(tmp_path, f'[encryption]\nenabled = true\nalgorithm = "{spelling}"\n')
    e = error_of(p)
    assert (e.key, e.line) == ("encryption.algorithm", 3) and "aes-256-gcm" in str(e)


@pytest.mark.parametrize("toml_ks, expected", [
    ('{ File = "/secure/db.key" }', KeySource("file", "/secure/db.key")),
    ('{ FILE = "/secure/db.key" }', KeySource("file", "/secure/db.key")),
    ('{ Env = "HELIOS_KEY" }', KeySource("env", "HELIOS_KEY")),
    ('{ PassphraseEnv = "PASS" }', KeySource("passphrase_env", "PASS")),
    ('{ passphraseEnv = "PASS" }', KeySource("passphrase_env", "PASS")),
    ('{ Passphrase_Env = "PASS" }', KeySource("passphrase_env", "PASS")),
])
def test_key_source_product_spellings(tmp_path, toml_ks, expected):
    cfg, warned = load_warned(write(tmp_path, f"[encryption]\nkey_source = {toml_ks}\n"))
    assert cfg.encryption.key_source == expected and warned == []
    # Written back in HeliosDB's own spelling.
    assert cfg.to_dict()["encryption"]["key_source"] == {expected.kind: expected.value}


def test_key_source_product_spellings_keep_their_checks(tmp_path):
    cfg = load_config(write(tmp_path, '[encryption]\nkey_source = { File = "k.bin" }\n'))
    assert cfg.encryption.key_source == KeySource("file", str(tmp_path / "k.bin"))
    e = error_of(write(tmp_path, '[encryption]\nkey_source = { Env = "A B" }\n'))
    assert e.key == "encryption.key_source.Env" and e.line == 2
    e = error_of(write(tmp_path, '[encryption]\nkey_source = { File = "a", file = "b" }\n'))
    assert e.key == "encryption.key_source" and "exactly one" in str(e)
    e = error_of(write(tmp_path, '[encryption]\nkey_source = { Fiel = "a" }\n'))
    assert e.key == "encryption.key_source.Fiel" and "did you mean file?" in str(e)
    e = error_of(write(tmp_path, '[encryption]\nkey_source = { Kms = "arn:x" }\n'))
    assert e.key == "encryption.key_source.Kms" and "expected one of" in str(e)


def test_cache_mb_sets_the_page_cache(tmp_path):
    cfg, warned = load_warned(write(tmp_path, "[database]\ncache_mb = 32\n"))
    assert cfg.database.cache_mb == 32 and warned == []
    assert cfg.database.pragmas() == [("cache_size", -32 * 1024)]
    assert cfg.database.ignored("x.db") == []
    assert DatabaseConfig(cache_mb=2, memory_limit_mb=8).pragmas() == [("cache_size", -2048)]


def test_cache_mb_with_memory_limit_mb_wins_and_is_named_in_one_warning(tmp_path):
    p = write(tmp_path, "[database]\nmemory_limit_mb = 128\ncache_mb = 32\n\n[monitoring]\nx = 1\n")
    cfg, warned = load_warned(p)
    assert cfg.database.pragmas() == [("cache_size", -32 * 1024)]
    assert cfg.database.ignored("x.db") == ["database.memory_limit_mb"]
    assert len(warned) == 1
    w = warned[0]
    assert w.keys == ("database.memory_limit_mb",) and w.sections == ("monitoring",)
    assert "database.memory_limit_mb (line 2) has no effect" in str(w)
    assert "[monitoring] (line 5)" in str(w) and str(w).startswith(f"{p}: ")


@pytest.mark.parametrize("text, fragment", [
    ("[database]\nmemory_limit_mb = 16\ncache_mb = 32\n", "exceeds database.memory_limit_mb (16)"),
    ("[database]\ncache_mb = 0\n", "positive"),
    ('[database]\ncache_mb = "32"\n', 'got "32" (string)'),
])
def test_cache_mb_errors_name_file_line_key(tmp_path, text, fragment):
    p = write(tmp_path, text)
    e = error_of(p)
    assert e.key == "database.cache_mb" and e.line == find_key_line(text, "database.cache_mb")
    assert str(e).startswith(f"{p}:{e.line}: database.cache_mb: ") and fragment in str(e)


def test_fips_mode_true_is_refused_with_file_line_key(tmp_path):
    text = '[encryption]\nenabled = true\nalgorithm = "Aes256Gcm"\nfips_mode = true\n'
    p = write(tmp_path, text)
    e = error_of(p)
    assert (e.key, e.file, e.line) == ("encryption.fips_mode", str(p), 4)
    assert str(e).startswith(f"{p}:4: encryption.fips_mode: HeliosDB does not run in a "
                             f"FIPS 140-validated mode")
    assert "Argon2id" in str(e) and "not a FIPS-approved" in str(e)
    assert "OpenSSL FIPS provider" in str(e)
    e = error_of({"encryption": {"fips_mode": True}})
    assert (e.key, e.file, e.line) == ("encryption.fips_mode", "<dict>", None)
    with pytest.raises(ConfigError, match="FIPS"):
        EncryptionConfig(fips_mode=True)
    with pytest.raises(ConfigError, match="FIPS"):
        load_config("hipaa").replace(encryption={"fips_mode": True})
    e = error_of(write(tmp_path, '[encryption]\nfips_mode = "no"\n'))
    assert e.key == "encryption.fips_mode" and "expected true or false" in str(e)


def test_fips_mode_false_is_accepted(tmp_path):
    cfg, warned = load_warned(write(tmp_path, "[encryption]\nenabled = true\nfips_mode = false\n"))
    assert cfg.encryption.fips_mode is False and cfg.encryption.enabled and warned == []
    assert cfg == load_config({"name": "app", "encryption": {"enabled": True}})


def test_foreign_sections_are_kept_and_named_in_one_warning(tmp_path):
    p = write(tmp_path, """[server]
host = "0.0.0.0"
port = 8080

[audit]
enabled = true

[gdpr]
audit_retention_days = 2555
purposes = ["billing", "support"]
since = 2024-01-01

[gdpr.erasure]
grace_days = 30

[[replicas]]
url = "a"

[[replicas]]
url = "b"
""")
    cfg, warned = load_warned(p)
    assert cfg.audit.enabled
    assert list(cfg.extra) == ["server", "gdpr", "replicas"]
    assert cfg.extra["server"] == {"host": "0.0.0.0", "port": 8080}
    assert cfg.extra["gdpr"]["purposes"] == ("billing", "support")
    assert cfg.extra["gdpr"]["since"] == dt.date(2024, 1, 1)
    assert cfg.extra["gdpr"]["erasure"] == {"grace_days": 30}
    assert [r["url"] for r in cfg.extra["replicas"]] == ["a", "b"]
    assert len(warned) == 1
    w = warned[0]
    assert w.file == str(p) and w.sections == ("server", "gdpr", "replicas")
    assert "[server] (line 1), [gdpr] (line 8), [replicas] (line 16)" in str(w)
    assert w.keys == ("gdpr.audit_retention_days",)
    # Read-only, hashable, and part of what the config is.
    with pytest.raises(TypeError):
        cfg.extra["server"] = {}  # type: ignore[index]
    with pytest.raises(TypeError):
        cfg.extra["server"]["port"] = 1  # type: ignore[index]
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.extra = {}  # type: ignore[misc]
    assert hash(cfg) == hash(load_warned(p)[0])
    assert cfg != dataclasses.replace(cfg, extra={})
    assert dataclasses.replace(cfg, extra={"server": {"port": 8080, "host": "0.0.0.0"}}).extra \
        == {"server": {"host": "0.0.0.0", "port": 8080}}
    # Round trip: to_dict/to_toml write them back where they were.
    d = cfg.to_dict()
    assert d["server"] == {"host": "0.0.0.0", "port": 8080}
    assert d["gdpr"]["purposes"] == ["billing", "support"]
    again, warned_again = load_warned(tomllib.loads(cfg.to_toml()))
    assert again == cfg and len(warned_again) == 1 and warned_again[0].file == "<dict>"
    assert load_warned(d)[0] == cfg


def test_a_config_without_foreign_sections_does_not_warn():
    for name in ALL_PRESETS:
        cfg, warned = load_warned(name)
        assert warned == [] and cfg.extra == {}


@pytest.mark.parametrize("text, key, line, fragment", [
    # Typos inside the sections HeliosDB owns stay errors, foreign sections or not.
    ("[monitoring]\nx = 1\n[audit]\nretention_dayz = 5\n", "audit.retention_dayz", 4,
     "did you mean audit.retention_days?"),
    ('[monitoring]\nx = 1\n[encryption]\nalgoritm = "Aes256Gcm"\n', "encryption.algoritm", 4,
     "did you mean encryption.algorithm?"),
    ("[monitoring]\nx = 1\n[database]\ncache_md = 3\n", "database.cache_md", 4,
     "did you mean database.cache_mb?"),
    ("[server]\nport = 1\n[audit.capture_metadata]\ncapture_client_ipp = true\n",
     "audit.capture_metadata.capture_client_ipp", 4, "did you mean"),
    # A misspelt owned section is not someone else's section.
    ("[databse]\npath = \"x\"\n", "databse", 1, "did you mean database?"),
    ("[encrpytion]\nenabled = true\n", "encrpytion", 1, "did you mean encryption?"),
    ("[Audit]\nenabled = true\n", "Audit", 1, "did you mean audit?"),
    # Nor is a table that belongs inside one.
    ("[capture_metadata]\nclient_ip = true\n", "capture_metadata", 1,
     "did you mean audit.capture_metadata (it belongs in [audit])?"),
    ("[retention_overrides]\nDDL = 5\n", "retention_overrides", 1,
     "did you mean audit.retention_overrides (it belongs in [audit])?"),
    # Top-level keys that are not tables are still typos.
    ("[monitoring]\nx = 1\n", None, None, None),
    ('version = "2.5"\n[monitoring]\nx = 1\n', "version", 1, "unknown key"),
])
def test_owned_sections_stay_strict(tmp_path, text, key, line, fragment):
    p = write(tmp_path, text)
    if key is None:
        assert list(load_warned(p)[0].extra) == ["monitoring"]
        return
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an error, and no warning before it
        e = error_of(p)
    assert (e.key, e.file, e.line) == (key, str(p), line)
    assert str(e).startswith(f"{p}:{line}: {key}: ") and fragment in str(e)


def test_extends_warns_once_naming_the_parents_lines(tmp_path):
    write(tmp_path, "[audit]\nenabled = true\n\n[monitoring]\nmetrics = true\n", "base.toml")
    child = write(tmp_path, 'extends = "base.toml"\n[gdpr]\ndata_residency = "EU"\n')
    cfg, warned = load_warned(child)
    assert cfg.audit.enabled and list(cfg.extra) == ["monitoring", "gdpr"]
    assert len(warned) == 1
    assert f"[monitoring] ({tmp_path / 'base.toml'}:4)" in str(warned[0])
    assert "[gdpr] (line 2)" in str(warned[0])


def test_replace_keeps_foreign_sections_without_warning_again(tmp_path):
    cfg, _ = load_warned(write(tmp_path, "[iot]\nedge_mode = true\n"))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        new = cfg.replace(audit={"enabled": True})
    assert new.extra == cfg.extra == {"iot": {"edge_mode": True}} and new.audit.enabled
    with pytest.raises(ConfigError, match="unknown key"):
        cfg.replace(iot={"edge_mode": False})


_foreign_values = st.recursive(
    st.one_of(st.booleans(), st.integers(-10**6, 10**6), st.text(max_size=8),
              st.floats(allow_nan=False, allow_infinity=False)),
    lambda inner: st.one_of(st.lists(inner, max_size=3),
                            st.dictionaries(_names, inner, max_size=3)),
    max_leaves=8)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_configs, st.dictionaries(st.sampled_from(["monitoring", "server", "gdpr", "edge",
                                                  "iot", "logging", "compliance"]),
                                 st.dictionaries(_names, _foreign_values, max_size=4),
                                 min_size=1, max_size=3))
def test_foreign_sections_round_trip(raw, foreign):
    cfg, warned = load_warned({**raw, **foreign})
    assert len(warned) == 1 and set(warned[0].sections) == set(foreign)
    assert hc._thaw(cfg.extra) == foreign
    assert load_warned(cfg.to_dict())[0] == cfg
    assert load_warned(tomllib.loads(cfg.to_toml()))[0] == cfg


def test_every_operation_capture_can_emit_has_its_category():
    """Issue 22: one vocabulary. Each operation the capture layer, the product and the
    shell write has a category other than the catch-all APPLICATION, and retention
    overrides accept it by name."""
    from heliosdb.audit import capture, events

    emitted = set(capture._DDL_ACTIONS.values()) | set(capture._DML_ACTIONS.values()) \
        | set(capture._OTHER_ACTIONS.values()) | set(capture._KEYWORD_OPS.values()) \
        | {capture._UNKNOWN} | set(events.PRODUCT_OPERATIONS) | {"SHELL_COMMAND"}
    for op in sorted(emitted):
        assert hc.category_of(op) != "APPLICATION", op
        cfg = hc.load_config({"audit": {"retention_overrides": {op: 400}}})
        assert cfg.audit.retention_for(op) == 400
    for op in events.APPLICATION_OPERATIONS:
        hc.load_config({"audit": {"retention_overrides": {op: 400}}})
