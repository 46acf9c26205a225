"""The speech recognition recipe: corpora, tokenizer, features, Conformer-CTC, quantization-aware training,
decoding and scoring, the model on simulated crossbars (memsim), reports, and the pipeline that runs them.

It needs the `asr` extra (`pip install '.[asr]'`); `pip install .` installs memsim alone. Importing asr
without the extra says so, naming what is missing, instead of failing later on the first missing module.
"""

import importlib.util

# the top-level modules of the asr extra's distributions (pyproject.toml), as they are imported
_EXTRA_MODULES = (
    "torchaudio",
    "flashlight",
    "sentencepiece",
    "jiwer",
    "hydra",
    "omegaconf",
    "soundfile",
    "tqdm",
    "matplotlib",
    "filelock",
)
_missing = [name for name in _EXTRA_MODULES if importlib.util.find_spec(name) is None]
if _missing:
    raise ModuleNotFoundError(
        f"the recipe (asr) needs the asr extra, and {', '.join(_missing)} is not installed: "
        "pip install 'memristor-asr[asr]' (from a checkout: pip install '.[asr]'); memsim alone needs none of it"
    )
