"""Every sample ``heliosdb.toml`` of the product documents loads (issue 16, item 5).

The samples are in ``tests/vectors/product_configs/``, one per file, each headed by where it
came from. Where the documents are at hand (``../shared/product-docs/`` or
``$HELIOSDB_PRODUCT_DOCS``), the tests also check that each sample is the document's text and
that no sample of the documents was left out.
"""
from __future__ import annotations

import os
import re
import sys
import warnings
from pathlib import Path

import pytest

import heliosdb
from heliosdb.config import KeySource, find_key_line, load_config
from heliosdb.errors import ConfigError, ConfigWarning

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

REPO = Path(__file__).resolve().parent.parent
VECTORS = REPO / "tests" / "vectors" / "product_configs"


def _docs_dir() -> Path | None:
    for candidate in (os.environ.get("HELIOSDB_PRODUCT_DOCS"),
                      REPO.parent / "shared" / "product-docs", "/work/shared/product-docs"):
        if candidate and Path(candidate).is_dir():
            return Path(candidate)
    return None


# file -> (foreign sections, in file order; what the sample must give once loaded)
LOADING = {
    "000_example1_soc2_saas_heliosdb.toml": ["monitoring"],
    "000_example3_gdpr_user_service.toml": ["server", "gdpr", "container"],
    "000_example5_industrial_device.toml": ["edge", "compliance"],
    "001_example1_hipaa_ehr_heliosdb.toml": ["logging"],
    "001_example2_pci_dss_pos.toml": ["compliance"],
    "001_example3_gdpr_saas.toml": ["gdpr", "backup"],
    "001_example5_iot_gateway.toml": ["iot", "compliance"],
    "002_configuration_heliosdb.toml": [],
    "002_soc2_scenario.toml": [],
    "002_hipaa_scenario.toml": [],
    "002_gdpr_scenario.toml": [],
}
#: The tutorial (002) was stored without its line breaks: the prose that followed each sample
#: on the same stored line.
RECONSTRUCTED = {
    "002_configuration_heliosdb.toml": "Programmatic Configuration (Rust)",
    "002_soc2_scenario.toml": "SOC2 Audit Queries",
    "002_hipaa_scenario.toml": "HIPAA-Specific Queries",
    "002_gdpr_scenario.toml": "GDPR Subject Access Request",
}
#: Refused on purpose (the file says why): fips_mode = true.
REFUSED = {"001_example4_fips_classified.toml": "encryption.fips_mode"}


def _load_recording(spec):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cfg = load_config(spec)
    return cfg, [w for w in caught if issubclass(w.category, ConfigWarning)], caught


