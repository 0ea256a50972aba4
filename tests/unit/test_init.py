"""smsctl init without root or an image: what goes into a new overlay, and every refusal
leaving nothing behind. (The image's own checks, scontrol and its folders' owners, are
the integration test's: tests/integration/test_init.py.)"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from sms_services.errors import UserError
from sms_services.inputs.project import Project
from sms_services.inputs.site import load_site, render_site
from sms_services.inputs.slurmconf import problems
from sms_services.runtime import overlay as overlay_mod
from sms_services.runtime.init import ImageFacts, init, parse_size, read_munge_key

ROOT = Path(__file__).resolve().parents[2]
LAB_SITE = ROOT / "overlays/lab/site.yaml"
pytestmark = pytest.mark.skipif(shutil.which("mkfs.ext3") is None or shutil.which("debugfs") is None,
                                reason="needs e2fsprogs")


def facts(release: str = "3.5") -> ImageFacts:
    """An image whose munge account is this user, so the test can own its files without root."""
    me = os.geteuid()
    passwd = f"root:x:0:0::/root:/bin/sh\nmunge:x:{me}:{os.getegid()}::/nonexistent:/bin/false\n"
    return ImageFacts(Path("/nonexistent.sif"), release, passwd)


def a_key(folder: Path, size: int = 1024, mode: int = 0o400) -> Path:
    key = folder / "munge.key"
    key.write_bytes(os.urandom(size))
    key.chmod(mode)
    return key


def tree(img: Path, folder: str = "/upper") -> dict[str, tuple[str, int, int]]:
    """path -> (type+mode as octal text, uid, gid) of everything under ``folder`` in the overlay."""
    out = subprocess.run(["debugfs", "-R", f"ls -p {folder}", str(img)], capture_output=True, text=True).stdout
    found: dict[str, tuple[str, int, int]] = {}
    for line in out.splitlines():
        parts = line.strip().split("/")
        if len(parts) < 7 or parts[5] in (".", ".."):
            continue
        mode, uid, gid, name = parts[2], int(parts[3]), int(parts[4]), parts[5]
        path = f"{folder}/{name}"
        found[path.removeprefix("/upper")] = (mode, uid, gid)
        if mode.startswith("040"):
            found.update(tree(img, path))
    return found


def left_in(folder: Path, *keep: str) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name not in keep)


def make(project: Project, tmp_path: Path, **kw) -> Path:
    image = kw.pop("image", facts())
    args = dict(site_path=LAB_SITE, overlay=tmp_path / "sms.img", size_mib=128, munge_key=None, new_key=True)
    args.update(kw)
    init(project, image, **args)  # type: ignore[arg-type]
    return args["overlay"]  # type: ignore[return-value]


def test_a_new_overlay_holds_the_site_files_the_key_and_the_state_folders_only(
        project: Project, tmp_path: Path) -> None:
    key = a_key(tmp_path)
    img = make(project, tmp_path, munge_key=key, new_key=False, image=facts("4.1"))
    found = tree(img)
    me = os.geteuid()
    assert found["/etc/munge/munge.key"] == ("100400", me, os.getegid())
    assert found["/etc/slurm/slurmdbd.conf"][0] == "100600"  # the database password: root only
    assert found["/etc/slurm/slurm.conf"][0] == "100644"
    frags = project.sms_fragments("4.1")
    site = load_site(LAB_SITE, frags, list(project.fragments.values()))
    files = set(render_site(site, frags, "4.1")) | {"/etc/munge/munge.key"}
    state = {p for f in frags for p in f.state}
    assert state <= {p for p, (mode, _, _) in found.items() if mode.startswith("040")}
    # Nothing else: every entry is a file of the site, a state folder or a parent of one.
    parents = {str(q) for p in files | state for q in Path(p).parents}
    assert set(found) <= files | state | parents, set(found) - files - state - parents
    assert files <= set(found)
    key_in = subprocess.run(["debugfs", "-R", "cat /upper/etc/munge/munge.key", str(img)],
                            capture_output=True).stdout
    assert key_in == key.read_bytes()
    assert left_in(tmp_path) == ["munge.key", "sms.img"]
    assert os.stat(img).st_blocks * 512 < 64 * 2**20  # sparse


def test_an_existing_overlay_is_refused_unless_forced(project: Project, tmp_path: Path) -> None:
    img = tmp_path / "sms.img"
    img.write_bytes(b"the live state")
    with pytest.raises(UserError, match=r"sms.img: exists already; .*--force replaces it"):
        make(project, tmp_path)
    assert img.read_bytes() == b"the live state" and left_in(tmp_path) == ["sms.img"]
    make(project, tmp_path, force=True)
    assert "/etc/munge/munge.key" in tree(img) and left_in(tmp_path) == ["sms.img"]


@pytest.mark.parametrize("size, mode, expect", [
    (1023, 0o400, r"1023 bytes; a munge key is 1 KiB..16 KiB"),
    (16385, 0o400, r"16385 bytes; a munge key is 1 KiB..16 KiB"),
    (0, 0o400, r"0 bytes"),
    (1024, 0o440, r"mode 0440 lets others read or change the munge key; chmod 0400"),
    (1024, 0o604, r"mode 0604"),
    (1024, 0o420, r"mode 0420"),
])
def test_a_bad_munge_key_is_refused_in_one_line(project: Project, tmp_path: Path, size: int, mode: int,
                                                 expect: str) -> None:
    key = a_key(tmp_path, size, mode)
    with pytest.raises(UserError, match=expect) as err:
        make(project, tmp_path, munge_key=key, new_key=False)
    assert "\n" not in str(err.value)
    assert left_in(tmp_path) == ["munge.key"]


def test_a_key_of_another_owner_or_not_a_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not a regular file"):
        read_munge_key(tmp_path)
    with pytest.raises(UserError, match="cannot read the munge key"):
        read_munge_key(tmp_path / "missing")
    if os.geteuid() != 0:
        pytest.skip("changing a file's owner needs root")
    key = a_key(tmp_path)
    os.chown(key, 1000, 1000)
    with pytest.raises(UserError, match="owned by uid 1000; a munge key must be readable by root only"):
        read_munge_key(key)


def test_no_key_named_is_refused(project: Project, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="give --munge-key FILE .* or --new-munge-key"):
        make(project, tmp_path, new_key=False)
    assert left_in(tmp_path) == []


def site_with(tmp_path: Path, **changes: object) -> Path:
    data = yaml.safe_load(LAB_SITE.read_text())
    data.update(changes)
    path = tmp_path / "site" / "site.yaml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize("changes, expect", [
    ({"colour": "red"}, "field 'colour' is not a site variable"),
    ({"provision_ip": "10.0.0.1"}, "field 'provision_ip' 10.0.0.1 is outside"),
    ({"slurm_conf": "missing.conf"}, r"field 'slurm_conf': cannot read .*missing.conf \(No such file"),
    ({"slurm_files": ["slurm.conf"]}, r"field 'slurm_files\[0\]' 'slurm.conf' cannot go to /etc/slurm/slurm.conf"),
])
def test_a_site_that_fails_its_checks_is_refused(project: Project, tmp_path: Path, changes: dict,
                                                 expect: str) -> None:
    site = site_with(tmp_path, **changes)
    with pytest.raises(UserError, match=expect) as err:
        make(project, tmp_path, site_path=site)
    assert "\n" not in str(err.value)
    assert left_in(tmp_path, "site") == [] and left_in(site.parent) == ["site.yaml"]


def own_conf(**override: str) -> str:
    keys = {"ClusterName": "big", "SlurmctldHost": "sms-services(198.18.0.2)",
            "SlurmctldParameters": "enable_configless,idle_on_node_suspend",
            "StateSaveLocation": "/var/spool/slurmctld/state", "AuthType": "auth/munge"}
    keys.update(override)
    lines = [f"{k}={v}" for k, v in keys.items() if v]
    return "\n".join([*lines, "Include /etc/slurm/nodes.conf", "PartitionName=gpu Nodes=c2 Default=NO"]) + "\n"


def test_the_sites_own_slurm_files_replace_the_rendered_ones(project: Project, tmp_path: Path) -> None:
    site = site_with(tmp_path, slurm_conf="slurm.conf", slurm_files=["extra/nodes.conf", "gres.conf"])
    (site.parent / "slurm.conf").write_text(own_conf())
    (site.parent / "extra").mkdir()
    (site.parent / "extra/nodes.conf").write_text("NodeName=c[1-2] Feature=big\n")
    (site.parent / "gres.conf").write_text("# no GRES yet")
    frags = project.sms_fragments("3.5")
    files = render_site(load_site(site, frags, list(project.fragments.values())), frags, "3.5")
    assert files["/etc/slurm/slurm.conf"] == own_conf()
    assert files["/etc/slurm/nodes.conf"] == "NodeName=c[1-2] Feature=big\n"
    assert files["/etc/slurm/gres.conf"] == "# no GRES yet\n"
    assert files["/etc/slurm/cgroup.conf"].startswith("# cgroup.conf served")  # not given: rendered
    assert problems(files, hostname="sms-services", address="198.18.0.2",
                    state=["/var/spool/slurmctld", "/var/log/slurm"]) == []
    # Compute nodes take their config from slurmctld: their rendering is unchanged.
    compute = project.ordered(project.matrix.get("3.5").variant("debian"), "compute")
    assert "/etc/slurm/slurm.conf" not in render_site(load_site(site, compute, list(project.fragments.values())),
                                                      compute, "3.5")
    img = make(project, tmp_path, site_path=site)
    assert {"/etc/slurm/nodes.conf", "/etc/slurm/gres.conf"} <= set(tree(img))


@pytest.mark.parametrize("override, expect", [
    ({"SlurmctldHost": "oldsms"}, "SlurmctldHost=oldsms must name SMS-services: sms-services or "
                                  "sms-services(198.18.0.2)"),
    ({"SlurmctldHost": "sms-services(10.1.1.1)"}, "SlurmctldHost=sms-services(10.1.1.1) must name"),
    ({"SlurmctldHost": "", "ControlMachine": "sms-services"}, ""),
    ({"SlurmctldParameters": "idle_on_node_suspend"}, "lacks enable_configless"),
    ({"StateSaveLocation": "/home/slurm/state"}, "StateSaveLocation=/home/slurm/state is outside the state paths"),
])
def test_an_own_slurm_conf_that_cannot_work_here_is_named(project: Project, tmp_path: Path, override: dict,
                                                         expect: str) -> None:
    site = site_with(tmp_path, slurm_conf="slurm.conf", slurm_files=["nodes.conf"])
    (site.parent / "slurm.conf").write_text(own_conf(**override))
    (site.parent / "nodes.conf").write_text("NodeName=c[1-2]\n")
    if not expect:
        make(project, tmp_path, site_path=site)
        return
    with pytest.raises(UserError, match=re.escape(expect)) as err:
        make(project, tmp_path, site_path=site)
    assert str(err.value).startswith(f"{site}: slurm.conf: ") and "\n" not in str(err.value)
    assert left_in(tmp_path, "site") == []


def test_an_include_the_site_does_not_provide_is_named() -> None:
    files = {"/etc/slurm/slurm.conf": own_conf()}
    assert problems(files, hostname="sms-services", address="198.18.0.2", state=["/var/spool/slurmctld"]) == [
        "slurm.conf: Include /etc/slurm/nodes.conf: the site does not provide it (list it in slurm_files)"]


def test_an_interrupted_init_leaves_nothing_behind(project: Project, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(*args: object, **kw: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(overlay_mod.subprocess, "run", interrupted)
    with pytest.raises(KeyboardInterrupt):
        make(project, tmp_path)
    assert left_in(tmp_path) == []


def test_a_failed_mkfs_leaves_nothing_behind(project: Project, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    def full(cmd: list[str], **kw: object) -> subprocess.CompletedProcess:
        Path(cmd[-2]).write_bytes(b"half an ext3")  # what a full disk leaves of it
        return subprocess.CompletedProcess(cmd, 1, "", "mkfs.ext3: No space left on device while writing")

    monkeypatch.setattr(overlay_mod.subprocess, "run", full)
    with pytest.raises(UserError, match="sms.img: cannot create overlay: mkfs.ext3: No space left on device"):
        make(project, tmp_path)
    assert left_in(tmp_path) == []


def test_a_filesystem_too_small_is_refused(project: Project, tmp_path: Path) -> None:
    free = os.statvfs(tmp_path).f_bavail * os.statvfs(tmp_path).f_frsize // 2**20
    with pytest.raises(UserError, match=r"MiB free, less than the overlay's"):
        make(project, tmp_path, size_mib=free + 1024)
    assert left_in(tmp_path) == []


@pytest.mark.parametrize("text, mib", [("4G", 4096), ("512M", 512), ("512MiB", 512), ("1T", 2**20), ("100", 100)])
def test_sizes(text: str, mib: int) -> None:
    assert parse_size(text) == mib


@pytest.mark.parametrize("text", ["", "4X", "-1G", "0", "32M"])
def test_bad_sizes(text: str) -> None:
    with pytest.raises(UserError, match="--size"):
        parse_size(text)


# --- init --from-sms: the plan -----------------------------------------------------------
def state_header(major: str) -> bytes:
    from sms_services import slurm

    tag = b"PROTOCOL_VERSION\0"
    return len(tag).to_bytes(4, "big") + tag + ((35 + slurm.MAJORS.index(major)) << 8).to_bytes(2, "big")


def old_sms(tmp_path: Path, *, conf: str | None = None, state: str = "24.05", where: str = "/var/spool/slurm/ctld",
            key: int = 1024) -> Path:
    """A monolithic SMS's root: slurm.conf, munge key, accounts, controller state."""
    root = tmp_path / "oldsms"
    (root / "etc/slurm").mkdir(parents=True)
    (root / "etc/munge").mkdir(parents=True)
    (root / "etc/slurm/slurm.conf").write_text(conf if conf is not None else own_conf(
        StateSaveLocation=where) + "NodeName=c1 Feature=fast\n")
    (root / "etc/slurm/nodes.conf").write_text("NodeName=c2\n")
    (root / "etc/slurm/gres.conf").write_text("# none\n")
    if key:
        (root / "etc/munge/munge.key").write_bytes(b"k" * key)
    me = os.geteuid()
    (root / "etc/passwd").write_text(f"root:x:0:0::/root:/bin/sh\nslurm:x:{me}:{me}::/:/bin/false\n"
                                     "alice:x:1001:1001::/home/alice:/bin/bash\nnobody:x:65534:65534::/:/bin/false\n"
                                     "bob:x:1002:1001::/home/bob:/bin/bash\n")
    (root / "etc/group").write_text(f"root:x:0:\nslurm:x:{me}:\nusers:x:1001:\n")
    (root / "etc/shadow").write_text("root:*:1::::::\nalice:$6$abc:1::::::\nbob:!:1::::::\n")
    spool = root / where.lstrip("/")
    (spool / "hash.3/job.3").mkdir(parents=True)
    (spool / "job_state").write_bytes(state_header(state) + b"jobs")
    (spool / "node_state").write_bytes(state_header(state) + b"nodes")
    (spool / "hash.3/job.3/script").write_text("#!/bin/sh\nsleep 60\n")
    return root


