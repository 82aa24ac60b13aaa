"""Each config key is declared once, on its dataclass field (issue 22 item 3)."""
from __future__ import annotations

import dataclasses

import pytest

import heliosdb.config as hc


def test_every_key_table_is_read_from_the_field_declarations():
    for path, (keys, subsections) in hc._SECTIONS.items():
        cls = hc._SECTION_CLASSES[path]
        by_field = {f.name: f for f in dataclasses.fields(cls)}
        for key in keys:
            declared = by_field[key.name].metadata["key"]
            assert (key.type, key.check, key.doc, key.aliases) == (
                declared["type"], declared["check"], declared["doc"], declared["aliases"])
        for name in subsections:
            assert by_field[name].metadata["section"] is hc._SECTION_CLASSES[path + (name,)]


def test_an_alias_declared_on_a_field_is_accepted_by_the_loader():
    cfg = hc.load_config({"audit": {"capture_metadata": {"capture_client_ip": False}}})
    assert cfg.audit.capture_metadata.client_ip is False


def test_a_field_without_a_declaration_is_refused():
    @dataclasses.dataclass(frozen=True)
    class Section:
        declared: bool = hc._key(True, type="boolean", check=hc._bool, doc="A key.")
        undeclared: bool = False

    with pytest.raises(TypeError, match="Section.undeclared: declare it"):
        hc._keys_of(Section)


def test_nested_sections_are_built_from_their_declarations():
    raw = {"enabled": True, "after_hours": {"start": "20:00"},
           "capture_metadata": {"custom_fields": True}}
    audit = hc._instantiate(hc.AuditConfig, raw)
    assert audit.after_hours == hc.AfterHours(start="20:00")
    assert audit.capture_metadata == hc.CaptureMetadata(custom_fields=True)
    assert audit.enabled is True


def test_a_file_config_is_reused_until_a_file_it_read_changes(tmp_path, monkeypatch) -> None:
    """connect() loads its config every time: a file config is parsed once and reused
    while the files it read (its ``extends`` parent too) are unchanged, by content."""
    import heliosdb.config as config

    parent = tmp_path / "base.toml"
    child = tmp_path / "child.toml"
    parent.write_text('name = "base"\n[audit]\nenabled = true\nretention_days = 30\n')
    child.write_text('extends = "base.toml"\nname = "child"\n')
    first = config.load_config(str(child))
    assert config.load_config(str(child)) is first  # reused
    # Same length, same instant: only the content tells it apart.
    parent.write_text('name = "base"\n[audit]\nenabled = true\nretention_days = 60\n')
    second = config.load_config(str(child))
    assert second is not first and second.audit.retention_days == 60
    child.write_text('extends = "base.toml"\nname = "chilD"\n')
    assert config.load_config(str(child)).name == "chilD"


def test_a_config_that_warns_warns_every_time(tmp_path) -> None:
    import pytest

    import heliosdb.config as config
    from heliosdb.errors import ConfigWarning

    f = tmp_path / "x.toml"
    f.write_text('name = "x"\n[mytool]\nflag = 1\n')
    for _ in range(2):
        with pytest.warns(ConfigWarning):
            config.load_config(str(f))
