import csv
import dataclasses
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from asr import checkpoint, settings
from asr.checkpoint import load_model
from asr.errors import CorruptFile, UserError
from asr.model import ConformerCTC, ModelConfig, infeasible
from asr.pipeline import graph, runner
from asr.quant import QuantConfig, quantize, quantized_layers
from asr.schedule import build_scheduler
from asr.train import TrainConfig, build_optimizer, fit, initial_model


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models gain nothing from a second thread, and lose a lot (4x here) when the cores are shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_model(quant: QuantConfig | None = None, dropout: float = 0.1) -> ConformerCTC:
    torch.manual_seed(0)
    model = ConformerCTC(
        ModelConfig(
            vocab_size=10,
            frontend="conv2d",
            d_model=32,
            n_layers=2,
            n_heads=2,
            d_ff=64,
            kernel_size=5,
            dropout=dropout,
            attn_dropout=dropout,
            pos_enc="relative",
            conv_norm="layer",
        )
    )
    return quantize(model, quant) if quant else model


def synthetic_batches(n: int, size: int = 4, frames: int = 48, seed: int = 1) -> list[dict]:
    """Batches shaped like asr.data.batching.collate's: random features and label sequences."""
    g = torch.Generator().manual_seed(seed)
    return [
        {
            "feats": torch.randn(size, frames, 80, generator=g),
            "feat_lens": torch.randint(frames // 2, frames + 1, (size,), generator=g).clamp_max(frames),
            "tokens": torch.randint(1, 10, (size, 5), generator=g),
            "token_lens": torch.randint(2, 6, (size,), generator=g),
        }
        for _ in range(n)
    ]


def quick_config(**overrides) -> TrainConfig:
    base = dict(
        optimizer="radam",
        lr=3e-3,
        schedule="onecycle",
        epochs=3,
        checkpoint_every=5,
        keep_checkpoints=3,
        average_last=2,
        log_every=2,
        seed=0,
    )
    return TrainConfig(**{**base, **overrides})


class Killed(Exception):
    pass


class DiesAfter:
    """The same batches, but the process 'dies' when batch number `n` (over all epochs) is requested."""

    def __init__(self, batches: list[dict], n: int):
        self.batches, self.n, self.served = batches, n, 0

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        for batch in self.batches:
            if self.served == self.n:
                raise Killed
            self.served += 1
            yield batch


@pytest.mark.parametrize("quant", [None, QuantConfig(weight_bits=3)], ids=["float", "qat"])
def test_killed_and_resumed_run_ends_with_identical_weights(tmp_path, quant):
    batches, cfg = synthetic_batches(4), quick_config()  # 12 steps; checkpoints at 4, 5, 8, 10, 12
    straight = fit(tiny_model(quant), batches, cfg, tmp_path / "straight").state_dict()
    with pytest.raises(Killed):
        fit(tiny_model(quant), DiesAfter(batches, 7), cfg, tmp_path / "resumed")  # dies mid-epoch 1
    assert checkpoint.checkpoints(tmp_path / "resumed")[-1].name == "ckpt-00000005.pt"
    resumed = fit(tiny_model(quant), batches, cfg, tmp_path / "resumed").state_dict()
    assert straight.keys() == resumed.keys()
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
    rows = list(csv.DictReader(open(tmp_path / "resumed" / "log.csv")))
    assert [int(r["step"]) for r in rows] == [2, 4, 6, 8, 10, 12]  # no step logged twice


def test_resuming_with_other_optimization_settings_is_a_clear_error(tmp_path):
    fit(tiny_model(), synthetic_batches(2), quick_config(epochs=1), tmp_path)
    with pytest.raises(UserError, match="other lr, epochs"):
        fit(tiny_model(), synthetic_batches(2), quick_config(epochs=2, lr=1e-2), tmp_path)


def test_checkpoints_are_pruned_and_final_is_the_average_of_epoch_ends(tmp_path):
    model = fit(
        tiny_model(), synthetic_batches(4), quick_config(), tmp_path, valid_batches=synthetic_batches(1, seed=2)
    )
    kept = checkpoint.checkpoints(tmp_path)  # step checkpoints (5, 10) are for resuming only
    assert [p.name for p in kept] == [
        "ckpt-00000004-epoch-0001.pt",
        "ckpt-00000008-epoch-0002.pt",
        "ckpt-00000012-epoch-0003.pt",
    ]
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    final = checkpoint.load(tmp_path / "final.pt")["model"]
    expected = checkpoint.average(kept[-2:])
    assert all(torch.equal(final[k], expected[k]) for k in expected)
    assert all(torch.equal(v, final[k]) for k, v in model.state_dict().items())
    valid = [r for r in csv.DictReader(open(tmp_path / "log.csv")) if r["split"] == "valid"]
    assert [(r["epoch"], r["step"]) for r in valid] == [("0", "4"), ("1", "8"), ("2", "12")]


def test_a_step_limit_inside_an_epoch_ends_a_partial_epoch_that_final_averages(tmp_path):
    fit(tiny_model(), synthetic_batches(4), quick_config(max_steps=6, checkpoint_every=100), tmp_path)
    assert [p.name for p in checkpoint.epoch_checkpoints(tmp_path)] == [
        "ckpt-00000004-epoch-0001.pt",
        "ckpt-00000006-epoch-0002.pt",
    ]
    final = checkpoint.load(tmp_path / "final.pt")["model"]
    expected = checkpoint.average(checkpoint.epoch_checkpoints(tmp_path))
    assert all(torch.equal(final[k], expected[k]) for k in expected)


def test_checkpoints_hold_only_tensors_and_plain_values(tmp_path):
    fit(tiny_model(), synthetic_batches(2), quick_config(epochs=1), tmp_path)
    state = checkpoint.load(checkpoint.checkpoints(tmp_path)[-1])  # weights_only=True: no code runs on load
    assert state["step"] == 2 and isinstance(state["rng"][0]["numpy"][1], torch.Tensor)
    torch.save({"model": {}, "meta": object()}, tmp_path / "foreign.pt")
    with pytest.raises(CorruptFile, match="foreign.pt: holds objects other than tensors .* could run code"):
        checkpoint.load(tmp_path / "foreign.pt")


def test_utterances_too_short_for_their_labels_are_counted_as_dropped(tmp_path):
    lengths, tokens = torch.tensor([3, 3, 4]), torch.tensor([[1, 2, 3], [1, 1, 2], [1, 1, 2]])
    assert infeasible(lengths, tokens, torch.tensor([3, 3, 3])).tolist() == [False, True, False]
    batches = synthetic_batches(2)
    batches[0]["tokens"], batches[0]["token_lens"] = torch.randint(1, 10, (4, 30)), torch.tensor([30, 2, 30, 3])
    fit(tiny_model(), batches, quick_config(epochs=1, log_every=1), tmp_path)
    dropped = [int(r["dropped"]) for r in csv.DictReader(open(tmp_path / "log.csv")) if r["split"] == "train"]
    assert dropped == [2, 0]  # 48 frames become 11 outputs: 30 labels cannot fit


@pytest.mark.parametrize("quant", [None, QuantConfig(weight_bits=3)], ids=["float", "qat-from-scratch"])
def test_training_lowers_the_loss_on_every_device(tmp_path, device, quant):
    batches = synthetic_batches(2)
    fit(
        tiny_model(quant, dropout=0.0),
        batches,
        quick_config(epochs=40, lr=5e-3, log_every=10, checkpoint_every=1000),
        tmp_path,
        device=device,
    )
    losses = [float(r["loss"]) for r in csv.DictReader(open(tmp_path / "log.csv"))]
    assert losses[-1] < 0.5 * losses[0], losses


def test_schedules():
    def lrs(kind, **kw):
        optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
        scheduler = build_scheduler(optimizer, kind, 100, peak_lr=1.0, **kw)
        values = []
        for _ in range(100):
            values.append(scheduler.get_last_lr()[0])
            optimizer.step()
            scheduler.step()
        return values

    one = lrs("onecycle", pct_start=0.3, div_factor=25, final_div_factor=1e4)
    assert one[0] == pytest.approx(1 / 25) and max(one) == pytest.approx(1.0)
    assert one.index(max(one)) == 29 and one[-1] == pytest.approx(1 / 25 / 1e4, rel=0.1)
    noam = lrs("noam", warmup_steps=10)
    assert noam[9] == 1.0 and noam[0] == 0.1 and noam[39] == pytest.approx(0.5)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, out_dir: str, shards: list) -> None:
    os.environ.update(
        RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    torch.set_num_threads(1)
    model = fit(tiny_model(dropout=0.0), shards[rank], quick_config(epochs=2), out_dir, device="cpu")
    torch.save(model.state_dict(), os.path.join(out_dir, f"rank{rank}.pt"))
    torch.distributed.destroy_process_group()


def test_ddp_on_two_cpu_processes_matches_one_process_on_the_whole_batches(tmp_path):
    whole = synthetic_batches(3, size=4)
    shards = [[{k: v[r * 2 : (r + 1) * 2] for k, v in b.items()} for b in whole] for r in range(2)]
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path / "ddp"), shards), nprocs=2)
    ranks = [torch.load(tmp_path / "ddp" / f"rank{r}.pt") for r in range(2)]
    single = fit(tiny_model(dropout=0.0), whole, quick_config(epochs=2), tmp_path / "single").state_dict()
    for key, value in single.items():
        assert torch.equal(ranks[0][key], ranks[1][key]), key
        torch.testing.assert_close(ranks[0][key], value, rtol=1e-4, atol=1e-5)


