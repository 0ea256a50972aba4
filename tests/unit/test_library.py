"""The library against a hostile or damaged folder and index (issue 10.2, 10.6, 10.8, 10.9).

Signatures are the integration tests' business: here ``check`` says every image is
signed by "site", so what is tested is what the library does around it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from sms_services.cli import main as cli
from sms_services.errors import UserError
from sms_services.files import sha256_file
from sms_services.trust import library as lib_mod
from sms_services.trust.library import DirectoryLibrary, OrasLibrary
from sms_services.trust.signing import Signer, Trust

SITE = Signer("site", "sha256:" + "ab" * 32, "ec")
LABELS = {"sms-services.release": "3.5", "sms-services.slurm.installed": "24.11.5"}


class FakeApptainer:
    """Records what would be run; ``pull`` writes the image where it is told."""

    def __init__(self, image: bytes = b"") -> None:
        self.calls: list[list[str]] = []
        self.image = image

    def run(self, args: list[str], **kw):
        from sms_services.apptainer import Result

        self.calls.append(args)
        if args[0] == "pull":
            Path(args[-2]).unlink(missing_ok=True)  # --force
            Path(args[-2]).write_bytes(self.image)
        return Result(0, "", "")

    def labels(self, image: Path) -> dict[str, str]:
        return dict(LABELS)


@pytest.fixture(autouse=True)
def signed(monkeypatch) -> None:
    def check(apptainer, sif, trust, warn=None):
        if not Path(sif).is_file():
            raise UserError(f"{sif}: no such SIF")
        return SITE

    monkeypatch.setattr(lib_mod, "check", check)
    monkeypatch.setattr("sms_services.apptainer.Apptainer.find", classmethod(lambda cls: FakeApptainer()))


def sif(tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"{name}.sif"
    path.write_bytes(f"SIF {name}".encode() * 1000)
    return path


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    v = tmp_path / "outside" / "shadow"
    v.parent.mkdir()
    v.write_text("root:*:19000\n")
    v.chmod(0o640)
    return v


def untouched(victim: Path) -> bool:
    return victim.read_text() == "root:*:19000\n" and (victim.stat().st_mode & 0o777) == 0o640


def publish(lib: DirectoryLibrary, image: Path, release: str = "3.5", labels: dict | None = None, tags=()):
    return lib.publish(image, release, Trust.release([]), tags=list(tags), verify_report=None,
                       labels=labels if labels is not None else LABELS)


# --- 10.2 and 10.6: what a publish writes -------------------------------------------

def test_publish_follows_no_link_planted_at_the_old_temporary_name(tmp_path: Path, victim: Path) -> None:
    lib = DirectoryLibrary(tmp_path / "lib", FakeApptainer())
    folder = tmp_path / "lib" / "sms-services" / "3.5"
    folder.mkdir(parents=True)
    (folder / f".1.sif.{os.getpid()}.partial").symlink_to(victim)
    (tmp_path / "lib" / ".index.json.partial").symlink_to(victim)
    entry = publish(lib, sif(tmp_path, "a"))
    assert untouched(victim)
    published = folder / "1.sif"
    assert entry.version == "1" and not published.is_symlink()
    assert sha256_file(published) == sha256_file(tmp_path / "a.sif")
    assert published.stat().st_mode & 0o222 == 0
    # Nor is the lock opened through a link (it would create the file it names).
    (tmp_path / "lib" / ".lock").unlink()
    (tmp_path / "lib" / ".lock").symlink_to(tmp_path / "outside" / "nologin")
    with pytest.raises(UserError, match="lock"):
        publish(lib, sif(tmp_path, "b"))
    assert not (tmp_path / "outside" / "nologin").exists()


def test_a_version_file_is_never_replaced_whatever_the_index_says(tmp_path: Path, victim: Path) -> None:
    root = tmp_path / "lib"
    lib = DirectoryLibrary(root, FakeApptainer())
    a, b, c, d = (sif(tmp_path, n) for n in "abcd")
    publish(lib, a)
    older = (root / "index.json").read_text()
    publish(lib, b)
    (root / "index.json").write_text(older)  # an older copy put back
    assert publish(lib, c).version == "3"
    (root / "index.json").unlink()  # lost
    assert publish(lib, d).version == "4"
    files = root / "sms-services" / "3.5"
    assert [sha256_file(files / f"{n}.sif") for n in "1234"] == [sha256_file(p) for p in (a, b, c, d)]
    # A planted link at the next version's name is not written through either.
    (files / "5.sif").symlink_to(victim)
    assert publish(lib, sif(tmp_path, "e")).version == "6"
    assert untouched(victim)
    # Republishing after the loss lists the file that has those bytes again, not a copy.
    assert publish(lib, a).version == "1"
    assert sorted(p.name for p in files.iterdir()) == ["1.sif", "2.sif", "3.sif", "4.sif", "5.sif", "6.sif"]


def test_publish_checks_the_release_label(tmp_path: Path) -> None:
    lib = DirectoryLibrary(tmp_path / "lib", FakeApptainer())
    with pytest.raises(UserError, match=r"built as release 3.5 .* not 3.0; publish it as 3.5"):
        publish(lib, sif(tmp_path, "a"), release="3.0")
    with pytest.raises(UserError, match="no sms-services.release label"):
        publish(lib, sif(tmp_path, "a"), labels={})
    assert lib.entries() == []
    oras = OrasLibrary("oras://registry.example/sms", FakeApptainer())
    with pytest.raises(UserError, match="not 3.0"):
        oras.publish(sif(tmp_path, "a"), "3.0", Trust.release([]), tags=[], labels=LABELS)


# --- 10.6: pull hands out only files inside the library -------------------------------

def published_lib(tmp_path: Path) -> tuple[DirectoryLibrary, dict]:
    lib = DirectoryLibrary(tmp_path / "lib", FakeApptainer())
    publish(lib, sif(tmp_path, "a"), tags=["stable"])
    return lib, json.loads((tmp_path / "lib" / "index.json").read_text())


def test_pull_refuses_an_index_entry_pointing_out_of_the_library(tmp_path: Path) -> None:
    lib, index = published_lib(tmp_path)
    outside = tmp_path / "elsewhere.sif"
    outside.write_bytes(b"an image the index should not vouch for")
    index["entries"][0].update(path="sms-services/3.5/../../../elsewhere.sif", sha256=sha256_file(outside))
    (tmp_path / "lib" / "index.json").write_text(json.dumps(index))
    with pytest.raises(UserError, match="corrupt library index .*path"):
        lib.pull("3.5:stable", Trust.release([]))


@pytest.mark.parametrize("link", ["sms-services", "sms-services/3.5", "sms-services/3.5/1.sif"])
def test_pull_refuses_a_linked_folder_or_file(tmp_path: Path, link: str) -> None:
    lib, _ = published_lib(tmp_path)
    root = tmp_path / "lib"
    assert lib.pull("3.5", Trust.release([]))[0] == root / "sms-services/3.5/1.sif"
    # The same bytes moved out of the library and linked back in.
    away = tmp_path / "away"
    (root / link).rename(away)
    (root / link).symlink_to(away)
    with pytest.raises(UserError, match="link") as err:
        lib.pull("3.5:stable", Trust.release([]))
    assert "\n" not in str(err.value)


def test_the_library_root_itself_may_be_a_link(tmp_path: Path) -> None:
    lib, _ = published_lib(tmp_path)
    (tmp_path / "current").symlink_to(tmp_path / "lib")  # the admin's choice: followed
    path, _ = DirectoryLibrary(tmp_path / "current", FakeApptainer()).pull("3.5", Trust.release([]))
    assert path == tmp_path / "current/sms-services/3.5/1.sif"


# --- 10.9: a damaged index is one line ------------------------------------------------

def one_line(capsys, *args: str) -> str:
    rc = cli.main(list(args))
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1, err
    return err


@pytest.mark.parametrize("damage, says", [
    (lambda index: [], "a JSON list where an object belongs"),
    (lambda index: None, "a JSON null where an object belongs"),
    (lambda index: {**index, "entries": [{k: v for k, v in index["entries"][0].items() if k != "sha256"}]},
     "entries[0] lacks sha256"),
    (lambda index: {**index, "entries": [{**index["entries"][0], "owner": "x"}]}, "unknown field owner"),
    (lambda index: {**index, "tags": {"stable": "3.5:1"}}, "tag 'stable' is not RELEASE:TAG"),
    (lambda index: {**index, "tags": {"3.5:stable": "3.5:9"}}, "points at '3.5:9', which is not published"),
    (lambda index: {**index, "entries": [{**index["entries"][0], "size": "big"}]}, "size is not a byte count"),
])
def test_a_damaged_index_is_one_line(capsys, tmp_path: Path, damage, says: str) -> None:
    _, index = published_lib(tmp_path)
    (tmp_path / "lib" / "index.json").write_text(json.dumps(damage(index)))
    for args in (["library", "list"], ["pull", "3.5"], ["library", "tag", "3.5:1", "testing"]):
        err = one_line(capsys, *args, "--library", str(tmp_path / "lib"))
        assert "corrupt library index" in err and says in err


def test_a_library_that_is_a_file_is_one_line(capsys, tmp_path: Path) -> None:
    afile = tmp_path / "lib"
    afile.write_text("not a folder")
    with pytest.raises(UserError, match="not a folder"):
        publish(DirectoryLibrary(afile, FakeApptainer()), sif(tmp_path, "a"))
    assert "not a folder" in one_line(capsys, "pull", "--library", str(afile), "3.5")


def test_lint_on_a_binary_file_is_one_line(capsys, tmp_path: Path) -> None:
    blob = tmp_path / "image.sif"
    blob.write_bytes(b"\x7fELF\x02\x01\x01\x00\xff\xfe" * 10)
    assert "not a text file" in one_line(capsys, "lint", str(blob))


# --- 10.8 and 10.2: a registry -------------------------------------------------------------

def test_a_registry_pull_without_a_tag_gets_what_publish_pushed_last(tmp_path: Path, victim: Path) -> None:
    app = FakeApptainer(image=b"pulled image")
    oras = OrasLibrary("oras://registry.example/sms", app)
    refs = oras.publish(sif(tmp_path, "a"), "3.5", Trust.release([]), tags=["stable"], labels=LABELS)
    assert refs[-1] == "oras://registry.example/sms:3.5-latest"
    assert [c[-1] for c in app.calls if c[0] == "push"] == refs
    dest = tmp_path / "pulled"
    dest.mkdir()
    name = "sms-services-3.5-latest.sif"
    (dest / f".{name}.{os.getpid()}.partial").symlink_to(victim)  # the old temporary name
    (dest / name).symlink_to(victim)
    path, signer = oras.pull("3.5", Trust.release([]), dest)
    assert app.calls[-1][-1] == "oras://registry.example/sms:3.5-latest"
    assert path == dest / name and not path.is_symlink() and path.read_bytes() == b"pulled image"
    assert untouched(victim) and signer == SITE
    with pytest.raises(UserError, match="not RELEASE"):
        oras.pull("3.5:../../x", Trust.release([]), dest)
