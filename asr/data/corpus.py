"""Which corpus a run reads: the user's TEDLIUM_release2 copy, or the embedded mini corpus (synthesized)."""

from dataclasses import dataclass, field
from pathlib import Path

from asr.data import download as download_module
from asr.data import mini_corpus
from asr.data.tedlium import SPLITS


@dataclass
class SplitSize:
    """Speech of one mini-corpus split, spread over its talks (one synthetic speaker each)."""

    talks: int = 1
    minutes: float = 1.0


def _mini_splits() -> dict[str, SplitSize]:
    """The mini recipe's sizes. Dev and test are 40 minutes each (about 6,400 words) so that a chip's paired
    interval against its digital QAT model on beam search is about +-5 % relative with 10 programming instances:
    at 10 minutes it was +-8.8 % (dev, 3 instances, the physical chip of recipes/mini), and the half-width falls
    with the square root of the utterances. The
    speakers and talk seeds stay those of the 10-minute corpus, so train is the same audio."""
    return {"train": SplitSize(120, 60.0), "dev": SplitSize(8, 40.0), "test": SplitSize(11, 40.0)}


@dataclass
class SynthSettings:
    """The mini corpus: a function of (seed, splits, mini_corpus.GENERATOR_VERSION), cached in cache_dir."""

    seed: int = 0
    cache_dir: str = "work/cache"
    workers: int = 2  # espeak-ng processes at once
    splits: dict[str, SplitSize] = field(default_factory=_mini_splits)

    def __post_init__(self):
        if sorted(self.splits) != sorted(SPLITS):
            raise ValueError(f"data.synth.splits must name exactly {list(SPLITS)}, got {sorted(self.splits)}")
        for name, size in self.splits.items():
            if size.talks < 1 or size.minutes <= 0:
                raise ValueError(
                    f"data.synth.splits.{name} needs talks >= 1 and minutes > 0, "
                    f"got talks={size.talks} minutes={size.minutes}"
                )
        if self.workers < 1:
            raise ValueError(f"data.synth.workers must be >= 1, got {self.workers}")


@dataclass
class DataSettings:
    """What `configs/data/*.yaml` holds: a corpus folder in TEDLIUM_release2's layout, or `synth`."""

    name: str = "mini"
    corpus_dir: str | None = None  # TEDLIUM_release2 with {train,dev,test}/{sph,stm}
    synth: SynthSettings | None = None  # set: the mini corpus is synthesized and corpus_dir is ignored
    download: bool = False  # fetch and unpack the corpus into corpus_dir if it is not there (asr.data.download)
    url: str = download_module.TEDLIUM2_URL
    sha256: str | None = download_module.TEDLIUM2_SHA256  # of the archive; None: check its size only

    def __post_init__(self):
        if self.synth is not None:
            return
        if not self.corpus_dir:
            raise ValueError(
                "data.corpus_dir is not set: pass data.corpus_dir=/path/to/TEDLIUM_release2 (add data.download=true "
                "to fetch it there)"
            )
        if not self.download and not Path(self.corpus_dir).is_dir():
            raise ValueError(f"data.corpus_dir: no such directory: {self.corpus_dir} (data.download=true fetches it)")

    def identity(self) -> dict:
        """What the prepared manifests depend on: the synthesis recipe, or the corpus folder."""
        if self.synth is None:
            return {"name": self.name, "corpus_dir": str(Path(str(self.corpus_dir)).resolve())}
        s = self.synth
        return {
            "name": self.name,
            "synth": {
                "seed": s.seed,
                "generator_version": mini_corpus.GENERATOR_VERSION,
                "splits": {k: vars(v) for k, v in sorted(s.splits.items())},
            },
        }

    def locate(self) -> Path:
        """The TEDLIUM_release2 tree: the user's copy, or the mini corpus (synthesized on first use)."""
        if self.synth is None:
            corpus = Path(str(self.corpus_dir))  # set: __post_init__ checked it
            return download_module.ensure_corpus(corpus, self.url, self.sha256) if self.download else corpus
        s = self.synth
        return mini_corpus.build(s.cache_dir, s.seed, {k: vars(v) for k, v in s.splits.items()}, s.workers)