def test_train_stage_trains_float_then_qat_from_the_float_weights(tmp_path, tiny_mini_corpus, tiny_splits, make_cfg):
    sizes = [
        f"data.synth.splits.{split}.{key}={value}" for split, spec in tiny_splits.items() for key, value in spec.items()
    ]
    tiny = [
        "model.d_model=32",
        "model.n_layers=1",
        "model.d_ff=64",
        "model.n_heads=2",
        "train.max_steps=2",
        "train.checkpoint_every=1",
        "train.average_last=2",
        "loader.num_workers=0",
    ]
    base = [f"work_dir={tmp_path}", f"data.synth.cache_dir={tiny_mini_corpus.parents[1]}", *sizes, *tiny]
    qat = [*base, "quant=qat", "+qat_train.init_from=float"]
    runner.run(make_cfg(*qat, "stages=[prepare,tokenizer,cmvn,train_float,train]"))
    s = settings.load(make_cfg(*qat))
    float_final, qat_final = (tmp_path / graph.model_output(s, q).relpath / "final.pt" for q in (False, True))
    model = load_model(qat_final)
    assert len(quantized_layers(model)) == 8 and model.blocks[0].ff1.w1.weight_bits == 3
    assert not torch.equal(model.head.weight, load_model(float_final).head.weight)  # fine-tuned further
    assert "init" in graph.model_output(s, True).inputs
    # a mixed-precision model fine-tuned from the uniform QAT model (initial_model checks how it starts)
    mixed = [*base, "quant=qat", f"+qat_train.init_from={qat_final}", "++quant.layer_bits={blocks.0.ff1.*:4}"]
    mixed += ["+qat_train.max_steps=1", "+qat_train.average_last=1"]
    runner.run(make_cfg(*mixed, "stages=[train]"))
    fine_tuned = load_model(tmp_path / graph.model_output(settings.load(make_cfg(*mixed)), True).relpath / "final.pt")
    assert fine_tuned.blocks[0].ff1.w1.weight_bits == 4 and fine_tuned.blocks[0].ff2.w1.weight_bits == 3


