"""Fixtures for the asr tests: a fake TED-LIUM 2 tree with every quirk, a tiny mini corpus, composed configs."""

import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from hydra import compose, initialize_config_dir

from asr import settings
from asr.data import mini_corpus

RATE = 16000
CONFIGS = Path(__file__).resolve().parents[2] / "configs"

# Talk A (train): contractions, variants, noise tokens, <sil>, <unk>, an ignored gap, an upper-case word,
# an all-noise segment, and a last segment running 0.3 s past the 10 s of audio.
TRAIN_A = """\
TalkA_2010X 1 TalkA_2010X 0.50 2.00 <o,f0,male> it 's {NOISE} the(2) <sil> Story
TalkA_2010X 1 inter_segment_gap 2.00 2.50 <o,,unknown> ignore_time_segment_in_scoring
TalkA_2010X 1 TalkA_2010X 2.50 4.00 <o,f0,male> we don 't know <unk> {BREATH} yet
TalkA_2010X 1 TalkA_2010X 4.00 4.10 <o,f0,male> tiny
TalkA_2010X 1 TalkA_2010X 5.00 6.00 <o,f0,male> {COUGH} <sil>
TalkA_2010X 1 TalkA_2010X 8.00 10.30 <o,f0,female> and(2) then
"""
DEV_B = """\
TalkB_2012 1 TalkB_2012 1.00 3.00 <F0_M> {SMACK} <sil>
TalkB_2012 1 TalkB_2012 3.00 4.00 <F0_M> they 're here
"""
TEST_C = "TalkC_2013 1 TalkC_2013 0.00 1.00 <F0_F> a test\n"


def write_talk(root: Path, split: str, talk: str, stm: str, seconds: float = 10.0) -> None:
    for sub in ("sph", "stm"):
        (root / split / sub).mkdir(parents=True, exist_ok=True)
    noise = np.random.default_rng(0).normal(0, 0.1, int(seconds * RATE)).astype(np.float32)
    sf.write(root / split / "sph" / f"{talk}.sph", noise, RATE, format="NIST", subtype="PCM_16")
    (root / split / "stm" / f"{talk}.stm").write_text(stm)


def make_corpus(root: Path) -> Path:
    write_talk(root, "train", "TalkA_2010X", TRAIN_A)
    write_talk(root, "dev", "TalkB_2012", DEV_B)
    write_talk(root, "test", "TalkC_2013", TEST_C)
    return root


TINY_SPLITS = {
    "train": {"talks": 2, "minutes": 0.25},
    "dev": {"talks": 1, "minutes": 0.1},
    "test": {"talks": 1, "minutes": 0.1},
}


@pytest.fixture
def fake_corpus(tmp_path) -> Path:
    return make_corpus(tmp_path / "TEDLIUM_release2")


@pytest.fixture(scope="session")
def tiny_splits() -> dict:
    return TINY_SPLITS


@pytest.fixture(scope="session")
def tiny_mini_corpus(tmp_path_factory) -> Path:
    """A mini corpus of a few utterances, synthesized once per test session."""
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (make setup installs it when run as root)")
    return mini_corpus.build(tmp_path_factory.mktemp("cache"), seed=0, splits=TINY_SPLITS)


@pytest.fixture(scope="session")
def tiny_work_overrides(tiny_mini_corpus):
    """The overrides of a work dir on the tiny corpus with a one-block model: tiny_work_overrides(work_dir)."""
    sizes = [
        f"data.synth.splits.{split}.{key}={value}" for split, spec in TINY_SPLITS.items() for key, value in spec.items()
    ]

    def overrides(work: Path) -> list[str]:
        return [
            f"work_dir={work}",
            f"data.synth.cache_dir={tiny_mini_corpus.parents[1]}",
            *sizes,
            "model.d_model=32",
            "model.n_layers=1",
            "model.d_ff=64",
            "model.n_heads=2",
            "loader.num_workers=0",
        ]

    return overrides


@pytest.fixture(scope="session")
def tiny_recipe_overrides(tiny_work_overrides):
    """tiny_work_overrides for the mini recipe (experiment mini): one QAT epoch, 16 x 16 tiles."""
    return lambda work: ["+experiment=mini", *tiny_work_overrides(work), "qat_train.epochs=1", "memsim.tile_size=16"]


@pytest.fixture(scope="session")
def make_cfg():
    """Compose configs/config.yaml with overrides, as scripts/run.py would."""
    settings.register()

    def make(*overrides):
        with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
            return compose("config", overrides=list(overrides))

    return make
