import pytest

from sms_services import slurm


@pytest.mark.parametrize("ctl,node,ok", [
    ("22.05", "20.11", True),    # two earlier majors before 24.11
    ("22.05", "20.02", False),   # three back: too old
    ("24.11", "23.02", True),    # three earlier majors from 24.11 on
    ("24.11", "22.05", False),
    ("26.05", "25.05", True),
    ("26.05", "24.11", True),
    ("22.05", "23.11", False),   # slurmd newer than slurmctld: never
    ("24.11.5", "24.11", True),
])
def test_can_serve(ctl: str, node: str, ok: bool) -> None:
    assert slurm.can_serve(ctl, node) is ok


def test_upgrade_window_names_the_reason() -> None:
    ok, why = slurm.upgrade_allowed("22.05", "24.11")
    assert not ok and "skips" in why and "intermediate" in why
    ok, why = slurm.upgrade_allowed("24.11", "26.05")
    assert ok
    ok, why = slurm.upgrade_allowed("24.11", "22.05")
    assert not ok and "backwards" in why


def test_unknown_major_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown Slurm major"):
        slurm.index("19.05")
