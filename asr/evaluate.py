"""The memsim stage: the quantization-aware model on simulated memristor crossbars.

Exactly the layers the QAT model quantized (quant.include, by default feed-forward, attention in/out
projections, conv-module pointwise layers) are mapped onto crossbars by memsim.convert; frontend, depthwise conv, norms, attention
matmuls and the output layer stay digital. Each of memsim.instances programming instances is a fresh chip
(its own seed: device-to-device and cycle-to-cycle draws); every instance decodes every split.
"""
import logging
import time
from pathlib import Path

import torch
from omegaconf import DictConfig

import memsim
from asr.decode import build_decoders, decode_split
from asr.errors import UserError
from asr.files import write_json
from asr.quant import quantized_layers
from asr.scoring import HEADER
from asr.train import load_model
from asr.workdir import WorkDir

log = logging.getLogger(__name__)

FEATURE_FRAMES_PER_SECOND = 100  # 10 ms frame shift


def crossbar_config(cfg: DictConfig) -> memsim.CrossbarConfig:
    """The chip of `cfg.memsim`, holding the weights of `cfg.quant` (bad settings: a UserError naming them)."""
    m = cfg.memsim
    settings = dict(weight_bits=cfg.quant.weight_bits, tile_size=m.tile_size, dac_bits=m.dac_bits,
                    v_read=m.v_read, read_noise=m.read_noise, device=m.device, set_voltage=m.set_voltage,
                    reset_voltage=m.reset_voltage, random_cycles=m.random_cycles, verify_retries=m.verify_retries,
                    var_order=m.var_order, adc_precision_bits=None, adc_range_bits=None)
    try:
        config = memsim.CrossbarConfig(**settings)
        return config if m.adc == "ideal" else config.with_adc(m.adc)
    except ValueError as error:
        raise UserError(f"memsim settings: {error} (memsim.adc is 'ideal' or one of {sorted(memsim.ADC_PRESETS)})") \
            from None


def evaluate(cfg: DictConfig) -> None:
    """Decode every split with memsim.instances programmed chips of the QAT model (train.exp_dir/final.pt)
    into work_dir/memsim/<quant.name>/<memsim.name>/instance-<k>/<split>/<method>/, plus summary.json."""
    if cfg.quant.weight_bits is None:
        log.info("memsim: nothing to map, the system is the float model (quant=qat maps a quantized one)")
        return
    path = Path(cfg.train.exp_dir) / "final.pt"
    if not path.is_file():
        raise UserError(f"no trained model at {path}: run the train stage first")
    config = crossbar_config(cfg)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    decoders = build_decoders(cfg)
    out = WorkDir(cfg.work_dir).memsim_dir(cfg.quant.name, cfg.memsim.name)
    rows = []
    for instance in range(cfg.memsim.instances):
        began = time.perf_counter()
        model = load_model(path, device)
        generator = torch.Generator(device).manual_seed(cfg.memsim.seed + instance)
        memsim.convert(model, config, generator=generator, include=quantized_layers(model))
        programmed = time.perf_counter() - began
        if instance == 0:
            write_json(out / "summary.json", chip_summary(model, config, programmed))
            log.info("chip (%s):\n%s", cfg.memsim.name, memsim.format_summary(memsim.summary(model)))
        for split in cfg.decode.splits:
            scores = decode_split(model, cfg, split, out / f"instance-{instance}" / split, decoders)
            rows += [s.row(f"{cfg.quant.name}/{cfg.memsim.name}/{instance}/{split}/{m}") for m, s in scores.items()]
        log.info("memsim instance %d: programmed in %.1f s, decoded in %.1f s", instance, programmed,
                 time.perf_counter() - began - programmed)
    log.info("WER on simulated crossbars:\n%s", "\n".join([HEADER, *rows]))


def chip_summary(model: torch.nn.Module, config: memsim.CrossbarConfig, program_seconds: float) -> dict:
    """memsim.summary's totals and layers, the configuration, and ADC conversions per second of audio."""
    rows = memsim.summary(model)
    vectors_per_second = int(model.output_lengths(torch.tensor([FEATURE_FRAMES_PER_SECOND]))[0])
    return {
        "config": {k: v for k, v in vars(config).items()},
        "layers": rows[:-1],
        "total": rows[-1],
        "adc_conversions_per_second_of_audio": rows[-1]["adc_conversions"] * vectors_per_second,
        "program_seconds": round(program_seconds, 2),
    }
