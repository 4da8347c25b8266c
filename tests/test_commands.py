"""The command layer shared by ``ywmagics`` and ``%backends``: requests from what users type, and
the text of answers."""

from __future__ import annotations

import pytest

from ywmagics.commands import (
    StopTarget,
    build_install_request,
    format_listing,
    format_removed,
    format_status,
    format_stopped,
    group_specs,
    parse_install_object,
    stop_target,
    table,
)
from ywmagics.errors import ConfigurationError, SpecError


def test_group_specs_joins_aliases() -> None:
    assert group_specs(["a#^1", "as", "x", "b", "c#1.0.0 as y"]) == [
        "a#^1 as x",
        "b",
        "c#1.0.0 as y",
    ]
    with pytest.raises(SpecError, match="needs an alias after 'as'"):
        group_specs(["a", "as"])
    with pytest.raises(SpecError, match="'as' must follow"):
        group_specs(["as", "x"])


def test_parse_install_object_json_or_python_literal() -> None:
    text = '{"modules": ["pyrun_backend#^0.1.0 as pyRunner"], "partition": "Foo"}'
    assert parse_install_object(text)["partition"] == "Foo"
    assert parse_install_object("{'modules': ['demo_yw_backend']}") == {
        "modules": ["demo_yw_backend"]
    }
    assert parse_install_object('["demo_yw_backend"]') == {"modules": ["demo_yw_backend"]}
    with pytest.raises(SpecError, match="JSON object"):
        parse_install_object("{modules: nope")
    with pytest.raises(SpecError, match="JSON object"):
        parse_install_object("__import__('os').getcwd()")  # never evaluated


def test_install_request_from_a_line_options_and_a_body() -> None:
    request = build_install_request(
        ["demo#^0.1 ", "as", "d", "pyrun_backend"],
        ["pyrun_backend.build.python=3.10"],
        None,
        {"modules": ["other as o"], "configurations": {"other": {"build": {"x": "1"}}}},
        "kernel-1",
    )
    assert [str(s) for s in request.modules] == [
        "other#* as o",
        "demo#^0.1 as d",
        "pyrun_backend#* as pyrun_backend",
    ]
    assert request.configurations == {
        "other": {"build": {"x": "1"}},
        "pyrun_backend": {"build": {"python": "3.10"}},
    }
    assert request.partition == "kernel-1"
    # An explicit partition wins over the body's, which wins over the default.
    body = {"modules": ["a"], "partition": "Body"}
    assert build_install_request([], (), "Line", body, "kernel-1").partition == "Line"
    assert build_install_request([], (), None, body, "kernel-1").partition == "Body"
    assert build_install_request(["a"]).partition == "Default"


def test_install_request_errors() -> None:
    with pytest.raises(SpecError, match="name at least one backend"):
        build_install_request([])
    with pytest.raises(ConfigurationError, match="not a configuration option"):
        build_install_request(["a"], ["a=1"])
    with pytest.raises(ConfigurationError, match="'configurations' must be an object"):
        build_install_request([], (), None, {"modules": ["a"], "configurations": ["x"]})
    with pytest.raises(SpecError, match="not a valid partition"):
        build_install_request(["a"], (), "../etc")


def test_the_body_given_is_not_changed() -> None:
    body = {"modules": ["a"], "configurations": {"a": {"build": {"x": "1"}}}}
    build_install_request([], ["a.build.y=2"], None, body)
    assert body == {"modules": ["a"], "configurations": {"a": {"build": {"x": "1"}}}}


def test_stop_targets() -> None:
    assert stop_target(None, None, True) == StopTarget(all=True)
    assert stop_target("echo", None, False) == StopTarget(name="echo")
    assert stop_target("echo", "P", False, version="1.0.0") == StopTarget("P", "echo", "1.0.0")
    with pytest.raises(SpecError, match="give it alone"):
        stop_target("echo", None, True)
    with pytest.raises(SpecError, match="give it alone"):
        stop_target(None, "P", True)
    with pytest.raises(SpecError, match="say what to stop"):
        stop_target(None, None, False)


def test_stopped_text_says_what_was_stopped_or_where_nothing_ran() -> None:
    stopped = [{"name": "echo", "version": "1.0.0", "partition": "P"}]
    assert format_stopped(stopped, StopTarget("P")) == "stopped echo 1.0.0 in partition P"
    assert format_stopped([], StopTarget("P", "echo")) == (
        "nothing was running there (no instance echo in partition P)"
    )
    assert format_stopped([], StopTarget(name="echo")) == (
        "nothing was running there (no instance echo in any partition)"
    )


def test_listing_and_status_text() -> None:
    listing = {
        "instances": [
            {
                "partition": "P",
                "name": "echo",
                "version": "1.0.0",
                "state": "ready",
                "config": {"greeting": "hi", "empty": ""},
                "pid": 42,
                "uptime": 3.4,
            }
        ],
        "environments": [],
    }
    text = format_listing(listing)
    assert text.splitlines()[:3] == [
        "Running instances:",
        "PARTITION  NAME  VERSION  STATE  CONFIG       PID  UPTIME",
        "P          echo  1.0.0    ready  greeting=hi  42   3s",
    ]
    assert text.endswith("Installed environments:\n(none)")
    assert table([], ["a"]) == "(none)"
    status = {"version": "0.1.0", "url": "http://127.0.0.1:1", "pid": 7, "uptime": 61.2}
    assert format_status(status).startswith(
        "orchestrator 0.1.0 at http://127.0.0.1:1 (pid 7, up 61s)"
    )
    removed = {"name": "echo", "version": "1.0.0", "fingerprint": "f00", "path": "/e"}
    assert format_removed({"removed": [removed]}) == "removed echo 1.0.0 (f00) from /e"
