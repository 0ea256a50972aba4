"""Every fragment folder is held to its ``golden.txt``: collected here, so no folder can forget it.

Warewulf keeps each overlay's templates beside a test that renders them; here
the test is collected from the folder itself (``defs/<name>/fragment.yaml``
becomes the item ``defs/<name>/fragment.yaml::golden``), and a new folder is
tested the moment it exists. ``SMS_UPDATE_GOLDEN=1`` rewrites the files after an
intended change; review the diff like any other change.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from sms_services.image.golden import compare, render_fragment
from sms_services.inputs.project import Project

ROOT = Path(__file__).resolve().parent.parent


class GoldenItem(pytest.Item):
    def runtest(self) -> None:
        folder = self.path.parent
        compare(folder / "golden.txt", render_fragment(Project(ROOT), folder.name))

    def reportinfo(self) -> tuple[Path, int, str]:
        return self.path, 0, f"{self.path.parent.name} renders as its golden.txt"


class FragmentFile(pytest.File):
    def collect(self):
        yield GoldenItem.from_parent(self, name="golden")


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    if file_path.name == "fragment.yaml" and file_path.parent.parent == ROOT / "defs":
        return FragmentFile.from_parent(parent, path=file_path)
    return None
