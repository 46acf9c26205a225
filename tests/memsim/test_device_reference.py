"""Exact equivalence with the reference numpy `synaptogen` package, fed the very same random draws."""

import numpy as np
import pytest
import torch
from synaptogen import synaptogen as reference

import memsim
from memsim.validation.reference import ReferenceCells


class DrawRecorder:
    """Wraps torch.rand/randn to keep a copy of every draw memsim makes."""

    def __init__(self, monkeypatch):
        self.draws = []
        for name in ("rand", "randn"):
            original = getattr(torch, name)

            def recording(*args, _original=original, **kwargs):
                tensor = _original(*args, **kwargs)
                self.draws.append(tensor.detach().cpu().numpy().copy())
                return tensor

            monkeypatch.setattr(torch, name, recording)

    def take(self) -> list[np.ndarray]:
        taken, self.draws = self.draws, []
        return taken


class DrawServer:
    """Stands in for the reference's module-level rand/randn, serving queued arrays in order."""

    def __init__(self, monkeypatch):
        self.queue = []
        monkeypatch.setattr(reference, "randn", self.serve)
        monkeypatch.setattr(reference, "rand", self.serve)

    def serve(self, shape, out=None):
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        array = self.queue.pop(0).astype(np.float32)
        assert array.shape == shape, f"reference asked for {shape}, next draw has {array.shape}"
        if out is None:
            return array
        out[...] = array
        return out


def make_pair(n, p, device, monkeypatch, seed=0):
    recorder, server = DrawRecorder(monkeypatch), DrawServer(monkeypatch)
    generator = torch.Generator(device=device).manual_seed(seed)
    ours = memsim.CellArray(n, params=memsim.load_params(p=p), generator=generator)
    uniform, z, epsilon = recorder.take()
    k = np.searchsorted(
        np.cumsum(ours.params.gmm_weights.cpu().numpy()) / ours.params.gmm_weights.sum().item(), uniform
    )
    # The reference draws innovations [4, n], the component uniforms, then per component [8, n_k].
    server.queue = [epsilon, uniform] + [z[k == kk].T for kk in range(ours.params.gmm_weights.numel())]
    theirs = ReferenceCells(n, p=p)
    assert not server.queue
    return ours, theirs, recorder, server


def assert_same_state(ours, theirs, label):
    ref = theirs.cells
    p = ours.params.var_order

    def close(name, a, b, rtol=2e-4, atol=1e-6):
        a = a.cpu().numpy() if isinstance(a, torch.Tensor) else a
        np.testing.assert_allclose(a, b, rtol=rtol, atol=atol, err_msg=f"{name} after {label}")

    state = ours.state
    close("features y", state.y, ref.y)
    close("r", state.r, ref.r, atol=1e-5)
    close("reset threshold", state.reset_threshold, ref.UR)
    close("reset coefficients", state.reset_coefs, ref.resetCoefs, atol=1e-9)
    close("VAR history", state.history.T, ref.Xhat[4:], atol=1e-5)
    assert p * 4 == ref.Xhat.shape[0] - 4
    for name, theirs_ in (("cycle count", ref.n), ("inHRS", ref.inHRS), ("inLRS", ref.inLRS)):
        ours_ = {"cycle count": state.cycle_count, "inHRS": state.in_hrs, "inLRS": state.in_lrs}[name]
        np.testing.assert_array_equal(ours_.cpu().numpy(), theirs_, err_msg=f"{name} after {label}")
    close("resistance", ours.resistance(), theirs.resistance().numpy())


def scripted_voltages(n, seed=1):
    rng = np.random.default_rng(seed)
    steps = [
        ("SET", -2.0),
        ("partial RESET 0.8 V", 0.8),
        ("partial RESET 0.9 V", 0.9),
        ("SET", -2.0),
        ("partial RESET 1.0 V", 1.0),
        ("partial RESET 1.2 V", 1.2),
        ("full RESET", 1.46),
        ("SET", -2.5),
        ("full RESET", 2.0),
        ("weak SET", -0.7),
    ]
    steps += [(f"random voltages {i}", rng.uniform(-1.6, 1.6, n).astype(np.float32)) for i in range(25)]
    steps += [("SET", -2.0), ("per-cell partial RESET", rng.uniform(0.7, 1.4, n).astype(np.float32))]
    return steps


@pytest.mark.parametrize("p", [10, 3, 1])
def test_matches_reference_step_by_step(p, device, monkeypatch):
    n = 3000
    monkeypatch.setattr(memsim.device, "CPU_CHUNK", 1024)  # several chunks, the last one short
    ours, theirs, recorder, server = make_pair(n, p, device, monkeypatch)
    assert_same_state(ours, theirs, "construction")
    for label, voltage in scripted_voltages(n):
        u = torch.as_tensor(voltage, dtype=torch.float32).to(device) if isinstance(voltage, np.ndarray) else voltage
        ours.apply_voltage(u)
        epsilon = np.concatenate(recorder.take(), axis=1)  # one draw per chunk of cells
        server.queue = [epsilon]  # used only when some cell starts a new cycle, as the reference draws
        theirs.apply_voltage(voltage)
        server.queue.clear()
        assert_same_state(ours, theirs, label)
    assert ours.cycle_count.max() > 3 and not ours.state.in_hrs.all() and ours.state.in_lrs.any()


def test_noisy_read_matches_reference(device, monkeypatch):
    ours, theirs, recorder, server = make_pair(2000, 10, device, monkeypatch)
    ours.apply_voltage(-2.0)
    theirs.apply_voltage(-2.0)
    recorder.take()
    for u in (0.2, -0.3):
        current = ours.read(u).cpu().numpy()
        server.queue = [recorder.take()[0]]
        np.testing.assert_allclose(current, theirs.read(u).numpy(), rtol=1e-5, atol=1e-12)