def image_35() -> ImageFacts:
    me = os.geteuid()
    return ImageFacts(Path("/nonexistent.sif"), "3.5",
                      f"root:x:0:0::/root:/bin/sh\nmunge:x:{me}:{me}::/:/bin/false\nslurm:x:{me}:{me}::/:/bin/false\n",
                      f"root:x:0:\nshadow:x:42:\nslurm:x:{me}:\n", "root:*:1::::::\n", "24.11.5")


def test_from_sms_imports_state_key_users_and_says_so(project: Project, tmp_path: Path) -> None:
    root = old_sms(tmp_path)
    said: list[str] = []
    before = sorted(p.name for p in tmp_path.iterdir())
    assert make(project, tmp_path, image=image_35(), new_key=False, from_sms=root, dry_run=True,
                say=said.append) is not None  # (make returns the path it would have made)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # a dry run writes nothing
    assert any("Slurm state: /var/spool/slurm/ctld (3 files, Slurm 24.05) -> /var/spool/slurmctld" in s
               for s in said), said
    assert "change: StateSaveLocation /var/spool/slurm/ctld -> /var/spool/slurmctld (the rendered slurm.conf's)" \
        in said
    assert any("accounts: 2 users, 1 groups" in s for s in said) and not any(s.startswith("refused") for s in said)

    img = make(project, tmp_path, image=image_35(), new_key=False, from_sms=root)
    found = tree(img)
    assert {"/var/spool/slurmctld/job_state", "/var/spool/slurmctld/hash.3/job.3/script"} <= set(found)
    def cat(path: str) -> bytes:
        return subprocess.run(["debugfs", "-R", f"cat /upper{path}", str(img)], capture_output=True).stdout
    assert cat("/etc/munge/munge.key") == b"k" * 1024
    passwd = cat("/etc/passwd").decode()
    assert "alice:x:1001:1001" in passwd and "bob:x:1002" in passwd and "nobody" not in passwd
    assert passwd.startswith("root:x:0:0") and "munge:x:" in passwd  # the image's own accounts stay
    assert "alice:$6$abc" in cat("/etc/shadow").decode() and found["/etc/shadow"][0] == "100640"
    assert "Feature=fast" not in cat("/etc/slurm/slurm.conf").decode()  # rendered: not kept


