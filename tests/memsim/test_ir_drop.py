"""The exact IR-drop solver against a dense nodal solve and against ngspice, ohmic and with the Synaptogen I-V."""

import re
import shutil
import subprocess

import pytest
import torch

import memsim
from memsim.crossbar import ReadModel
from memsim.ir_drop import segment_resistance, solve, synaptogen_iv, transfer_matrix

LRS, HRS = 1 / 4500.0, 1 / 75000.0


def random_tile(rows: int, columns: int, seed: int) -> torch.Tensor:
    """Conductances [rows, columns]: one cell in four at LRS, the rest at HRS, each spread by 10 %."""
    generator = torch.Generator().manual_seed(seed)
    on = torch.rand(rows, columns, generator=generator) < 0.25
    spread = 1 + 0.1 * torch.randn(rows, columns, generator=generator, dtype=torch.float64)
    return torch.where(on, LRS, HRS) * spread


def dense_solve(g: torch.Tensor, v: torch.Tensor, row_ohms: float, column_ohms: float) -> torch.Tensor:
    """Column currents of one input by a dense nodal solve: unknowns row nodes then column nodes, row-major."""
    rows, columns = g.shape
    n = rows * columns
    a = torch.zeros(2 * n, 2 * n, dtype=torch.float64)
    b = torch.zeros(2 * n, dtype=torch.float64)

    def connect(i: int, j: int, conductance: float) -> None:  # a conductance between unknowns i and j
        a[i, i] += conductance
        a[j, j] += conductance
        a[i, j] -= conductance
        a[j, i] -= conductance

    for i in range(rows):
        for j in range(columns):
            row_node, column_node = i * columns + j, n + i * columns + j
            connect(row_node, column_node, float(g[i, j]))
            if j == 0:  # the driver
                a[row_node, row_node] += 1 / row_ohms
                b[row_node] += float(v[i]) / row_ohms
            else:
                connect(row_node, row_node - 1, 1 / row_ohms)
            if i == rows - 1:  # the sense amplifier at 0 V
                a[column_node, column_node] += 1 / column_ohms
            else:
                connect(column_node, column_node + columns, 1 / column_ohms)
    nodes = torch.linalg.solve(a, b)
    return nodes[n + (rows - 1) * columns :] / column_ohms


