"""Manifests (``ywbackend.toml``): what loads, and a clear error naming the file for the rest."""

from __future__ import annotations

from pathlib import Path

import pytest

from ywmagics.errors import BackendNotFound, ManifestError
from ywmagics.orchestrator.manifest import Listen, Network, Runtime, expand, load_manifest
from ywmagics.orchestrator.registry import Registry
from ywmagics.spec import VersionRange

from .conftest import TEST_REGISTRY

MINIMAL = 'name = "mine"\nversion = "1.2.3"\ndescription = "d"\nstart = ["./serve", "{socket}"]\n'
BUNDLED = Path(__file__).parents[1] / "ywmagics" / "backends"


def _write(tmp_path: Path, text: str) -> Path:
    folder = tmp_path / "mine"
    folder.mkdir(exist_ok=True)
    path = folder / "ywbackend.toml"
    path.write_text(text)
    return path


def test_a_minimal_manifest_and_its_defaults(tmp_path: Path) -> None:
    manifest = load_manifest(_write(tmp_path, MINIMAL))
    assert (manifest.name, manifest.version, manifest.description) == ("mine", "1.2.3", "d")
    assert manifest.runtime is Runtime.COMMAND and manifest.listen is Listen.UNIX
    assert manifest.network is Network.PRIVATE
    assert manifest.start == ("./serve", "{socket}")
    assert (manifest.readiness, manifest.ready_timeout) == ("/", 30.0)
    assert manifest.requirements == () and manifest.install == () and manifest.build == {}
    assert len(manifest.digest) == 16


def test_every_manifest_we_ship_or_test_with_loads() -> None:
    files = [*BUNDLED.glob("*/ywbackend.toml"), *TEST_REGISTRY.glob("**/ywbackend.toml")]
    files.append(BUNDLED.parent / "templates" / "python_backend" / "ywbackend.toml")
    assert len(files) >= 10
    for file in files:
        assert load_manifest(file).folder == file.parent


def test_the_digest_follows_the_backends_files(tmp_path: Path) -> None:
    path = _write(tmp_path, MINIMAL)
    first = load_manifest(path).digest
    (path.parent / "serve").write_text("#!/bin/sh\n")
    assert load_manifest(path).digest != first


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("name = [", "not valid TOML"),
        ("colour = 'red'", "unknown key(s): colour"),
        ("name = 3", "'name' must be a string"),
        ("name = '../etc'", "is not a valid backend name"),
        ("version = '1.x'", "is not a semantic version"),
        ("runtime = 'java'", "'runtime' must be one of 'python', 'command', got 'java'"),
        ("listen = 'udp'", "'listen' must be one of 'unix', 'tcp'"),
        ("network = 'open'", "'network' must be one of 'private', 'shared'"),
        ("requirements = 'numpy'", "'requirements' must be a list of strings"),
        ("install = 'make'", "'install' must be a list of commands"),
        ("install = [[]]", "'install' must be a non-empty list of strings"),
        ("readiness = 'health'", "'readiness' must be a path starting with '/'"),
        ("ready_timeout = 'soon'", "'ready_timeout' must be a number of seconds"),
        ("ready_timeout = 0", "'ready_timeout' must be more than 0 seconds"),
        ("env = 'A=1'", "[env] must be a table"),
        ("[env]\nA = 1", "[env] values must be strings"),
        ("build = 1", "[build] must be a table"),
        ("[build.python]\ndefault = true", "'default' must be a string or a number"),
        ("[build.python]\nhelp = 3", "'help' a string"),
        ("[build.python]\ndefualt = ''", "must be a table with 'default' and 'help'"),
        ("[env]\nA = '{nope}'", "unknown placeholder {nope}"),
        ("home = 'docs'", "'home' must be a path of the backend"),
        ("home = '//evil.example/'", "'home' must be a path of the backend"),
        ("home = '/a//b'", "'home' must be a path of the backend"),
        ("home = '/\\\\evil'", "'home' must be a path of the backend"),
        ("home = '/x\"><img src=x onerror=alert(1)>'", "'home' must be a path of the backend"),
        ("home = '/ui page'", "'home' must be a path of the backend"),
        # install steps run before any instance: no data folder, socket or port yet
        ("install = [['cp', 'x', '{data}/x']]", "unknown placeholder {data}"),
        ("install = [['echo', '{port}']]", "unknown placeholder {port}"),
    ],
)
def test_a_wrong_manifest_says_what_and_where(tmp_path: Path, change: str, message: str) -> None:
    key = change.split("=")[0].strip()
    lines = [line for line in MINIMAL.splitlines() if not line.startswith(key + " ")]
    path = _write(tmp_path, "\n".join(lines) + "\n" + change + "\n")
    with pytest.raises(ManifestError) as raised:
        load_manifest(path)
    assert message in raised.value.message and str(path) in raised.value.message