def test_from_sms_keeps_the_slurm_files_when_asked(project: Project, tmp_path: Path) -> None:
    root = old_sms(tmp_path, where="/var/spool/slurmctld/state")
    said: list[str] = []
    img = make(project, tmp_path, image=image_35(), new_key=False, from_sms=root, keep_slurm_conf=True,
               say=said.append)
    found = tree(img)
    assert {"/etc/slurm/nodes.conf", "/etc/slurm/gres.conf", "/var/spool/slurmctld/state/job_state"} <= set(found)
    conf = subprocess.run(["debugfs", "-R", "cat /upper/etc/slurm/slurm.conf", str(img)],
                          capture_output=True).stdout.decode()
    assert "Feature=fast" in conf and "PartitionName=gpu" in conf
    assert not any(s.startswith("change: StateSaveLocation") for s in said)


@pytest.mark.parametrize("kw, keep, expect", [
    ({"conf": own_conf(SlurmctldHost="oldsms(10.1.0.1)")}, False,
     "SlurmctldHost=oldsms(10.1.0.1) must name SMS-services"),
    ({"conf": own_conf(SlurmctldParameters="")}, False, "lacks enable_configless"),
    ({"state": "22.05"}, False, "state of Slurm 22.05, the image runs 24.11.5: Slurm 22.05 -> 24.11 skips"),
    ({"state": "25.05"}, False, "state of Slurm 25.05, the image runs 24.11.5: Slurm 24.11 is older than 25.05"),
    ({"where": "/home/slurm/state"}, True, "StateSaveLocation=/home/slurm/state is outside the state paths"),
    ({"where": "/var/spool/other"}, False, "/var/spool/slurmctld: no Slurm state (job_state) there"),
    ({"key": 100}, False, "munge.key: 100 bytes"),
    ({"key": 0}, False, "munge.key: missing"),
])
def test_from_sms_refuses_what_cannot_work_and_writes_nothing(project: Project, tmp_path: Path, kw: dict,
                                                              keep: bool, expect: str) -> None:
    root = old_sms(tmp_path, **{k: v for k, v in kw.items() if k != "where"},
                   where=kw.get("where", "/var/spool/slurm/ctld"))
    if kw.get("where") == "/var/spool/other":  # slurm.conf names a folder the old SMS does not have
        (root / "etc/slurm/slurm.conf").write_text(own_conf(StateSaveLocation="/var/spool/slurmctld"))
    said: list[str] = []
    with pytest.raises(UserError, match=r"--from-sms .*: \d problem\(s\) above; nothing was written"):
        make(project, tmp_path, image=image_35(), new_key=False, from_sms=root, keep_slurm_conf=keep,
             say=said.append)
    refused = [s for s in said if s.startswith("refused: ")]
    assert any(expect in s for s in refused), said
    assert all("\n" not in s for s in said)
    assert left_in(tmp_path) == ["oldsms"]


