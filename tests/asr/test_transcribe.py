"""Transcription of audio files with a trained model, digitally and on fresh or saved chips."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import memsim
from asr import chips, settings, transcribe
from asr.errors import UserError
from asr.pipeline import graph, runner

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_recipe_overrides, make_cfg):
    """A tiny work dir with float and 3-bit models and one chip folder; the settings; a test utterance as wav."""
    work = tmp_path_factory.mktemp("work")
    overrides = [
        *tiny_recipe_overrides(work),
        "train.max_steps=2",
        "memsim.instances=1",
        "decode.methods=[greedy]",
        "decode.splits=[test]",
    ]
    runner.run(make_cfg(*overrides, "stages=[prepare,tokenizer,cmvn,train_float,train,memsim]"))
    s = settings.load(make_cfg(*overrides))
    record = graph.data_files(s).records("test")[0]
    samples, rate = sf.read(record["audio"], start=round(record["start"] * 16000), stop=round(record["end"] * 16000))
    sf.write(work / "utterance.wav", samples, rate)
    return work, s


def test_a_file_is_transcribed_alike_at_any_rate_and_channel_count(trained, tmp_path):
    work, s = trained
    samples, _ = sf.read(work / "utterance.wav", dtype="float32")
    stereo = np.stack([samples, samples], axis=1)
    sf.write(tmp_path / "stereo.flac", stereo, 16000)
    assert torch.equal(transcribe.read_audio(tmp_path / "stereo.flac"), torch.from_numpy(samples))
    sf.write(tmp_path / "fast.wav", samples[::2], 8000)
    assert abs(len(transcribe.read_audio(tmp_path / "fast.wav")) - len(samples)) <= 2  # resampled to 16 kHz
    model = transcribe.TrainedModel.open(work / graph.model_output(s, True).relpath)
    texts = transcribe.transcribe_files(model.load("cpu"), model, [work / "utterance.wav", tmp_path / "stereo.flac"])
    assert len(texts) == 2 and texts[0] == texts[1]


def same_state(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    first, second = a.state_dict(), b.state_dict()
    return first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


def test_a_chip_is_saved_and_loads_back_cell_for_cell(trained, tmp_path):
    work, s = trained
    model = transcribe.TrainedModel.open(work / graph.model_output(s, True).relpath)
    chip_folder = work / graph.chip_output(s, graph.model_output(s, True)).relpath
    fresh, chip = transcribe.model_on(model, None, chip_folder, "cpu", instance=0)
    assert chip is not None and chip.folder.chip_of(0).crossbar == s.chip_config()
    transcribe.save_chip(tmp_path / "chip.pt", model, chip)
    loaded, again = transcribe.model_on(model, str(tmp_path / "chip.pt"), chip_folder, "cpu")
    assert again is not None and again.instance == 0 and again.settings == chip.settings
    assert same_state(fresh, loaded)
    other = transcribe.TrainedModel.open(work / graph.model_output(s, False).relpath)
    with pytest.raises(UserError, match="holds a chip of exp/small-w3a8-.*, not of exp/small-float-"):
        transcribe.model_on(other, str(tmp_path / "chip.pt"), None, "cpu")
    with pytest.raises(UserError, match="is the float model"):
        transcribe.model_on(other, "7", None, "cpu")
    with pytest.raises(UserError, match="use --instance K"):
        transcribe.model_on(model, "7", chip_folder, "cpu")


def test_a_chip_saved_with_other_settings_is_refused(trained, tmp_path):
    work, s = trained
    model = transcribe.TrainedModel.open(work / graph.model_output(s, True).relpath)
    _, chip = transcribe.model_on(model, "3", None, "cpu")  # memsim's defaults: 128 x 128 tiles
    assert chip is not None
    transcribe.save_chip(tmp_path / "chip.pt", model, chip)
    chip_folder = work / graph.chip_output(s, graph.model_output(s, True)).relpath  # tile_size 16
    with pytest.raises(UserError, match="saved with other chip settings .*crossbar"):
        transcribe.model_on(model, str(tmp_path / "chip.pt"), chip_folder, "cpu")


def test_transcription_rebuilds_the_very_chip_the_recipe_scored(tiny_recipe_overrides, make_cfg, tmp_path, monkeypatch):
    """A chip folder with every step of the chip procedure (convolutions on the chip, an automatic ADC, a
    per-layer ADC, tuning and pre-cycling per instance): instance 1 rebuilt through scripts/transcribe.py's
    code is the recipe's instance 1, cell for cell and parameter for parameter, and reads alike."""
    work = tmp_path / "work"
    overrides = [
        *tiny_recipe_overrides(work),
        "train.max_steps=2",
        "quant.quantize_depthwise=true",
        "memsim.kinds=[linear,conv]",
        "memsim.adc=auto",
        "memsim.adc_budget_bits=10",
        "++memsim.layer_adc={blocks.0.ff1.*:[4,5]}",
        "memsim.tune_steps=2",
        "memsim.precycle_per_instance=3",
        "memsim.instances=2",
        "decode.methods=[greedy]",
        "decode.splits=[test]",
    ]
    prepared = {}
    real_prepare = chips.prepare

    def keep(model_path, folder, instance, *rest):
        prepared[instance] = chip = real_prepare(model_path, folder, instance, *rest)
        return chip

    monkeypatch.setattr(chips, "prepare", keep)
    runner.run(make_cfg(*overrides, "stages=[prepare,tokenizer,cmvn,train_float,train,memsim]"))
    monkeypatch.undo()
    s = settings.load(make_cfg(*overrides))
    trained = transcribe.TrainedModel.open(work / graph.model_output(s, True).relpath)
    rebuilt, chip = transcribe.model_on(
        trained, None, work / graph.chip_output(s, graph.model_output(s, True)).relpath, "cpu", 1
    )
    scored = prepared[1]
    chip_folder = work / graph.chip_output(s, graph.model_output(s, True)).relpath
    summary = chips.ChipSummary.read(chip_folder / chips.SUMMARY_FILE)  # instance 0 pre-cycles 3 pulses
    assert summary.program_seconds and summary.precycle_seconds
    assert 0 < summary.precycle_seconds <= summary.program_seconds
    assert chip is not None and chip.prepared.seed == scored.seed == s.memsim.seed + 1
    assert chip.folder.chip_of(1).crossbar.precycle_pulses == s.chip_config(1).precycle_pulses == 6
    assert memsim.adc_settings(rebuilt) == memsim.adc_settings(scored.model)
    assert {bits for name, bits in memsim.adc_settings(rebuilt).items() if ".ff1." in name} == {(4, 5)}
    assert same_state(rebuilt, scored.model)  # cells, calibrated ranges and tuned parameters
    batch = next(iter(transcribe.calibration_data(trained).calibration()))
    outputs = []
    for model, generator in ((scored.model, scored.generator), (rebuilt, chip.prepared.generator)):
        chips.reseed(generator, scored.seed, "test")
        with torch.inference_mode():
            outputs.append(model.eval()(batch["feats"], batch["feat_lens"])[0])
    assert torch.equal(*outputs)


