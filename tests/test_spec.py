import pytest

from ywmagics.errors import ConfigurationError, SpecError
from ywmagics.spec import (
    BackendSpec,
    InstallRequest,
    VersionRange,
    is_semver,
    parse_config_option,
    validate_name,
    validate_partition,
    version_key,
)

VERSIONS = ["0.0.3", "0.1.0", "0.1.1", "0.1.5", "0.2.0", "1.0.0", "1.4.2", "2.0.0", "2.1.0-rc.1"]


@pytest.mark.parametrize(
    ("text", "best"),
    [
        ("^0.1.1", "0.1.5"),
        ("^0.0.3", "0.0.3"),
        ("^1.0.0", "1.4.2"),
        ("~0.1.0", "0.1.5"),
        ("~1", "1.4.2"),
        ("0.1.1", "0.1.1"),
        ("=0.2.0", "0.2.0"),
        ("*", "2.0.0"),
        ("latest", "2.0.0"),
        ("1.x", "1.4.2"),
        ("0.1", "0.1.5"),
        (">=0.1.1 <1", "0.2.0"),
        ("^3.0.0", None),
        ("", "2.0.0"),
        ("^0", "0.2.0"),
        ("^1.2.x", "1.4.2"),
        (">= 0.1.1 < 1", "0.2.0"),  # spaces after operators, as npm takes them
        ("1.0.0 - 1.4.0", "1.0.0"),  # a hyphen range (its upper end included)
        ("0.1 - 1", "1.4.2"),
        ("^0.1.0 || ^2.0.0", "2.0.0"),
        ("<1", "0.2.0"),  # no prerelease slips into a plain range
        ("2.1.0-rc.1", "2.1.0-rc.1"),  # an exact prerelease
        (">=2.0.0-rc.0", "2.0.0"),  # a prerelease only of the version the range names
        (">=2.1.0-rc.0", "2.1.0-rc.1"),
    ],
)
def test_ranges_resolve_like_npm(text: str, best: str | None) -> None:
    assert VersionRange.parse(text).best(VERSIONS) == best


def test_prereleases_follow_npms_rule() -> None:
    # A prerelease matches only a range that names a prerelease of the same MAJOR.MINOR.PATCH.
    beta = VersionRange.parse("^1.0.0-beta")
    assert beta.best(["1.0.0-beta.2", "1.1.0-rc.1"]) == "1.0.0-beta.2"
    assert not beta.matches("1.1.0-rc.1") and beta.matches("1.5.0")
    assert VersionRange.parse("latest").best(["1.0.0", "2.0.0-rc.1"]) == "1.0.0"
    assert VersionRange.parse("*").best(["2.0.0-rc.1"]) is None


def test_versions_that_are_not_semantic_are_ignored_not_guessed() -> None:
    assert VersionRange.parse("*").best(["1.0", "2.0.0.post1", "v3.0.0", "0.5.0"]) == "0.5.0"
    assert not VersionRange.parse("*").matches("2.1.0rc1")


@pytest.mark.parametrize(
    ("version", "strict"),
    [
        ("1.0.0", True),
        ("0.1.1", True),
        ("1.0.0-rc.1", True),
        ("1.0.0-beta.2.x-y", True),
        ("1", False),
        ("1.0", False),
        ("01.0.0", False),
        ("1.0.0.post1", False),
        ("v1.0.0", False),
        ("=1.0.0", False),
        ("1.0.0+build.5", False),  # build metadata would pass for another version in URLs
        (" 1.0.0", False),
        ("9007199254740992.0.0", False),
    ],
)
def test_manifest_versions_are_strict_semver(version: str, strict: bool) -> None:
    assert is_semver(version) is strict


def test_versions_sort_as_npm_sorts_them() -> None:
    versions = ["1.10.0", "1.9.0", "1.0.0", "1.0.0-rc.1", "0.2.0"]
    assert sorted(versions, key=version_key) == ["0.2.0", "1.0.0-rc.1", "1.0.0", "1.9.0", "1.10.0"]


@pytest.mark.parametrize("text", ["^abc", "1.2.3.4", "~x.y", ">=banana", "x.1", "1.x.3", "1 ||| 2"])
def test_bad_range_is_a_clear_error(text: str) -> None:
    with pytest.raises(SpecError, match="not a version range"):
        VersionRange.parse(text)


def test_spec_with_range_and_alias() -> None:
    spec = BackendSpec.parse("demo_yw_backend#^0.1.1 as ywDemoClient")
    assert (spec.name, str(spec.range), spec.alias) == ("demo_yw_backend", "^0.1.1", "ywDemoClient")
    for text, written in [
        ("d#>=1.0 <2 as x", ">=1.0 <2"),
        ("d#1.0.0 - 1.4.0 as x", "1.0.0 - 1.4.0"),
        ("d#^1 || ^2 as x", "^1 || ^2"),
        ("d # ^1", "^1"),
    ]:
        parsed = BackendSpec.parse(text)
        assert (parsed.name, str(parsed.range)) == ("d", written), text
        assert parsed.alias == ("x" if " as x" in text else "d")
    bare = BackendSpec.parse("pyrun_backend")
    assert (bare.alias, bare.range.best(["0.1.0", "0.2.0"])) == ("pyrun_backend", "0.2.0")


