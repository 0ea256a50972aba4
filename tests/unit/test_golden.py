"""Every release variant renders exactly as tests/golden/ says, and rendering is deterministic."""

from pathlib import Path

import pytest

from sms_services.image.golden import GOLDEN_COMMIT, compare
from sms_services.image.render import render, render_context
from sms_services.inputs.project import Project

ROOT = Path(__file__).resolve().parents[2]
PROJECT = Project(ROOT)
VARIANTS = [v for r in PROJECT.matrix.releases.values() for v in r.variants()]


@pytest.mark.parametrize("variant", VARIANTS, ids=[v.name for v in VARIANTS])
def test_release_renders_as_golden(variant) -> None:
    text = render(render_context(PROJECT, variant, GOLDEN_COMMIT)).text()
    compare(ROOT / "tests/golden" / f"{variant.name}.def", text)


DEBIAN = [v for v in VARIANTS if v.kind == "debian"]


@pytest.mark.parametrize("variant", DEBIAN, ids=[v.name for v in DEBIAN])
def test_compute_image_renders_as_golden(variant) -> None:
    text = render(render_context(PROJECT, variant, GOLDEN_COMMIT, role="compute")).text()
    compare(ROOT / "tests/golden" / f"compute-{variant.name}.def", text)


def test_render_is_deterministic() -> None:
    variant = PROJECT.matrix.get("3.5").variant()
    a = render(render_context(Project(ROOT), variant, GOLDEN_COMMIT)).text()
    b = render(render_context(Project(ROOT), variant, GOLDEN_COMMIT)).text()
    assert a == b


def test_layers_add_up_to_the_whole() -> None:
    """The layered build runs the same steps as the stand-alone definition."""
    ctx = render_context(PROJECT, PROJECT.matrix.get("3.0").variant(), GOLDEN_COMMIT)
    whole = render(ctx).section("post").lines
    parts = []
    for layer in ("os", "packages", "final"):
        post = render(ctx, layer, from_image="x.sif").section("post").lines
        parts += post[3:]  # each layer repeats the preamble
    assert whole[3:] == parts


def test_a_changed_run_script_changes_only_the_final_layer(scratch) -> None:
    before = Project(scratch)
    variant = before.matrix.get("3.5").variant()
    texts = {layer: render(render_context(before, variant, GOLDEN_COMMIT), layer, "x").text()
             for layer in ("os", "packages", "final")}
    run = scratch / "defs/chrony/run.sh"
    run.write_text(run.read_text() + "# tweak\n")
    after = Project(scratch)
    for layer in ("os", "packages"):
        assert render(render_context(after, variant, GOLDEN_COMMIT), layer, "x").text() == texts[layer]
    assert render(render_context(after, variant, GOLDEN_COMMIT), "final", "x").text() != texts["final"]


def test_a_program_stops_after_every_daemon_that_requires_it() -> None:
    """munged outlives slurmctld at a stop (its last RPCs need credentials); slurmdbd
    requires slurmctld, so where it runs, slurmctld outlives it, and munged both."""
    from sms_services.image.render import stop_ranks

    for rid in ("3.5", "4.0"):  # without and with slurmdbd
        ctx = render_context(PROJECT, PROJECT.matrix.get(rid).variant(), GOLDEN_COMMIT)
        ranks = stop_ranks(ctx.fragments)
        names = {f.name for f in ctx.fragments}
        assert ranks["munge"] > ranks["slurmctld"] >= 0, rid
        if rid == "4.0":
            assert ranks["slurmctld"] > ranks["slurmdbd"] == 0, rid
        for alone in names - {"munge", "slurmctld", "mariadb", "slurm-common", "base"}:
            assert ranks[alone] == 0, (rid, alone)
        text = render(ctx).text()
        program = text.split("[program:munge]")[1].split("SMS_EOF")[0]
        assert f"command=/usr/libexec/sms-services/launch {ranks['munge']} munge\n" in program


def test_a_requirement_through_a_fragment_without_a_program_still_orders_the_stop() -> None:
    from types import SimpleNamespace as F

    from sms_services.image.render import stop_ranks

    frags = (F(name="munge", requires=[], mode="daemon"), F(name="common", requires=["munge"], mode="none"),
             F(name="nat", requires=["munge"], mode="oneshot"), F(name="ctld", requires=["common"], mode="daemon"))
    assert stop_ranks(frags) == {"ctld": 0, "common": 1, "nat": 0, "munge": 1}  # type: ignore[arg-type]