def test_bad_input_is_named(trained, tmp_path):
    work, s = trained
    (tmp_path / "notes.wav").write_text("not audio")
    with pytest.raises(UserError, match="notes.wav: cannot read audio"):
        transcribe.read_audio(tmp_path / "notes.wav")
    with pytest.raises(UserError, match="is not a trained model of a work dir"):
        transcribe.TrainedModel.open(tmp_path)
    (tmp_path / "chip.pt").write_bytes(b"junk")
    model = transcribe.TrainedModel.open(work / graph.model_output(s, True).relpath)
    with pytest.raises(UserError, match="chip.pt: cannot read a saved chip"):
        transcribe.model_on(model, str(tmp_path / "chip.pt"), None, "cpu")


def test_the_command_line_prints_a_line_per_file(trained):
    work, s = trained
    model = work / graph.model_output(s, True).relpath
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "transcribe.py"),
            str(work / "utterance.wav"),
            "--model",
            str(model),
            "--chip",
            "1",
            "--method",
            "beam",
            "--beam-size",
            "8",
        ],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    (line,) = done.stdout.splitlines()
    assert line.startswith(f"{work / 'utterance.wav'}\t")
    missing = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "transcribe.py"),
            str(work / "utterance.wav"),
            "--model",
            str(work / "nope"),
        ],
        capture_output=True,
        text=True,
    )
    assert missing.returncode == 1 and "is not a trained model" in missing.stderr and "Traceback" not in missing.stderr