@pytest.mark.parametrize("text", ["", "../etc#1.0", "x#1.0 as 9bad", "a b c"])
def test_bad_specs_are_refused(text: str) -> None:
    with pytest.raises(SpecError):
        BackendSpec.parse(text)


def test_config_options() -> None:
    config = parse_config_option("pyrun_backend.build.python=3.10")
    parse_config_option("pyrun_backend.build.modules=numpy pandas", config)
    assert config == {"pyrun_backend": {"build": {"python": "3.10", "modules": "numpy pandas"}}}
    with pytest.raises(ConfigurationError, match=r"backend\.build\.option=value"):
        parse_config_option("pyrun_backend.python=3.10")
    with pytest.raises(ConfigurationError, match="only 'build'"):
        parse_config_option("pyrun_backend.run.python=3.10")


def test_install_object_form() -> None:
    request = InstallRequest.from_object(
        {
            "modules": ["pyrun_backend#^0.1.0 as pyRunner"],
            "configurations": {"pyrun_backend": {"build": {"python": "3.10", "modules": "numpy"}}},
            "partition": "Foo",
        }
    )
    assert request.partition == "Foo"
    assert request.modules[0].alias == "pyRunner"
    assert request.configurations["pyrun_backend"]["build"]["modules"] == "numpy"
    assert InstallRequest.from_object("demo_yw_backend").partition == "Default"
    assert InstallRequest.from_object(["a", "b as c"], partition="P").partition == "P"


@pytest.mark.parametrize(
    ("data", "error", "message"),
    [
        ({"modules": []}, SpecError, "nothing to install"),
        ({"modules": "x"}, SpecError, "'modules' must be a list of spec strings"),
        ({"modules": ["a as x", "b as x"]}, SpecError, "alias used twice: x"),
        ({"modules": ["a"], "partition": "../../etc"}, SpecError, "not a valid partition id"),
        ({"modules": ["a"], "surprise": 1}, SpecError, "unknown install field(s): surprise"),
        (
            {"modules": ["a"], "configurations": {"a": {"run": {}}}},
            ConfigurationError,
            "configuration of 'a' must look like",
        ),
        ({"modules": ["a"], "configurations": ["x"]}, ConfigurationError, "must be an object"),
        (
            {"modules": ["a"], "configurations": {"a": {"build": 3}}},
            ConfigurationError,
            "'build' of 'a' must be an object",
        ),
    ],
)
def test_bad_install_objects(data: dict[str, object], error: type[Exception], message: str) -> None:
    with pytest.raises(error) as raised:
        InstallRequest.from_object(data)
    assert type(raised.value) is error and message in str(raised.value)


@pytest.mark.parametrize("text", ["Foo\n", "Foo\r\n", "\nFoo", "Fo o", "", "-x", "x" * 65])
def test_partitions_and_names_are_matched_whole(text: str) -> None:
    with pytest.raises(SpecError, match="not a valid partition id"):
        validate_partition(text)
    with pytest.raises(SpecError, match="not a valid backend name"):
        validate_name(text)


@pytest.mark.parametrize("value", [None, 3, ["a"], {"a": 1}, True])
def test_names_and_partitions_must_be_strings(value: object) -> None:
    with pytest.raises(SpecError, match="not a valid partition id"):
        validate_partition(value)
    with pytest.raises(SpecError, match="not a valid backend name"):
        validate_name(value)


def test_a_spec_parses_in_linear_time_and_is_bounded() -> None:
    longest = "a#>=1.0" + " " * 386 + "<2 as b"
    assert len(longest) == 400 and str(BackendSpec.parse(longest)) == "a#>=1.0 <2 as b"
    with pytest.raises(SpecError, match="at most 400 characters"):
        BackendSpec.parse("a#1" + " " * 40_000 + "x")


def test_an_install_on_a_cluster_carries_checked_resources() -> None:
    request = InstallRequest.from_object(
        {"modules": ["pyrun_backend"], "on": "slurm", "resources": "cpus=16,mem=64G,gres=gpu:1"}
    )
    assert request.on == "slurm"
    assert request.resources == {"cpus": "16", "mem": "64G", "gres": "gpu:1"}
    assert InstallRequest.from_object(request.to_dict()) == request
    assert "on" not in InstallRequest.from_object("pyrun_backend").to_dict()  # as before


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"resources": {"cpus": "2"}}, "resources are asked of a cluster: give --on too"),
        ({"on": "slurm", "resources": {"nodes": "2"}}, "unknown resource 'nodes'"),
        ({"on": "slurm", "resources": {"mem": "1G --uid=0"}}, "is not a value a cluster takes"),
        ({"on": "slurm", "resources": {"mem": "--exclusive"}}, "is not a value a cluster takes"),
        ({"on": "slurm", "resources": "cpus"}, "'cpus' is not NAME=VALUE"),
        ({"on": "../x"}, "invalid cluster name"),
    ],
)
def test_bad_placement_input_is_refused(data: dict[str, object], message: str) -> None:
    with pytest.raises(SpecError, match=message):
        InstallRequest.from_object({"modules": ["pyrun_backend"], **data})
