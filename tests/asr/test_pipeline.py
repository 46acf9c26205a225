"""The runner: outputs keyed by their settings, staleness flowing downstream, planning, ranks, configs."""

import json
import logging
from pathlib import Path

import pytest
import torch

import memsim
from asr import checkpoint, records, settings
from asr.errors import UserError
from asr.pipeline import graph, runner
from asr.pipeline.stages import STAGES, Stage
from asr.records import RECORD, STARTED, Output, Records

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
EXPERIMENTS = sorted(p.stem for p in (CONFIGS / "experiment").glob("*.yaml"))


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes_and_loads(experiment, make_cfg, fake_corpus):
    s = settings.load(make_cfg(f"+experiment={experiment}", f"data.corpus_dir={fake_corpus}"))
    assert s.data.name in experiment and s.features.num_mel_bins == 80 and s.quantized
    assert s.stage_names == list(settings.STAGE_NAMES)
    assert s.chip_config().weight_bits == s.quant.weight_bits in (1.5, 3)  # mini_noise, mini_tuning: ternary


def test_experiments_start_as_global_packages():
    for name in EXPERIMENTS:
        assert (CONFIGS / "experiment" / f"{name}.yaml").read_text().startswith("# @package _global_")


@pytest.fixture
def toy_stages(monkeypatch):
    """Two registered stages, `up` (depends on seed) and `down` (made from up's output), logging their runs."""
    made = []

    def make(s, jobs):
        for job in jobs:
            made.append((job.output.stage, s.seed, job.resumed))
            job.commit({"result.json": {"seed": s.seed}})

    def up(s):
        return Output("up", "up", "toy", {"seed": s.seed})

    monkeypatch.setattr(settings, "STAGE_NAMES", (*settings.STAGE_NAMES, "up", "down"))
    monkeypatch.setitem(STAGES, "up", Stage(lambda s: [up(s)], make))
    monkeypatch.setitem(STAGES, "down", Stage(lambda s: [Output("down", "down", "toy", {}, {"up": up(s)})], make))
    return made


def folders(path: Path) -> list[Path]:
    """The output folders in a folder (beside each lies its lock file)."""
    return [p for p in path.iterdir() if p.is_dir()]


def test_an_output_is_made_once_per_settings_and_found_again(tmp_path, toy_stages, make_cfg):
    base = [f"work_dir={tmp_path}", "stages=[up]"]
    runner.run(make_cfg(*base))
    runner.run(make_cfg(*base))
    assert toy_stages == [("up", 0, False)]
    (folder,) = folders(tmp_path / "up")
    record = json.loads((folder / RECORD).read_text())
    assert folder.name == f"toy-{record['identity']}" and record["settings"] == {"seed": 0}
    assert record["made_by"]["torch"] and "revision" in record["made_by"] and "dirty" in record["made_by"]
    if (Path(__file__).resolve().parents[2] / ".git").exists():  # in a checkout: the revision that made it
        assert record["made_by"]["revision"] and record["made_by"]["dirty"] in (True, False)
    assert json.loads((folder / "result.json").read_text())["provenance"]["identity"] == record["identity"]
    assert "seed: 0" in (folder / "config.yaml").read_text()
    runner.run(make_cfg(*base, "seed=1"))
    runner.run(make_cfg(*base, "seed=0"))  # coming back to a finished configuration finds its output
    runner.run(make_cfg(*base, "force=[up]"))
    assert toy_stages == [("up", 0, False), ("up", 1, False), ("up", 0, False)]
    assert len(folders(tmp_path / "up")) == 2


def test_making_an_input_again_makes_everything_made_from_it_again(tmp_path, toy_stages, make_cfg):
    base = [f"work_dir={tmp_path}"]
    runner.run(make_cfg(*base, "stages=[up,down]"))
    runner.run(make_cfg(*base, "stages=[up,down]", "force=[up]"))  # the same run makes down again
    assert [stage for stage, _, _ in toy_stages] == ["up", "down", "up", "down"]
    runner.run(make_cfg(*base, "stages=[up]", "force=[up]"))  # down is stale now ...
    (down,) = folders(tmp_path / "down")
    assert not Records(tmp_path).current_path(str(down.relative_to(tmp_path)))
    runner.run(make_cfg(*base, "stages=[down]"))  # ... and is made again when its stage runs
    assert [stage for stage, _, _ in toy_stages] == ["up", "down", "up", "down", "up", "down"]