def test_weight_decay_only_on_weight_matrices():
    model = tiny_model(QuantConfig(weight_bits=3, weight_scale="lsq", per_channel=True))
    decayed = {id(p) for p in build_optimizer(model, quick_config()).param_groups[0]["params"]}
    names = {n for n, p in model.named_parameters() if id(p) in decayed}
    assert "blocks.0.ff1.w1.weight" in names and "blocks.0.conv.depthwise.weight" in names
    assert not [n for n in names if "bias" in n or "step" in n or "norm" in n]


@pytest.mark.parametrize("scale", ["minmax", "lsq"])
@pytest.mark.parametrize("encoder", ["conformer", "blstm"])
def test_a_model_at_other_layer_bits_starts_from_a_quantized_model_with_its_ranges(tmp_path, scale, encoder):
    """init_from a quantization-aware model: its weights and quantizer ranges, and a layer at other bits quantizes
    the same weight range (what the sensitivity table measured with QuantLinear.at_bits)."""
    config = ModelConfig(vocab_size=10, frontend="conv2d", d_model=32, n_layers=1, n_heads=2, d_ff=64, encoder=encoder)
    uniform = QuantConfig(weight_bits=3, weight_scale=scale)
    torch.manual_seed(0)
    trained = quantize(ConformerCTC(config), uniform)
    trained.train()
    trained(torch.randn(2, 40, 80), torch.tensor([40, 33]))  # observe input ranges
    trained.eval()
    path = tmp_path / "uniform.pt"
    checkpoint.save({"model": trained.state_dict(), "meta": {"quant": dataclasses.asdict(uniform)}}, path)
    first = quantized_layers(trained)[0]
    mixed = initial_model(config, dataclasses.replace(uniform, layer_bits={first: 4}), path).eval()
    for name in quantized_layers(trained):
        before, after = trained.get_submodule(name), mixed.get_submodule(name)
        assert torch.equal(after.weight, before.weight) and torch.equal(after.input_scale, before.input_scale)
        expected = before.at_bits(4) if name == first else before
        assert after.weight_bits == expected.weight_bits
        torch.testing.assert_close(after.weight_scale, expected.weight_scale)
        assert torch.equal(after.integer_weight(), expected.integer_weight())
    with pytest.raises(ValueError, match="its quantized layers do not fit"):
        other = ModelConfig(vocab_size=10, frontend="conv2d", d_model=32, n_layers=2, n_heads=2, d_ff=64)
        initial_model(other, uniform, path)


def test_a_quantized_start_keeps_the_depthwise_lsq_range_at_other_weight_bits(tmp_path):
    config = ModelConfig(vocab_size=10, frontend="conv2d", d_model=32, n_layers=1, n_heads=2, d_ff=64)
    three = QuantConfig(weight_bits=3, weight_scale="lsq", quantize_depthwise=True)
    torch.manual_seed(0)
    trained = quantize(ConformerCTC(config), three)
    path = tmp_path / "three.pt"
    checkpoint.save({"model": trained.state_dict(), "meta": {"quant": dataclasses.asdict(three)}}, path)
    five = initial_model(config, dataclasses.replace(three, weight_bits=5), path)
    for name in ("blocks.0.conv.depthwise", "blocks.0.ff1.w1"):
        before, after = trained.get_submodule(name).weight_quant, five.get_submodule(name).weight_quant
        assert after.qmax == 15 and before.qmax == 3
        torch.testing.assert_close(after.step * after.qmax, before.step * before.qmax)  # the same range
