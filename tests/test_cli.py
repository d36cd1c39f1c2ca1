"""The `metarun` command in a subprocess, from a folder outside the repository, as a user runs it."""

from __future__ import annotations

import pytest

from tests.helpers import metarun, results_under


def test_a_smoke_run_writes_its_run_folder_named_after_what_ran(tmp_path):
    done = metarun("debug=smoke", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    runs = list((tmp_path / "outputs" / "maml_synthetic_5w1s").iterdir())
    assert len(runs) == 1
    assert {"results.json", "best.pt", "last.pt", "tb", ".hydra"} <= {p.name for p in runs[0].iterdir()}
    assert "test acc" in done.stdout + done.stderr


def test_a_2x2_multirun_runs_four_jobs_in_folders_named_by_their_overrides(tmp_path):
    done = metarun("-m", "algo=maml,protonet", "episode=5way_1shot,5way_5shot", "debug=smoke", "logger=none",
                   "trainer.steps=2", "trainer.test_episodes=4", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    results = results_under(tmp_path / "outputs" / "multirun")
    assert sorted((r["algorithm"], r["shots"]) for r in results) == [("maml", 1), ("maml", 5), ("protonet", 1), ("protonet", 5)]
    assert all(r["overrides"][:2] == [f"algo={r['algorithm']}", f"episode=5way_{r['shots']}shot"] for r in results)
    names = [p.parent.name for p in (tmp_path / "outputs" / "multirun").rglob("results.json")]
    assert any("algo=protonet" in name and "episode=5way_5shot" in name for name in names)
    sweep = next((tmp_path / "outputs" / "multirun").iterdir())
    assert done.stderr.strip().splitlines()[-1] == (f"metarun: the sweep's runs are in outputs/multirun/{sweep.name}; "
                                                    f"compare them with: metarun-report outputs/multirun/{sweep.name}")


def test_help_shows_example_commands_and_how_to_print_the_resolved_config(tmp_path):
    done = metarun("--help", cwd=tmp_path)
    assert done.returncode == 0
    assert "== Examples ==" in done.stdout and "metarun algo=maml data=omniglot data.root=" in done.stdout
    assert "--cfg job --resolve" in done.stdout
    resolved = metarun("--cfg", "job", "--resolve", cwd=tmp_path)
    assert "${oc.env" not in resolved.stdout and "/omniglot" in resolved.stdout


@pytest.mark.parametrize(
    "override,message",
    [
        ("episode.ways=1", "episode.ways=1 is invalid"),
        ("episode.ways=50", "episode.ways=50 is more than the 24 classes"),
        ("trainer.steps=-3", "trainer.steps=-3 is invalid"),
    ],
)
def test_bad_input_exits_non_zero_with_one_line_and_no_traceback(tmp_path, override, message):
    done = metarun("debug=smoke", override, cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip().startswith("metarun: error:") and message in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr


def test_an_unknown_group_option_names_the_options(tmp_path):
    done = metarun("algo=nope", cwd=tmp_path)
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert "nope" in done.stderr and "protonet" in done.stderr


def test_a_missing_data_root_is_one_line_naming_the_path(tmp_path):
    done = metarun(f"data.root={tmp_path / 'no-omniglot'}", "logger=none", cwd=tmp_path)
    assert done.returncode == 2 and str(tmp_path / "no-omniglot") in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_an_output_folder_that_cannot_be_made_is_one_line(tmp_path):
    (tmp_path / "a-file").write_text("")
    done = metarun("debug=smoke", f"hydra.run.dir={tmp_path / 'a-file' / 'run'}", cwd=tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip() == (f"metarun: error: the output folder {tmp_path / 'a-file' / 'run'} cannot be written; "
                                   "choose another with hydra.run.dir=... (hydra.sweep.dir=... for -m)")