def test_from_sms_into_an_image_of_unknown_slurm_is_refused(project: Project, tmp_path: Path) -> None:
    said: list[str] = []
    unknown = ImageFacts(**{**image_35().__dict__, "slurm": ""})
    with pytest.raises(UserError, match="1 problem"):
        make(project, tmp_path, image=unknown, new_key=False, from_sms=old_sms(tmp_path), say=said.append)
    assert any("the image's Slurm version '' is unknown" in s for s in said), said


def test_from_sms_with_a_missing_root_or_a_new_key_is_one_line(project: Project, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="nowhere: no such folder; give the old SMS's root filesystem"):
        make(project, tmp_path, image=image_35(), new_key=False, from_sms=tmp_path / "nowhere")
    with pytest.raises(UserError, match="--new-munge-key with --from-sms"):
        make(project, tmp_path, image=image_35(), new_key=True, from_sms=old_sms(tmp_path))
    with pytest.raises(UserError, match="no etc/slurm/slurm.conf there"):
        make(project, tmp_path, image=image_35(), new_key=False, from_sms=tmp_path)
    assert left_in(tmp_path) == ["oldsms"]


def test_a_link_or_dotdot_out_of_the_old_sms_root_is_refused(tmp_path: Path) -> None:
    """An absolute link on a mounted old root points at this host's own files: never read through it."""
    from sms_services.errors import UserError
    from sms_services.runtime.migrate import inside

    root = tmp_path / "oldsms"
    (root / "etc/munge").mkdir(parents=True)
    secret = tmp_path / "hosts-own.key"
    secret.write_bytes(b"k" * 1024)
    (root / "etc/munge/munge.key").symlink_to(secret)
    for path in ("/etc/munge/munge.key", "/../hosts-own.key"):
        with pytest.raises(UserError, match="leads out of"):
            inside(root, path)
    (root / "etc/slurm").mkdir()
    assert inside(root, "/etc/slurm") == (root / "etc/slurm").resolve()


