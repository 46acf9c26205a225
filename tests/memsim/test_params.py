import json

import pytest
import torch

import memsim
from memsim.params import default_params_path


def test_default_params_come_from_the_synaptogen_package():
    params = memsim.load_params()
    assert default_params_path().parent.name == "synaptogen"
    assert params.var_order == 10 and params.var_lags.shape == (4, 40) and params.var_noise.shape == (4, 4)
    assert params.gmm_chol.shape == (3, 8, 8) and params.gmm_means.shape == (3, 8)
    assert all(t.dtype == torch.float32 for t in (params.hhrs, params.gamma, params.var_lags))
    # Lower-triangular Cholesky factors, component 0's first entry as in the file.
    assert torch.equal(params.gmm_chol, params.gmm_chol.tril())
    assert params.gmm_chol[0, 0, 0] == pytest.approx(0.0592141)
    assert params.umax == pytest.approx(1.46) and params.u0 == pytest.approx(0.2)


@pytest.mark.parametrize("p", [1, 4, 10])
def test_var_order_uses_its_own_fit(p):
    raw = json.loads(default_params_path().read_text(encoding="utf-8"))
    params = memsim.load_params(p=p)
    fit = torch.tensor(raw[f"VAR_{p:03d}"])
    assert torch.equal(params.var_noise, fit[:, :4]) and torch.equal(params.var_lags, fit[:, 4:])


@pytest.mark.parametrize("p", [0, 11, 2.5, True])
def test_bad_var_order(p):
    with pytest.raises(memsim.ParamsError, match="VAR order"):
        memsim.load_params(p=p)


def write(tmp_path, content):
    path = tmp_path / "params.json"
    path.write_text(content, encoding="utf-8")
    return path


def default_json():
    return json.loads(default_params_path().read_text(encoding="utf-8"))


def test_missing_file(tmp_path):
    with pytest.raises(memsim.ParamsError, match="nope.json.*cannot read"):
        memsim.load_params(tmp_path / "nope.json")


def test_invalid_json_names_file_and_line(tmp_path):
    path = write(tmp_path, '{"Umax": 1.46,\n "η": }')
    with pytest.raises(memsim.ParamsError, match=r"params.json: not valid JSON \(line 2"):
        memsim.load_params(path)


def test_missing_entry(tmp_path):
    raw = default_json()
    del raw["VAR_010"]
    with pytest.raises(memsim.ParamsError, match="params.json: missing entry 'VAR_010'"):
        memsim.load_params(write(tmp_path, json.dumps(raw)))


def test_wrong_shape(tmp_path):
    raw = default_json()
    raw["LDtD"] = raw["LDtD"][:4]
    with pytest.raises(memsim.ParamsError, match=r"'LDtD' has shape \(4, 24\), expected \(8, 24\)"):
        memsim.load_params(write(tmp_path, json.dumps(raw)))


def test_ragged_array(tmp_path):
    raw = default_json()
    raw["γ"][1] = raw["γ"][1][:2]
    with pytest.raises(memsim.ParamsError, match="'γ' is not a number or a rectangular array"):
        memsim.load_params(write(tmp_path, json.dumps(raw)))


def test_custom_file_round_trip(tmp_path):
    params = memsim.load_params(write(tmp_path, json.dumps(default_json())), p=2)
    assert params.var_order == 2 and params.path.endswith("params.json")