@pytest.mark.parametrize("missing", ["name", "version", "description", "start"])
def test_a_missing_required_key_is_named(tmp_path: Path, missing: str) -> None:
    text = "".join(
        line + "\n" for line in MINIMAL.splitlines() if not line.startswith(missing + " ")
    )
    with pytest.raises(ManifestError, match=f"'{missing}'"):
        load_manifest(_write(tmp_path, text))


def test_start_is_an_argv_not_a_shell_line(tmp_path: Path) -> None:
    text = MINIMAL.replace('start = ["./serve", "{socket}"]', 'start = "./serve {socket}"')
    with pytest.raises(ManifestError, match="an argv, no shell"):
        load_manifest(_write(tmp_path, text))


def test_placeholders_of_build_options_and_literal_braces() -> None:
    values = {"build.python": "3.10", "socket": "/s"}
    assert expand("{build.python}:{socket}:{{x}}", values) == "3.10:/s:{x}"
    with pytest.raises(ManifestError, match=r"placeholders: \{build.python\}, \{socket\}"):
        expand("{port}", values)
    with pytest.raises(ManifestError, match="bad placeholder"):
        expand("{unclosed", values)


def test_a_number_is_a_default_as_a_typed_value_would_be(tmp_path: Path) -> None:
    manifest = load_manifest(_write(tmp_path, MINIMAL + "[build.workers]\ndefault = 4\n"))
    assert manifest.build["workers"].default == "4"


def test_a_broken_manifest_is_named_when_its_backend_is_asked_for(tmp_path: Path) -> None:
    _write(tmp_path, MINIMAL.replace('version = "1.2.3"', 'version = "1.2"'))
    registry = Registry([tmp_path])
    with pytest.raises(ManifestError, match=r"the manifest of .mine. is wrong: .* not a semantic"):
        registry.resolve("mine", VersionRange.parse("*"))
    with pytest.raises(BackendNotFound, match="unknown backend 'other'"):
        registry.resolve("other", VersionRange.parse("*"))


def test_placeholders_expand_inside_longer_strings_and_data_is_known_at_start(
    tmp_path: Path,
) -> None:
    text = MINIMAL.replace('"{socket}"]', '"--db={data}/db.sqlite", "{socket}"]')
    manifest = load_manifest(_write(tmp_path, text + 'home = "/ui"\n[env]\nDATA = "{data}/x"\n'))
    assert manifest.home == "/ui"
    assert expand(manifest.start[1], {"data": "/d"}) == "--db=/d/db.sqlite"


@pytest.mark.parametrize("home", ["/", "/ui/", "/docs?tab=2#top", "/-/versions.json", "/%7Euser/"])
def test_a_home_page_is_any_path_of_the_backend(tmp_path: Path, home: str) -> None:
    assert load_manifest(_write(tmp_path, MINIMAL + f"home = {home!r}\n")).home == home


def test_tool_caches_in_a_backend_folder_are_not_the_backend(tmp_path: Path) -> None:
    from ywmagics.orchestrator.manifest import _folder_digest, folder_signature

    (tmp_path / "app.py").write_text("print('hi')\n")
    before = folder_signature(tmp_path), _folder_digest(tmp_path)
    for cache in (".mypy_cache", ".ruff_cache", "__pycache__", "node_modules", ".git"):
        (tmp_path / cache / "deep").mkdir(parents=True)
        (tmp_path / cache / "deep" / "entry").write_text("rewritten by a tool")
    # A mypy run in the folder must not make the backend look edited (it would be rebuilt).
    assert (folder_signature(tmp_path), _folder_digest(tmp_path)) == before
    (tmp_path / "app.py").write_text("print('edited')\n")
    assert _folder_digest(tmp_path) != before[1]
