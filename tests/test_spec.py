import pytest

from ywmagics.errors import ConfigurationError, SpecError
from ywmagics.spec import BackendSpec, InstallRequest, VersionRange, parse_config_option

VERSIONS = ["0.0.3", "0.1.0", "0.1.1", "0.1.5", "0.2.0", "1.0.0", "1.4.2", "2.0.0", "2.1.0rc1"]


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
    ],
)
def test_ranges_resolve_like_npm(text: str, best: str | None) -> None:
    assert VersionRange.parse(text).best(VERSIONS) == best


@pytest.mark.parametrize("text", ["^abc", "1.2.3.4", "~x.y", ">=banana"])
def test_bad_range_is_a_clear_error(text: str) -> None:
    with pytest.raises(SpecError, match="not a version range"):
        VersionRange.parse(text)


def test_spec_with_range_and_alias() -> None:
    spec = BackendSpec.parse("demo_yw_backend#^0.1.1 as ywDemoClient")
    assert (spec.name, str(spec.range), spec.alias) == ("demo_yw_backend", "^0.1.1", "ywDemoClient")
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
    "data",
    [
        {"modules": []},
        {"modules": "x"},
        {"modules": ["a as x", "b as x"]},
        {"modules": ["a"], "partition": "../../etc"},
        {"modules": ["a"], "surprise": 1},
        {"modules": ["a"], "configurations": {"a": {"run": {}}}},
    ],
)
def test_bad_install_objects(data: dict[str, object]) -> None:
    with pytest.raises((SpecError, ConfigurationError)):
        InstallRequest.from_object(data)