def with_slurm(image: ImageFacts, version: str) -> ImageFacts:
    return dataclasses.replace(image, slurm=version)


def test_slurm_metrics_turns_on_openmetrics_where_the_images_slurm_has_it(project: Project, tmp_path: Path) -> None:
    site = site_with(tmp_path, slurm_metrics=True)
    frags = project.sms_fragments("3.6")
    files = render_site(load_site(site, frags, list(project.fragments.values())), frags, "3.6")
    assert "\nMetricsType=metrics/openmetrics\n" in files["/etc/slurm/slurm.conf"]
    img = make(project, tmp_path, site_path=site, image=with_slurm(facts("3.6"), "26.05.1"))
    assert "/etc/slurm/slurm.conf" in tree(img, "/upper/etc/slurm")
    # Off (the default): not a word of it.
    assert "MetricsType" not in render_site(load_site(LAB_SITE, frags, list(project.fragments.values())),
                                            frags, "3.6")["/etc/slurm/slurm.conf"]


def test_slurm_metrics_on_a_slurm_without_them_is_refused_in_one_line(project: Project, tmp_path: Path) -> None:
    site = site_with(tmp_path, slurm_metrics=True)
    with pytest.raises(UserError, match=re.escape("MetricsType=metrics/openmetrics needs Slurm 25.11 or later, "
                                                  "the image's is 24.11.5")) as err:
        make(project, tmp_path, site_path=site, image=with_slurm(facts(), "24.11.5"))
    assert "\n" not in str(err.value) and left_in(tmp_path, "site") == []


