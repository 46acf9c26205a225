import torch

from asr.data import features


def test_fbank_is_80_dim_at_100_frames_per_second():
    wave = torch.randn(16000) * 0.1
    feats = features.fbank(wave)
    assert feats.shape == (98, 80)  # 25 ms windows every 10 ms over 1 s, Kaldi's snip-edges
    assert torch.isfinite(feats).all()


def test_fbank_is_deterministic_without_dither():
    wave = torch.randn(8000) * 0.1
    assert torch.equal(features.fbank(wave), features.fbank(wave))


def test_cmvn_normalizes_the_training_features_and_survives_a_save(tmp_path):
    batches = [torch.randn(50 + 10 * i, 80) * 3 + 7 for i in range(5)]
    cmvn = features.GlobalCMVN.estimate(batches)
    normalized = torch.cat([cmvn(b) for b in batches])
    assert torch.allclose(normalized.mean(0), torch.zeros(80), atol=1e-4)
    assert torch.allclose(normalized.std(0, unbiased=False), torch.ones(80), atol=1e-4)
    cmvn.save(tmp_path / "cmvn.json")
    loaded = features.GlobalCMVN.load(tmp_path / "cmvn.json")
    assert torch.equal(loaded(batches[0]), cmvn(batches[0]))


def test_speed_perturbation_changes_duration_by_the_factor():
    wave = torch.randn(16000)
    assert len(features.speed_perturb(wave, 1.0)) == 16000
    assert abs(len(features.speed_perturb(wave, 1.1)) - 16000 / 1.1) <= 1  # faster: shorter
    assert abs(len(features.speed_perturb(wave, 0.9)) - 16000 / 0.9) <= 1


def test_specaugment_zeroes_bands_and_keeps_shape():
    torch.manual_seed(0)
    augment = features.spec_augment(freq_masks=2, freq_width=27, time_masks=2, time_width=40, max_time_fraction=0.2)
    feats = torch.ones(300, 80)
    masked = augment(feats.T).T
    assert masked.shape == feats.shape
    assert 0 < (masked == 0).float().mean() < 0.8
