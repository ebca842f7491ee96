"""`visionlab app`: a folder with no model is refused in one line; the server binds to
localhost unless told otherwise."""

from __future__ import annotations

from pathlib import Path

import pytest

from visionlab.app import serve
from visionlab.cli import main


def test_a_folder_without_models_is_refused_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    (tmp_path / "notes.txt").write_text("no model here", encoding="utf-8")
    assert main(["app", "--checkpoints", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"no model under {tmp_path}" in err


def test_the_server_binds_to_localhost_by_default(app_models: Path) -> None:
    import urllib.request

    with serve([app_models], port=7872) as url:
        assert url.startswith("http://127.0.0.1:7872")
        with urllib.request.urlopen(url, timeout=30) as page:
            assert b"visionlab" in page.read()
