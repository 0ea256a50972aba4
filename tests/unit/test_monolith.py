"""The lab's old SMS (lab/monolith.py): its accounts are numbered as an EL host numbers them."""

from __future__ import annotations

from sms_services.image.accounts import ids
from sms_services.lab.monolith import renumber

PASSWD = "root:x:0:0::/root:/bin/sh\nmunge:x:100:101::/nonexistent:/usr/sbin/nologin\n" \
         "slurm:x:202:202::/var/lib/slurm:/usr/sbin/nologin\n_chrony:x:999:999::/:/bin/false\n"
GROUP = "root:x:0:\nmunge:x:101:\nslurm:x:202:\n_chrony:x:999:\n"


def test_munge_takes_the_highest_free_system_id_and_nothing_else_moves() -> None:
    passwd, group = renumber(PASSWD, GROUP, "munge")
    assert ids(passwd) == {**ids(PASSWD), "munge": 998} and ids(group) == {**ids(GROUP), "munge": 998}
    assert "munge:x:998:998::/nonexistent:/usr/sbin/nologin" in passwd.splitlines()
    assert passwd.count("\n") == PASSWD.count("\n") and group.count("\n") == GROUP.count("\n")