def test_a_run_that_would_make_an_output_from_one_it_makes_stale_is_refused(
    tmp_path, toy_stages, make_cfg, monkeypatch
):
    def mid(s):
        return Output("mid", "mid", "toy", {}, {"up": Output("up", "up", "toy", {"seed": s.seed})})

    monkeypatch.setattr(settings, "STAGE_NAMES", (*settings.STAGE_NAMES, "mid"))
    monkeypatch.setitem(STAGES, "mid", Stage(lambda s: [mid(s)], STAGES["up"].make))
    monkeypatch.setitem(
        STAGES, "down", Stage(lambda s: [Output("down", "down", "toy", {}, {"mid": mid(s)})], STAGES["up"].make)
    )
    runner.run(make_cfg(f"work_dir={tmp_path}", "stages=[up,mid,down]"))
    with pytest.raises(
        UserError,
        match=r"stage down needs mid/toy-\w+, which is or will be out of date .* made by "
        r"stage mid",
    ):
        runner.run(make_cfg(f"work_dir={tmp_path}", "stages=[up,down]", "force=[up,down]"))
    assert len(toy_stages) == 3  # refused before anything ran
    runner.run(make_cfg(f"work_dir={tmp_path}", "stages=[up,down]", "force=[up]"))  # down is not made: it goes stale
    assert len(toy_stages) == 4 and not Records(tmp_path).current_path(mid(settings.load(make_cfg())).relpath)


def test_a_stage_whose_inputs_are_missing_names_the_stage_that_makes_them(tmp_path, toy_stages, make_cfg):
    with pytest.raises(
        UserError,
        match=r"stage down needs up/toy-\w+, which does not exist yet: it is made by "
        r"stage up; run stages=\[up,...,down\]",
    ):
        runner.run(make_cfg(f"work_dir={tmp_path}", "stages=[down]"))
    assert toy_stages == [] and not tmp_path.joinpath("up").exists()


def test_recipe_stages_in_a_fresh_work_dir_name_the_stage_to_run_first(tmp_path, make_cfg):
    with pytest.raises(UserError, match="made by stage prepare"):
        runner.run(make_cfg("+experiment=mini", f"work_dir={tmp_path}", "stages=[train]"))
    with pytest.raises(
        UserError,
        match=r"exp/small-float-\w+, which does not exist yet: it is made by stage "
        "train_float",
    ):
        runner.run(make_cfg("+experiment=mini", f"work_dir={tmp_path}", "stages=[decode]"))


def test_an_interrupted_output_is_resumed_and_a_failed_stage_leaves_no_record(
    tmp_path, toy_stages, make_cfg, monkeypatch
):
    def fail(s, jobs):
        raise UserError("broken")

    monkeypatch.setitem(STAGES, "up", Stage(STAGES["up"].outputs, fail))
    with pytest.raises(UserError, match="broken"):
        runner.run(make_cfg(f"work_dir={tmp_path}", "stages=[up]"))
    (folder,) = folders(tmp_path / "up")
    assert (folder / STARTED).is_file() and not (folder / RECORD).exists()
    monkeypatch.undo()
    monkeypatch.setattr(settings, "STAGE_NAMES", (*settings.STAGE_NAMES, "up"))
    monkeypatch.setitem(
        STAGES,
        "up",
        Stage(
            lambda s: [Output("up", "up", "toy", {"seed": s.seed})],
            lambda s, jobs: [toy_stages.append(j.resumed) or j.commit() for j in jobs],
        ),
    )
    runner.run(make_cfg(f"work_dir={tmp_path}", "stages=[up]"))
    assert toy_stages == [True] and (folder / RECORD).is_file() and not (folder / STARTED).exists()


