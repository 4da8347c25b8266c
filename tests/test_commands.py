"""The command layer shared by ``ywmagics`` and ``%backends``: requests from what users type, and
the text of answers."""

from __future__ import annotations

import pytest

from ywmagics.commands import (
    Age,
    StopTarget,
    build_install_request,
    format_elapsed,
    format_gc,
    format_listing,
    format_listing_html,
    format_removed,
    format_size,
    format_status,
    format_stopped,
    group_specs,
    parse_age,
    parse_install_object,
    placement_text,
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
    # One on a cluster: a column says where each runs.
    listing["instances"].append(
        {**listing["instances"][0], "partition": "Q", "on": "slurm", "job": "12", "node": "n1"}
    )
    assert [line.rsplit("  ", 1)[-1] for line in format_listing(listing).splitlines()[1:4]] == [
        "WHERE",
        "here",
        "slurm job 12 on n1",
    ]
    queued = {"on": "big", "job": "13", "job_state": "PENDING"}
    assert placement_text(queued) == "big job 13 (pending)"
    # An environment that a cluster's nodes build: its Python is theirs, found there.
    listing["environments"] = [
        {
            "name": "r",
            "version": "1",
            "fingerprint": "f",
            "config": {},
            "python_version": None,
            "node": "far",
        }
    ]
    assert "  built on far's nodes  " in format_listing(listing).splitlines()[-1]
    assert table([], ["a"]) == "(none)"
    status = {"version": "0.1.0", "protocol": 1, "url": "http://127.0.0.1:1", "pid": 7}
    assert format_status({**status, "uptime": 61.2}).startswith(
        "orchestrator 0.1.0 (protocol 1) at http://127.0.0.1:1 (pid 7, up 61s)"
    )
    # The versions that meet on it: each kernel's ywmagics, each runner's codec and builder.
    meeting = {
        **status,
        "codec": 2,
        "attached": [{"pid": 11, "version": "0.1.0"}, {"pid": 12, "version": ""}],
        "runners": [
            {"partition": "p", "name": "r", "version": "1", "codec": 2, "built_by": "0.2.0"},
            {"partition": "q", "name": "s", "version": "1", "codec": 1, "built_by": "0.1.0"},
        ],
    }
    assert format_status(meeting).splitlines()[2:] == [
        "kernels attached: 11 (ywmagics 0.1.0), 12 (ywmagics ?)",
        "runner r 1 in p: codec 2, built by ywmagics 0.2.0",
        "runner s 1 in q: codec 1, built by ywmagics 0.1.0 (the orchestrator's codec is 2)",
    ]
    removed = {"name": "echo", "version": "1.0.0", "fingerprint": "f00", "path": "/e"}
    assert format_removed({"removed": [removed]}) == "removed echo 1.0.0 (f00) from /e"
    on_nodes = {**removed, "node": "far"}
    assert format_removed({"removed": [on_nodes]}).endswith(
        "; the copies its nodes built stay in the node_dir of 'far'"
    )


@pytest.mark.parametrize(
    ("text", "days", "said"),
    [
        ("30d", 30, "30 days"),
        ("1d", 1, "1 day"),
        ("12h", 0.5, "12 hours"),
        ("90min", 90 / 1440, "90 minutes"),
        ("2w", 14, "2 weeks"),
        ("7", 7, "7 days"),  # a bare number: days
        ("0d", 0, "0 days"),
        ("1.5h", 1.5 / 24, "1.5 hours"),
        (" 3 Days ", 3, "3 days"),
        ("10min", 10 / 1440, "10 minutes"),
    ],
)
def test_ages_as_typed(text: str, days: float, said: str) -> None:
    age = parse_age(text)
    assert age.days == pytest.approx(days)
    assert str(age) == said


@pytest.mark.parametrize(
    "text",
    ["soon", "", "-3d", "30x", "d", "3d4h", "1e3", "inf", "30 d d", "6m", "\u0661\u0662d"],
)
def test_ages_that_are_not(text: str) -> None:
    # 6m: minutes or months? Not said on a command that removes things. Only ASCII digits.
    with pytest.raises(SpecError, match="is not a duration") as raised:
        parse_age(text)
    assert "30d (days), 12h (hours), 90min (minutes), 2w (weeks)" in raised.value.hint


def test_an_age_past_what_the_orchestrator_takes_is_said_plainly() -> None:
    with pytest.raises(SpecError, match="'100001' is more than 100000 days"):
        parse_age("100001")


def test_sizes_and_durations_for_people() -> None:
    assert [format_size(n) for n in (0, 512, 1536, 45.2 * 2**20, 3 * 2**30, 5 * 2**40)] == [
        "0 B",
        "512 B",
        "1.5 KiB",
        "45.2 MiB",
        "3.0 GiB",
        "5.0 TiB",
    ]
    assert [
        format_elapsed(s)
        for s in (-1, 42.9, 300, 3600, 3 * 3600 + 720, 86400, 2 * 86400 + 3 * 3600)
    ] == [
        "0 s",
        "42 s",
        "5 min",
        "1 h",
        "3 h 12 min",
        "1 day",
        "2 days 3 h",
    ]


NOW = 1_700_000_000.0


def _environment(**changes: object) -> dict[str, object]:
    return {
        "name": "echo",
        "version": "1.0.0",
        "fingerprint": "f00",
        "config": {},
        "python_version": "3.11.9",
        "path": "/envs/echo",
        "created": NOW - 90 * 86400,
        "last_used": NOW - 31 * 86400,
        "size": 45 * 2**20,
        "in_use": [],
        **changes,
    }


def test_gc_says_what_went_and_what_it_freed() -> None:
    month = Age(30, "day")
    assert format_gc({"removed": [], "kept": [_environment()]}, month, dry_run=False, now=NOW) == (
        "nothing unused for more than 30 days"
    )
    assert format_gc({"removed": []}, Age(12, "hour"), dry_run=True, now=NOW) == (
        "nothing unused for more than 12 hours"
    )
    two = [_environment(), _environment(name="other", size=2**20, path="/envs/other")]
    assert format_gc({"removed": two, "kept": []}, month, dry_run=False, now=NOW).splitlines() == [
        "removed echo 1.0.0 (f00), last used 31 days ago, 45.0 MiB: /envs/echo",
        "removed other 1.0.0 (f00), last used 31 days ago, 1.0 MiB: /envs/other",
        "freed 46.0 MiB (2 environments)",
    ]
    unknown = [_environment(size=None)]
    assert format_gc({"removed": unknown}, month, dry_run=True, now=NOW).splitlines() == [
        "would remove echo 1.0.0 (f00), last used 31 days ago, size not known yet: /envs/echo",
        "would free an unknown amount (1 environment)",
    ]
    some = format_gc({"removed": [*unknown, *two]}, month, dry_run=False, now=NOW)
    assert some.splitlines()[-1] == "freed at least 46.0 MiB (3 environments)"


def _instance(**changes: object) -> dict[str, object]:
    return {
        "partition": "P",
        "name": "echo",
        "version": "1.0.0",
        "state": "ready",
        "given_up": False,
        "config": {"greeting": "hi"},
        "pid": 42,
        "uptime": 3725.0,
        "restarts": 2,
        "installed_by": "alias 'e' of kernel 1234",
        "cpu_percent": 1.5,
        "rss": 68 * 2**20,
        **changes,
    }


def test_listing_html_has_the_dashboards_facts() -> None:
    listing = {"instances": [_instance()], "environments": [_environment()]}
    bound = [{"alias": "e", "name": "echo", "version": "1.0.0", "partition": "P"}]
    page = format_listing_html(listing, now=NOW, bound=bound, partition="kernel-1")
    for title in (
        "partition", "name", "version", "state", "configuration", "pid", "uptime", "restarts",
        "installed by", "CPU", "memory", "fingerprint", "python", "size", "last used", "alias",
    ):  # fmt: skip
        assert f">{title}</th>" in page, title
    for cell in (
        "ready", "greeting=hi", "42", "1 h 2 min", "2", "alias &#x27;e&#x27; of kernel 1234",
        "2 %", "68.0 MiB", "f00", "3.11.9", "45.0 MiB", "31 days ago",
    ):  # fmt: skip
        assert f">{cell}</td>" in page, cell
    assert "45.0 MiB on disk" in page
    assert "This kernel's partition: <code>kernel-1</code>" in page
    # Without sizes or last uses (an older orchestrator), those columns are left out.
    older = {
        "environments": [
            {k: v for k, v in _environment().items() if k not in ("size", "last_used")}
        ]
    }
    page = format_listing_html({"instances": [], **older}, now=NOW)
    assert ">size</th>" not in page and ">last used</th>" not in page and "on disk" not in page
    assert ">CPU</th>" not in page


def test_listing_html_escapes_what_users_wrote() -> None:
    evil = "<script>alert(1)</script>"
    listing = {
        "instances": [
            _instance(config={"x": evil}, installed_by=evil, given_up=True, state="failed")
        ],
        "environments": [_environment(config={"q": '"><img src=x onerror=alert(1)>'})],
    }
    bound = [{"alias": "a", "name": evil, "version": "1", "partition": "P&Q"}]
    page = format_listing_html(listing, now=NOW, bound=bound, partition="<b>")
    assert "<script>" not in page and "<img" not in page and "<b>" not in page
    assert "x=&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&quot;&gt;&lt;img src=x onerror=alert(1)&gt;" in page
    assert ">P&amp;Q</td>" in page and "<code>&lt;b&gt;</code>" in page
    assert ">failed (given up)</td>" in page


def test_listing_html_of_nothing() -> None:
    page = format_listing_html({"instances": [], "environments": []}, now=NOW)
    assert page.count("<p><em>none</em></p>") == 2
    assert "<table" not in page and "Bound in this notebook" not in page
    assert "partition:" not in page
