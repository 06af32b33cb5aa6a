"""Spark needs Java 17+: a missing or old Java gives one clear message saying what to install."""

import os
import stat

import pytest

from recsys.errors import RecsysError
from recsys.spark import check_java, java_version


def _fake_java(home, version_line: str):
    java = home / "bin" / "java"
    java.parent.mkdir(parents=True)
    java.write_text(f"#!/bin/sh\necho '{version_line}' >&2\n")
    java.chmod(java.stat().st_mode | stat.S_IEXEC)


def test_old_java_is_named_with_the_fix(tmp_path, monkeypatch):
    _fake_java(tmp_path, 'openjdk version "11.0.22" 2024-01-16')
    monkeypatch.setenv("JAVA_HOME", str(tmp_path))
    assert java_version() == 11
    with pytest.raises(RecsysError, match=r"Java 11 found, but Spark 4 .* needs Java 17 .*openjdk-17-jre-headless"):
        check_java()


def test_java_8_version_scheme(tmp_path, monkeypatch):
    _fake_java(tmp_path, 'java version "1.8.0_392"')
    monkeypatch.setenv("JAVA_HOME", str(tmp_path))
    assert java_version() == 8


def test_missing_java_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))  # no java anywhere
    with pytest.raises(RecsysError, match="Java was not found.*openjdk-17-jre-headless"):
        check_java()


def test_this_machine_has_java_17_or_newer():
    if os.environ.get("JAVA_HOME") is None and java_version() is None:
        pytest.fail("no Java on this machine: the Spark tests cannot run")
    assert check_java() >= 17