def test_other_torchrun_ranks_run_only_training_and_write_nothing(tmp_path, toy_stages, make_cfg, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setitem(STAGES, "down", Stage(STAGES["down"].outputs, STAGES["down"].make, all_ranks=True))
    runner.run(make_cfg(f"work_dir={tmp_path}", "stages=[up,down]"))
    assert [stage for stage, _, _ in toy_stages] == ["down"]
    assert not list(tmp_path.rglob(RECORD)) and records.rank() == 1


def test_all_stages_in_order_and_unknown_ones_refused(tmp_path, make_cfg):
    assert settings.load(make_cfg("stages=all")).stage_names == list(settings.STAGE_NAMES)
    with pytest.raises(UserError, match=r"unknown stage\(s\) \['nope'\]; known: \['prepare'"):
        runner.run(make_cfg(f"work_dir={tmp_path}", "stages=[nope]"))
    with pytest.raises(UserError, match=r"unknown stage\(s\) \['trian'\]"):
        runner.run(make_cfg(f"work_dir={tmp_path}", "stages=trian"))
    assert settings.load(make_cfg("stages=prepare")).stage_names == ["prepare"]


def test_tedlium2_without_corpus_dir_says_how_to_set_it(tmp_path, make_cfg):
    with pytest.raises(UserError, match="data.corpus_dir=/path/to/TEDLIUM_release2"):
        runner.run(make_cfg("+experiment=tedlium2", f"work_dir={tmp_path}"))


BAD_SETTINGS = [
    ("model.d_model=30", "model settings: d_model \\(30\\) must be a multiple of n_heads"),
    ("model.frontend=lstm", "model settings: frontend must be one of"),
    ("train.lr=-1", "train settings: lr must be > 0"),
    ("train.average_last=9", "train settings: average_last must be >= 1 and keep_checkpoints >= average_last"),
    ("+qat_train.lrr=1", r"qat_train: \['lrr'\] are not train settings"),
    ("qat_train.epochs=0", "qat_train settings: epochs must be > 0"),
    ("train.init_from=/nope.pt", "train.init_from: no such checkpoint: /nope.pt"),
    ("decode.methods=[viterbi]", r"decode.methods must be a non-empty list of \['greedy', 'beam'\]"),
    ("decode.splits=[eval]", "decode.splits must be a non-empty list"),
    ("decode.lm=/nope.arpa", "decode.lm: no such file"),
    ("quant.weight_bits=2.5", "quant settings: weight_bits: bits must be 1.5"),
    ("quant.weight_scale=max", "quant settings: weight_scale must be"),
    ("memsim.adc=fast", "memsim.adc must be one of"),
    ("memsim.tile_size=0", "CrossbarConfig.tile_size must be a positive integer"),
    ("memsim.adc=auto", "memsim.adc=auto needs memsim.adc_budget_bits"),
    ("memsim.adc_budget_bits=10", "memsim.adc_budget_bits needs memsim.adc=auto"),
    ("memsim.adc_coverage=1.5", r"memsim.adc_coverage must be a fraction in \(0, 1\]"),
    ("++memsim.layer_adc={ff:[4]}", r"memsim.layer_adc.ff must be \[precision bits, range bits\]"),
    ("++memsim.layer_adc={ff:[40,4]}", "CrossbarConfig.adc_precision_bits must be an integer from 0 to 24"),
    ("memsim.dac_bits=1", "CrossbarConfig.dac_bits must be an integer from 2 to 24"),
    ("memsim.instances=0", "memsim.instances must be >= 1"),
    ("memsim.only=noise", "memsim.only must be 'all', 'none' or one of"),
    ("memsim.precycle_per_instance=-1", "memsim.precycle_per_instance must be >= 0"),
    ("memsim.calibration=global", "CrossbarConfig.calibration must be one of"),
    ("data.synth.splits.dev.talks=0", "data.synth.splits.dev needs talks >= 1"),
    ("features.speeds=[]", "features.speeds must be a non-empty list"),
    ("loader.max_seconds=0", "loader.max_seconds must be > 0"),
    ("tokenizer.model_type=word", "tokenizer.model_type must be one of"),
]


@pytest.mark.parametrize("override, message", BAD_SETTINGS, ids=[o for o, _ in BAD_SETTINGS])
def test_every_group_refuses_bad_settings_before_any_stage(override, message, tmp_path, make_cfg):
    with pytest.raises(UserError, match=message):
        runner.run(make_cfg("+experiment=mini", f"work_dir={tmp_path}", override))
    assert not tmp_path.exists() or not any(tmp_path.iterdir())


def test_an_adc_preset_and_adc_bits_together_are_refused(tmp_path, make_cfg):
    with pytest.raises(UserError, match="memsim.adc=reasonable sets the ADC: set memsim.adc=null"):
        runner.run(
            make_cfg("+experiment=mini", f"work_dir={tmp_path}", "memsim.adc=reasonable", "memsim.adc_range_bits=6")
        )


def test_chips_are_named_by_their_adc(make_cfg):
    def label(*overrides):
        return settings.load(make_cfg("+experiment=mini", *overrides)).memsim.name

    assert label() == "high_precision-physical"  # (8, 10), the default, is the paper's preset by name
    assert label("memsim.adc_precision_bits=4", "memsim.adc_range_bits=4") == "reasonable-physical"
    assert label("memsim.adc_precision_bits=6", "memsim.adc_range_bits=8") == "adc6.8-physical"
    assert label("memsim.adc=auto", "memsim.adc_budget_bits=12") == "auto12-physical"


def test_two_bit_weights_are_run_as_the_ternary_model(make_cfg, caplog):
    caplog.set_level(logging.WARNING, logger="asr.settings")
    s = settings.load(make_cfg("+experiment=mini", "quant.weight_bits=2"))
    assert s.quant.weight_bits == 1.5 and s.system_name(True) == "w1.5a8" and "ternary" in caplog.text
    assert (
        graph.model_output(s, True).relpath
        == graph.model_output(settings.load(make_cfg("+experiment=mini", "quant.weight_bits=1.5")), True).relpath
    )


def test_the_paper_chip_is_the_memsim_preset_with_pre_cycling_per_instance(make_cfg):
    s = settings.load(make_cfg("+experiment=mini", "quant=paper", "memsim=paper"))
    assert s.chip_config(0) == memsim.CrossbarConfig.preset("paper", weight_bits=3, precycle_pulses=50)
    assert [s.chip_config(k).precycle_pulses for k in range(3)] == [50, 100, 150]
    assert s.quant.output_bits == 8 and s.quant.quantize_attention and s.quant.quantize_depthwise
    assert s.quant.depthwise_io_bits == 8 and s.memsim.kinds == ["linear"]  # the paper's text: linear layers only
    physical = settings.load(make_cfg("+experiment=mini"))
    assert physical.chip_config(2) == memsim.CrossbarConfig.preset("physical", weight_bits=3)
    later = settings.load(make_cfg("+experiment=mini", "quant=paper", "memsim=paper_depthwise"))
    assert later.memsim.kinds == ["linear", "conv"] and later.memsim.name == "paper-dw"  # memristor_v5.py
    assert later.chip_config(1) == s.chip_config(1)


def test_an_ablation_keeps_one_non_ideality_and_names_its_own_chip(make_cfg):
    alone = settings.load(make_cfg("+experiment=mini", "memsim.only=iv_nonlinearity"))
    assert alone.chip_config() == memsim.CrossbarConfig(weight_bits=3).only("iv_nonlinearity")
    none = settings.load(make_cfg("+experiment=mini", "memsim.only=none"))
    assert none.chip_config() == memsim.CrossbarConfig(weight_bits=3).only(None)
    chips = {graph.chip_output(x, graph.model_output(x, True)).relpath for x in (alone, none)}
    assert len(chips) == 2


def test_a_qat_seed_trains_another_quantized_model_from_the_same_float_model(make_cfg):
    default = settings.load(make_cfg("+experiment=mini"))
    same = settings.load(make_cfg("+experiment=mini", "+qat_train.seed=0"))  # the top-level seed, said again
    other = settings.load(make_cfg("+experiment=mini", "+qat_train.seed=1"))
    assert graph.model_output(same, True).relpath == graph.model_output(default, True).relpath
    assert graph.model_output(other, True).relpath != graph.model_output(default, True).relpath
    assert graph.model_output(other, False).relpath == graph.model_output(default, False).relpath
    assert other.train_config(True).seed == 1 and other.train_config(False).seed == 0
    assert graph.model_output(other, True).label == graph.model_output(default, True).label  # the same system
    # its chips are programmed from their own streams; the default's keep memsim.seed
    assert default.chip_seed == same.chip_seed == default.memsim.seed
    assert other.chip_seed == default.memsim.seed + settings.CHIP_SEEDS_PER_TRAINING_SEED
    chips = [graph.chip_output(s, graph.model_output(s, True)) for s in (default, other)]
    assert [c.settings["seed"] for c in chips] == [default.chip_seed, other.chip_seed]


def test_a_checkpoint_inside_the_work_dir_keys_a_model_by_its_place_there_so_a_copied_work_dir_keeps_it(
    tmp_path, make_cfg
):
    keys = []
    for work in (tmp_path / "a", tmp_path / "b"):
        (work / "exp").mkdir(parents=True)
        checkpoint.save({"model": {"w": torch.ones(2)}}, work / "exp" / "uniform.pt")
        start = f"qat_train.init_from={work}/exp/uniform.pt"
        s = settings.load(make_cfg("+experiment=mini", f"work_dir={work}", start))
        trained = graph.model_output(s, True)
        assert trained.settings["init_from"]["path"] == "exp/uniform.pt"
        keys.append(trained.relpath)
    assert keys[0] == keys[1]
