import json
from pathlib import Path

import pytest
from asr import stages
from asr.errors import UserError

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
EXPERIMENTS = sorted(p.stem for p in (CONFIGS / "experiment").glob("*.yaml"))


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes(experiment, make_cfg):
    cfg = make_cfg(f"+experiment={experiment}")
    assert cfg.data.name in experiment
    assert set(stages.stage_names(cfg)) <= set(stages.STAGES)
    assert cfg.features.num_mel_bins == 80


def test_experiments_start_as_global_packages():
    for name in EXPERIMENTS:
        assert (CONFIGS / "experiment" / f"{name}.yaml").read_text().startswith("# @package _global_")


@pytest.fixture
def counted_stage(monkeypatch):
    """A registered stage that counts its runs and depends on `seed`."""
    runs = []
    monkeypatch.setitem(stages.STAGES, "count", stages.Stage(lambda cfg: runs.append(cfg.seed), ("seed",)))
    return runs


def test_finished_stage_is_skipped_until_forced_or_its_config_changes(tmp_path, counted_stage, make_cfg):
    base = [f"work_dir={tmp_path}", "stages=[count]"]
    stages.run(make_cfg(*base))
    stages.run(make_cfg(*base))
    assert counted_stage == [0]
    (marker,) = (tmp_path / "stages" / "count").iterdir()
    assert json.loads(marker.read_text()) == {"seed": 0}
    stages.run(make_cfg(*base, "force=[count]"))
    stages.run(make_cfg(*base, "seed=1"))
    assert counted_stage == [0, 0, 1]
    stages.run(make_cfg(*base, "seed=0"))  # a sweep coming back to a finished configuration skips it
    stages.run(make_cfg(*base, "seed=1"))
    assert counted_stage == [0, 0, 1]


def test_failed_stage_leaves_no_marker(tmp_path, monkeypatch, make_cfg):
    def fail(cfg):
        raise UserError("broken")

    monkeypatch.setitem(stages.STAGES, "fail", stages.Stage(fail, ()))
    with pytest.raises(UserError, match="broken"):
        stages.run(make_cfg(f"work_dir={tmp_path}", "stages=[fail]"))
    assert not (tmp_path / "stages" / "fail").exists()


def test_all_stages_in_order(make_cfg):
    assert stages.stage_names(make_cfg("stages=all")) == list(stages.STAGES)


def test_unknown_stage_is_a_clear_error(tmp_path, make_cfg):
    with pytest.raises(UserError, match=r"unknown stage\(s\) \['nope'\]; known: \['prepare'"):
        stages.run(make_cfg(f"work_dir={tmp_path}", "stages=[nope]"))


def test_tedlium2_without_corpus_dir_says_how_to_set_it(tmp_path, make_cfg):
    with pytest.raises(UserError, match="data.corpus_dir=/path/to/TEDLIUM_release2"):
        stages.run(make_cfg("+experiment=tedlium2", f"work_dir={tmp_path}"))