def test_slurm_metrics_with_an_own_slurm_conf_needs_its_metrics_type(project: Project, tmp_path: Path) -> None:
    site = site_with(tmp_path, slurm_metrics=True, slurm_conf="slurm.conf", slurm_files=["nodes.conf"])
    (site.parent / "slurm.conf").write_text(own_conf())
    (site.parent / "nodes.conf").write_text("NodeName=c[1-2]\n")
    with pytest.raises(UserError, match=re.escape("slurm_metrics is on but MetricsType is (unset)")):
        make(project, tmp_path, site_path=site, image=with_slurm(facts("3.6"), "26.05.1"))
    (site.parent / "slurm.conf").write_text(own_conf(MetricsType="metrics/openmetrics", PrivateData="jobs"))
    with pytest.raises(UserError, match=re.escape("with PrivateData=jobs: Slurm serves no metrics")):
        make(project, tmp_path, site_path=site, image=with_slurm(facts("3.6"), "26.05.1"))
    (site.parent / "slurm.conf").write_text(own_conf(MetricsType="metrics/openmetrics"))
    make(project, tmp_path, site_path=site, image=with_slurm(facts("3.6"), "26.05.1"))
    assert left_in(tmp_path, "site") == ["sms.img"]


def test_from_sms_says_when_the_nodes_must_learn_the_images_slurm_uid(project: Project, tmp_path: Path) -> None:
    root = old_sms(tmp_path, conf=own_conf(StateSaveLocation="/var/spool/slurm/ctld", SlurmUser="root"))
    passwd = root / "etc/passwd"
    said: list[str] = []
    make(project, tmp_path, image=image_35(), new_key=False, from_sms=root, dry_run=True, say=said.append)
    assert not any("SlurmUser" in s for s in said), said  # the same number: nothing to say
    passwd.write_text(re.sub(r"^slurm:x:\d+:", "slurm:x:990:", passwd.read_text(), flags=re.M))
    # Rendered, the new controller runs as slurm, whatever the old one ran as.
    make(project, tmp_path, image=image_35(), new_key=False, from_sms=root, dry_run=True, say=said.append)
    me = os.geteuid()
    assert f"change: SlurmUser slurm is uid 990 on the old SMS, {me} in the image: the nodes must know slurm " \
           f"as {me} before the move (the passwd SMS-mgmt serves them), or slurmd refuses the new controller" in said


def test_metrics_settings_in_an_included_file_count_too() -> None:
    files = {"/etc/slurm/slurm.conf": own_conf(MetricsType="metrics/openmetrics"),
             "/etc/slurm/nodes.conf": "PrivateData=jobs\nNodeName=c[1-2]\n"}
    args = dict(hostname="sms-services", address="198.18.0.2", state=["/var/spool/slurmctld"], metrics=True)
    assert any("with PrivateData=jobs" in p for p in problems(files, **args, slurm="26.05.5"))  # type: ignore[arg-type]
    assert any("the image's is unknown" in p for p in problems(files, **args))  # type: ignore[arg-type]