@pytest.mark.parametrize("shape, ohms", [((4, 4), (1.0, 1.0)), ((16, 16), (2.5, 1.0)), ((7, 12), (5.0, 3.0))])
def test_ohmic_tiles_match_a_dense_nodal_solve(shape, ohms):
    g = random_tile(*shape, seed=0)
    v = torch.rand(3, shape[0], generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 1.2 - 0.6
    solution = solve(g, v, ohms)
    expected = torch.stack([dense_solve(g, vector, *ohms) for vector in v])
    torch.testing.assert_close(solution.column_currents, expected, rtol=1e-8, atol=1e-14)
    ideal = v @ g
    assert (solution.column_currents - ideal).abs().max() > 1e-3 * ideal.abs().max()  # the wires do matter


@pytest.mark.parametrize(
    "shape, ohms",
    [((4, 4), (1.0, 1.0)), ((16, 16), (2.5, 0.5)), ((7, 12), (0.3, 3.0)), ((1, 5), (1.0, 1.0)), ((5, 1), (1.0, 2.0))],
)
def test_the_transfer_matrix_of_ohmic_tiles_is_the_dense_nodal_solve_of_each_row_alone(monkeypatch, shape, ohms):
    """Row i of T is the column currents with row i at 1 V and the others at 0 V; batched tiles and several chunks
    (memsim.ir_drop.TRANSFER_CHUNK_ELEMENTS) give each tile's own."""
    tiles = torch.stack([random_tile(*shape, seed) for seed in range(3)])
    unit_rows = torch.eye(shape[0], dtype=torch.float64)
    expected = torch.stack([torch.stack([dense_solve(tile, row, *ohms) for row in unit_rows]) for tile in tiles])
    torch.testing.assert_close(transfer_matrix(tiles, ohms), expected, rtol=1e-9, atol=1e-15)
    monkeypatch.setattr(memsim.ir_drop, "TRANSFER_CHUNK_ELEMENTS", 1)  # one tile per chunk
    torch.testing.assert_close(transfer_matrix(tiles, ohms), expected, rtol=1e-9, atol=1e-15)
    assert torch.equal(transfer_matrix(tiles, 0.0), tiles)


def test_tiles_and_inputs_are_batched_and_ideal_wires_give_the_product():
    tiles = torch.stack([random_tile(8, 8, seed) for seed in range(3)])  # [3, 8, 8]
    v = torch.rand(3, 2, 8, dtype=torch.float64) * 0.6  # [tiles, inputs, rows]
    batched = solve(tiles, v, 2.0).column_currents
    alone = torch.stack([solve(tile, vectors, 2.0).column_currents for tile, vectors in zip(tiles, v, strict=True)])
    torch.testing.assert_close(batched, alone, rtol=1e-9, atol=1e-15)
    torch.testing.assert_close(solve(tiles, v, 0.0).column_currents, v @ tiles)
    shared = v[0]  # one batch of inputs for every tile: broadcast, with wires and without
    for ohms in (0.0, 2.0):
        torch.testing.assert_close(
            solve(tiles, shared, ohms).column_currents,
            torch.stack([solve(tile, shared, ohms).column_currents for tile in tiles]),
            rtol=1e-9,
            atol=1e-15,
        )
    assert solve(tiles, shared, 0.0).cell_voltages.shape == (3, 2, 8, 8)
    silent = solve(tiles, torch.zeros(3, 2, 8, dtype=torch.float64), 2.0)  # all-zero drive: exactly nothing
    assert torch.equal(silent.column_currents, torch.zeros(3, 2, 8, dtype=torch.float64))
    with pytest.raises(ValueError, match="wire_resistance must be > 0"):
        solve(tiles, v, (1.0, 0.0))


def ngspice_column_currents(netlist_cells: list[str], v: torch.Tensor, columns: int, ohms: float) -> torch.Tensor:
    """ngspice's operating point of one tile: row drivers, wire resistors, the given cell elements between row node
    r_i_j and column node c_i_j, and 0 V sources as the sense amplifiers, with tolerances tightened."""
    rows = v.shape[0]
    lines = ["* memsim IR-drop check", ".options reltol=1e-12 abstol=1e-18 vntol=1e-15 gmin=1e-30 numdgt=15"]
    for i in range(rows):
        lines.append(f"vin{i} d{i} 0 dc {float(v[i]):.15e}")
        for j in range(columns):
            lines.append(f"rr{i}_{j} {f'd{i}' if j == 0 else f'r{i}_{j - 1}'} r{i}_{j} {ohms:.15e}")
            lines.append(f"rc{i}_{j} c{i}_{j} {f'c{i + 1}_{j}' if i < rows - 1 else f's{j}'} {ohms:.15e}")
    lines += netlist_cells
    lines += [f"vs{j} s{j} 0 dc 0" for j in range(columns)]
    lines += [".control", "op", "print " + " ".join(f"i(vs{j})" for j in range(columns)), ".endc", ".end"]
    result = subprocess.run(["ngspice", "-b", "/dev/stdin"], input="\n".join(lines), capture_output=True, text=True)
    found = dict(re.findall(r"i\(vs(\d+)\)\s*=\s*([-+0-9.eE]+)", result.stdout))
    assert len(found) == columns, result.stdout + result.stderr
    return torch.tensor([float(found[str(j)]) for j in range(columns)], dtype=torch.float64)


def require_ngspice() -> None:
    if shutil.which("ngspice") is None:
        pytest.fail("ngspice is not installed: `make setup` installs Debian's ngspice (as root)")


@pytest.mark.parametrize("size", [4, 16])
def test_ohmic_tiles_match_ngspice(size):
    require_ngspice()
    g = random_tile(size, size, seed=size)
    v = torch.rand(size, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * 1.2 - 0.6
    cells = [f"rg{i}_{j} r{i}_{j} c{i}_{j} {1 / float(g[i, j]):.15e}" for i in range(size) for j in range(size)]
    expected = ngspice_column_currents(cells, v, size, 2.0)
    torch.testing.assert_close(solve(g, v[None], 2.0).column_currents[0], expected, rtol=1e-4, atol=1e-12)


@pytest.mark.parametrize("size", [4, 16])
def test_synaptogen_cells_match_ngspice(size):
    """Each cell's current is the read model's polynomial I(v) = v (base(v) + r delta(v)) at its own r: in
    ngspice a behavioural current source with that polynomial."""
    require_ngspice()
    model = ReadModel(memsim.CrossbarConfig())
    r = torch.where(random_tile(size, size, seed=size) > 1e-4, model.r_on, model.r_off)  # LRS where the tile's is
    r = r + 0.05 * torch.randn(size, size, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    v = torch.rand(size, generator=torch.Generator().manual_seed(4), dtype=torch.float64) * 1.2 - 0.6
    iv = synaptogen_iv(model.base, model.delta, r)
    current_poly = [
        torch.cat([model.base.double(), torch.zeros(1, dtype=torch.float64)])
        + float(r[i, j]) * torch.cat([model.delta.double(), torch.zeros(1, dtype=torch.float64)])
        for i in range(size)
        for j in range(size)
    ]
    cells = []
    for index, poly in enumerate(current_poly):
        i, j = divmod(index, size)
        voltage = f"v(r{i}_{j},c{i}_{j})"
        horner = f"{float(poly[0]):.17e}"
        for coefficient in poly[1:]:
            horner = f"({horner})*{voltage}+({float(coefficient):.17e})"
        cells.append(f"bg{i}_{j} r{i}_{j} c{i}_{j} i={{{horner}}}")
    expected = ngspice_column_currents(cells, v, size, 2.0)
    solution = solve(torch.zeros(size, size, dtype=torch.float64), v[None], 2.0, iv)
    torch.testing.assert_close(solution.column_currents[0], expected, rtol=1e-4, atol=1e-12)
    assert solution.newton_steps > 1  # the non-linear cells needed Newton's iterations


def test_wire_segments_follow_neurosim_by_technology_node():
    # 45 nm: width 80 nm, aspect 1.7, 2.37e-8 ohm m, a 5 nm barrier; a passive cell is 2 widths long either way
    width, aspect = 80e-9, 1.7
    resistivity = 2.37e-8 / (1 - (2 * aspect * width + width) * 5e-9 / (aspect * width**2))
    per_segment = resistivity / (width**2 * aspect) * 2 * width
    assert segment_resistance(45) == pytest.approx((per_segment, per_segment))
    assert per_segment == pytest.approx(0.416, abs=1e-3)
    row, column = segment_resistance(7, "1t1r")
    assert (row, column) == pytest.approx((5.56, 16.68), abs=0.01)
    with pytest.raises(ValueError, match="no wire data for node 3 nm"):
        segment_resistance(3)