def _body(path: Path) -> list[str]:
    """The sample's own lines (after the provenance header)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    marker = next(i for i, line in enumerate(lines) if line.startswith("# ---- "))
    return lines[marker + 1:]


def test_the_vector_directory_holds_exactly_the_samples():
    assert sorted(p.name for p in VECTORS.glob("*.toml")) == sorted({**LOADING, **REFUSED})


@pytest.mark.parametrize("name", sorted({**LOADING, **REFUSED}))
def test_each_sample_names_its_provenance(name):
    head = (VECTORS / name).read_text(encoding="utf-8").splitlines()[:4]
    assert re.match(r"# Provenance: product-docs/\d{3}_[0-9a-f]{16}\.txt$", head[0])
    assert head[0].split("/")[-1][:3] == name[:3]
    assert head[1].startswith("#   document: ") and head[2].startswith("#   section:  ")
    assert re.search(r"lines \d+-\d+", head[3])


@pytest.mark.parametrize("name, sections", sorted(LOADING.items()))
def test_sample_loads_with_one_warning_naming_its_foreign_sections(name, sections):
    path = VECTORS / name
    cfg, ours, _ = _load_recording(path)
    raw = tomllib.loads(path.read_text(encoding="utf-8"))
    assert list(cfg.extra) == sections
    for s in sections:
        assert dict(cfg.extra[s]) == raw[s]  # kept for the application, unchanged
    if not sections:
        assert ours == []
        return
    assert len(ours) == 1, [str(w.message) for w in ours]
    w = ours[0].message
    assert w.sections == tuple(sections) and w.file == str(path)
    text = path.read_text(encoding="utf-8")
    for s in sections:
        assert f"[{s}] (line {find_key_line(text, (s,))})" in str(w)
    assert ours[0].filename == __file__  # points at the caller, not into heliosdb


@pytest.mark.parametrize("name", sorted(LOADING))
def test_sample_means_what_it_says(name):
    path = VECTORS / name
    cfg, _, _ = _load_recording(path)
    raw = tomllib.loads(path.read_text(encoding="utf-8"))
    db, enc, audit = raw.get("database", {}), raw.get("encryption", {}), raw.get("audit", {})
    assert cfg.database.path == db.get("path")
    assert cfg.database.enable_wal == db.get("enable_wal")
    cache_mb = db.get("cache_mb", db.get("memory_limit_mb"))
    if cache_mb is None:
        assert not [p for p in cfg.database.pragmas() if p[0] == "cache_size"]
    else:
        assert ("cache_size", -cache_mb * 1024) in cfg.database.pragmas()
    assert cfg.encryption.enabled == enc.get("enabled", False)
    if "algorithm" in enc:
        assert enc["algorithm"] == "Aes256Gcm" and cfg.encryption.algorithm == "aes-256-gcm"
    if "key_source" in enc:
        assert cfg.encryption.key_source == KeySource("file", enc["key_source"]["File"])
        assert cfg.encryption.rotation_interval_days == enc["rotation_interval_days"]
    for key, value in audit.items():
        if key != "capture_metadata":
            assert getattr(cfg.audit, key) == value, key
    for key, value in audit.get("capture_metadata", {}).items():
        assert getattr(cfg.audit.capture_metadata, key.removeprefix("capture_")) == value


@pytest.mark.parametrize("name", sorted(LOADING))
def test_sample_round_trips_with_its_foreign_sections(name):
    cfg, _, _ = _load_recording(VECTORS / name)
    again, _, _ = _load_recording(tomllib.loads(cfg.to_toml()))
    assert again == cfg and again.extra == cfg.extra
    assert hash(again) == hash(cfg)


def test_industrial_sample_cache_mb_wins_over_memory_limit_and_says_so():
    path = VECTORS / "000_example5_industrial_device.toml"
    cfg, ours, _ = _load_recording(path)
    assert cfg.database.cache_mb == 32 and cfg.database.memory_limit_mb == 128
    assert cfg.database.pragmas() == [("page_size", 512), ("journal_mode", "WAL"),
                                      ("cache_size", -32 * 1024)]
    assert "database.memory_limit_mb" in cfg.database.ignored("x.db")
    assert "database.memory_limit_mb" in ours[0].message.keys
    line = find_key_line(path.read_text(), "database.memory_limit_mb")
    assert f"database.memory_limit_mb (line {line}) has no effect" in str(ours[0].message)


def test_hipaa_sample_warning_says_its_logging_keys_do_not_turn_auditing_on():
    cfg, ours, _ = _load_recording(VECTORS / "001_example1_hipaa_ehr_heliosdb.toml")
    assert cfg.audit.enabled is False  # the sample has no [audit] section
    assert "logging.audit_log_enabled" in ours[0].message.keys
    assert "change nothing in HeliosDB" in str(ours[0].message)


def test_fips_sample_is_refused_with_file_line_and_key():
    path = VECTORS / "001_example4_fips_classified.toml"
    text = path.read_text(encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    e = info.value
    line = next(i for i, s in enumerate(text.splitlines(), 1) if s.startswith("fips_mode"))
    assert (e.file, e.line, e.key) == (str(path), line, REFUSED[path.name])
    assert str(e).startswith(f"{path}:{line}: encryption.fips_mode: ")
    assert "FIPS 140-validated" in str(e) and "Argon2id" in str(e)
    assert "OpenSSL FIPS provider" in str(e)
    # That is the only thing HeliosDB refuses in it.
    cfg, ours, _ = _load_recording(tomllib.loads(text.replace("fips_mode = true",
                                                              "fips_mode = false")))
    assert cfg.encryption.enabled and cfg.encryption.fips_mode is False
    assert cfg.encryption.key_source == KeySource("file", "/secure/classified_key.bin")
    assert list(cfg.extra) == ["security", "offline"] and len(ours) == 1


def test_configwarning_is_exported_and_a_warning():
    assert heliosdb.ConfigWarning is ConfigWarning and "ConfigWarning" in heliosdb.__all__
    assert issubclass(ConfigWarning, Warning)


# --------------------------------------------------------------------------------------------
# Against the documents themselves, when they are at hand
# --------------------------------------------------------------------------------------------

needs_docs = pytest.mark.skipif(_docs_dir() is None, reason="product documents not present")


def _range(path: Path) -> tuple[str, int, int]:
    lines = path.read_text(encoding="utf-8").splitlines()
    doc = lines[0].split("product-docs/")[1]
    a, b = map(int, re.search(r"lines (\d+)-(\d+)", lines[3]).groups())
    return doc, a, b


@needs_docs
@pytest.mark.parametrize("name", sorted(n for n in {**LOADING, **REFUSED}
                                         if n not in RECONSTRUCTED))
def test_sample_is_the_documents_text_verbatim(name):
    doc, a, b = _range(VECTORS / name)
    lines = (_docs_dir() / doc).read_text(encoding="utf-8").splitlines()
    assert _body(VECTORS / name) == lines[a - 1:b]


@needs_docs
@pytest.mark.parametrize("name, tail", sorted(RECONSTRUCTED.items()))
def test_tutorial_samples_only_restore_the_lost_line_breaks(name, tail):
    path = VECTORS / name
    doc, a, b = _range(path)
    stored = "".join((_docs_dir() / doc).read_text(encoding="utf-8").splitlines()[a - 1:b])
    ours = "".join(_body(path))
    assert ours and stored.startswith(ours)
    assert stored[len(ours):] == tail


@needs_docs
def test_no_sample_of_the_documents_is_left_out():
    """Every line of the documents that opens a HeliosDB section lies inside a vector."""
    covered: dict[str, set[int]] = {}
    for p in VECTORS.glob("*.toml"):
        doc, a, b = _range(p)
        covered.setdefault(doc, set()).update(range(a, b + 1))
    found = 0
    for doc in sorted(_docs_dir().glob("*.txt")):
        for n, line in enumerate(doc.read_text(encoding="utf-8").splitlines(), 1):
            if re.match(r"\s*\[(database|encryption|audit)[\].]", line):
                found += 1
                assert n in covered.get(doc.name, set()), f"{doc.name}:{n}: {line[:60]}"
    assert found >= len(LOADING) + len(REFUSED)


def test_config_md_shows_real_output_and_the_aliases(monkeypatch):
    """docs/CONFIG.md quotes what loading two samples really prints."""
    text = (REPO / "docs" / "CONFIG.md").read_text(encoding="utf-8")
    monkeypatch.chdir(VECTORS)
    cfg, ours, _ = _load_recording("001_example1_hipaa_ehr_heliosdb.toml")
    assert f"ConfigWarning: {ours[0].message}\n" in text
    assert f"\n{cfg.extra['logging']!r}\n" in text
    with pytest.raises(ConfigError) as info:
        load_config("001_example4_fips_classified.toml")
    assert f"ConfigError: {info.value}\n" in text
    for spelling in ('"Aes256Gcm"', "{ File =", "{ Env =", "{ PassphraseEnv =", "cache_mb",
                     "fips_mode = true", "Config.extra", "heliosdb.ConfigWarning"):
        assert spelling in text, spelling


@pytest.mark.parametrize("name", sorted(LOADING))
def test_sample_opens_a_database_that_does_what_it_says(tmp_path, name):
    """Loading is not the end: connect() with each sample (its key file swapped for a test
    key, since /secure/... is not here) applies its pragmas, audit and encryption."""
    cfg, _, _ = _load_recording(VECTORS / name)
    if cfg.encryption.enabled:
        if not heliosdb.native_available():
            pytest.skip("encryption needs the native extension")
        key = tmp_path / "test.key"
        key.write_bytes(os.urandom(32))
        cfg = cfg.replace(encryption={"key_source": {"file": str(key)}})
    path = tmp_path / "app.db"
    conn = heliosdb.connect(str(path), config=cfg)
    try:
        for pragma, value in cfg.database.pragmas():
            got = conn.execute(f"PRAGMA {pragma}").fetchone()[0]
            assert (got.upper() if isinstance(got, str) else got) == value, pragma
        conn.execute("CREATE TABLE t(x)")
        conn.execute("INSERT INTO t VALUES ('sample-plaintext-marker')")
        conn.commit()
        if cfg.audit.enabled:
            ops = {r[0] for r in conn.execute(f"SELECT operation FROM {cfg.audit.table_name}")}
            assert {"CREATE_TABLE", "INSERT"} <= ops
    finally:
        conn.close()
    assert (b"sample-plaintext-marker" in path.read_bytes()) is not cfg.encryption.enabled
