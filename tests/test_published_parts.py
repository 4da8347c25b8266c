"""The parts of published backends that need no index: names, where the user's index is said,
what a wheel must hold (test_published.py runs them against a real index)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ywmagics.errors import InstallError, ManifestError, SpecError
from ywmagics.orchestrator.published.pypi import (
    DEFAULT_INDEX,
    PackageIndex,
    _extract_backend,
    index_url,
)
from ywmagics.spec import BackendSpec, VersionRange, validate_name

from .package_index import make_wheel


def test_a_published_name_is_normalized_and_its_alias_is_an_identifier() -> None:
    assert validate_name("pypi:Yw_Weather") == "pypi:yw-weather"
    spec = BackendSpec.parse("pypi:Yw.Weather#^1.2")
    assert (spec.name, spec.alias, str(spec.range)) == ("pypi:yw-weather", "yw_weather", "^1.2")
    for wrong in ("pypi:", "pypi:-x", "pypi:a/b", "pypi:a b"):
        with pytest.raises(SpecError):
            validate_name(wrong)


def test_the_index_is_the_one_the_users_tools_use(tmp_path: Path) -> None:
    home = {"XDG_CONFIG_HOME": str(tmp_path / "config")}
    assert index_url({**home, "PIP_INDEX_URL": "https://pip.example/simple/"}) == (
        "https://pip.example/simple",
        "PIP_INDEX_URL",
    )
    both = {**home, "UV_DEFAULT_INDEX": "https://uv.example/simple", "PIP_INDEX_URL": "x"}
    assert index_url(both)[1] == "UV_DEFAULT_INDEX"
    uv_toml = tmp_path / "config" / "uv" / "uv.toml"
    uv_toml.parent.mkdir(parents=True)
    uv_toml.write_text(
        '[[index]]\nurl = "https://other.example/simple"\n\n'
        '[[index]]\nurl = "https://team.example/simple"\ndefault = true\n'
    )
    assert index_url(home) == ("https://team.example/simple", str(uv_toml))
    uv_toml.unlink()
    pip_conf = tmp_path / "pip.conf"
    pip_conf.write_text("[global]\nindex-url = https://mirror.example/simple\n")
    assert index_url({**home, "PIP_CONFIG_FILE": str(pip_conf)}) == (
        "https://mirror.example/simple",
        str(pip_conf),
    )


def test_an_index_that_cannot_be_reached_is_said_with_where_it_was_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("UV_DEFAULT_INDEX", "http://127.0.0.1:9/simple")
    with pytest.raises(InstallError) as unreachable:
        PackageIndex(tmp_path).resolve("pypi:yw-weather", VersionRange.parse("^1"))
    message = unreachable.value.message
    assert message.startswith("cannot reach the package index http://127.0.0.1:9/simple")
    assert "(from UV_DEFAULT_INDEX)" in message
    assert "UV_DEFAULT_INDEX, PIP_INDEX_URL, uv.toml, pip.conf" in unreachable.value.hint
    assert DEFAULT_INDEX == "https://pypi.org/simple"  # named when nothing is set


def test_a_wheel_must_name_a_package_that_holds_the_manifest(tmp_path: Path) -> None:
    files = {"yw_x/__init__.py": "", "yw_x/ywbackend.toml": "name = 'yw-x'"}
    no_entry = make_wheel(tmp_path / "a", "yw-x", "1.0.0", files)
    with pytest.raises(ManifestError, match=r"has no 'ywmagics\.backends' entry point"):
        _extract_backend(no_entry, tmp_path / "out-a", "pypi:yw-x", "1.0.0")
    elsewhere = make_wheel(tmp_path / "b", "yw-x", "1.0.0", files, entry_point="yw_y")
    with pytest.raises(ManifestError, match=r"names 'yw_y', which has no ywbackend\.toml"):
        _extract_backend(elsewhere, tmp_path / "out-b", "pypi:yw-x", "1.0.0")
    escaping = make_wheel(
        tmp_path / "c", "yw-x", "1.0.0", {**files, "yw_x/../../evil": "x"}, entry_point="yw_x"
    )
    with pytest.raises(ManifestError, match="refused"):
        _extract_backend(escaping, tmp_path / "out-c", "pypi:yw-x", "1.0.0")
    assert not (tmp_path / "evil").exists()
    good = make_wheel(tmp_path / "d", "yw-x", "1.0.0", files, entry_point="yw_x")
    _extract_backend(good, tmp_path / "out-d", "pypi:yw-x", "1.0.0")
    assert sorted(p.name for p in (tmp_path / "out-d").iterdir()) == [
        "__init__.py",
        "ywbackend.toml",
    ]


def _page(text: str, content_type: str) -> object:
    from ywmagics.orchestrator.published.pypi import _Page

    return _Page(200, {"content-type": content_type}, text, "http://i/")


def test_yanked_files_and_odd_names_are_marked_or_left_out() -> None:
    from ywmagics.orchestrator.published.pypi import _files_of

    html = (
        '<a href="/f/yw_x-1.0.0-py3-none-any.whl#sha256=ab">yw_x-1.0.0-py3-none-any.whl</a>'
        '<a href="/f/yw_x-1.1.0-py3-none-any.whl" data-yanked="bad">yw_x-1.1.0-py3-none-any.whl</a>'
        '<a href="/f/x.whl">../../x-1.0.0-py3-none-any.whl</a>'
    )
    files = _files_of(_page(html, "text/html"), "http://i/simple/yw-x/")
    assert [(f.filename, f.sha256, f.yanked) for f in files] == [
        ("yw_x-1.0.0-py3-none-any.whl", "ab", False),
        ("yw_x-1.1.0-py3-none-any.whl", None, True),
    ]
    page = (
        '{"files": [{"filename": "yw_x-1.1.0-py3-none-any.whl", "url": "a.whl", '
        '"hashes": {"sha256": "cd"}, "yanked": "reason"}]}'
    )
    (file,) = _files_of(_page(page, "application/vnd.pypi.simple.v1+json"), "http://i/s/")
    assert (file.url, file.sha256, file.yanked) == ("http://i/s/a.whl", "cd", True)


def test_an_index_url_is_recorded_without_its_credentials() -> None:
    from ywmagics.orchestrator.published.cache import public_url

    assert (
        public_url("https://__token__:s3cret@pypi.example/simple") == "https://pypi.example/simple"
    )
    assert public_url("https://pypi.example/simple") == "https://pypi.example/simple"


@pytest.mark.slow  # a second of a server that trickles
def test_an_index_that_trickles_its_page_is_given_up_in_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import http.server
    import threading
    import time

    from ywmagics.orchestrator.published import pypi

    class Trickle(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.end_headers()
            for _ in range(50):  # a byte every 0.1 s: no read ever times out
                self.wfile.write(b"x")
                self.wfile.flush()
                time.sleep(0.1)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Trickle)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setattr(pypi, "PAGE_DEADLINE", 0.5)
    monkeypatch.setenv("UV_DEFAULT_INDEX", f"http://127.0.0.1:{server.server_port}/simple")
    started = time.monotonic()
    try:
        with pytest.raises(InstallError, match=r"its page was not read in 0\.5 s"):
            PackageIndex(Path("/nonexistent")).resolve("pypi:yw-x", VersionRange.parse("^1"))
        assert time.monotonic() - started < 3
    finally:
        server.shutdown()
        server.server_close()
