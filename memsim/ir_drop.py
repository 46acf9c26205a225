"""IR drop: what a tile's cells see, and its columns sense, when the row and column wires have resistance.

Geometry of a tile of R rows and C columns, one wire segment per cell pitch (CrossbarConfig.wire_resistance):
- row i is driven at v_rows[i] from its end before column 0: a segment from the driver to the row's node at
  column 0, one between neighbouring columns; the row's far end is open;
- column j is sensed at a virtual ground past the last row: a segment between neighbouring rows' nodes, one
  from the last row's node to the sense amplifier; the column's end above row 0 is open;
- cell (i, j) joins row node (i, j) to column node (i, j) and carries I = g (Vr - Vc) (ohmic) or iv(Vr - Vc).

Kirchhoff's current law at every node, with the row wires' conductance w_r and the columns' w_c (the driver's
and the ground's voltages moved to the right-hand side b, v_rows[i] w_r at each row's first node):
    row nodes:    L_r Vr + I(Vr - Vc) = b          column nodes:    L_c Vc - I(Vr - Vc) = 0
where L_r and L_c are the wires' chain Laplacians. The sensed column currents are w_c Vc[R-1, j].

solve() runs Newton's method on these equations. Each Newton step's linear system [[L_r + G, -G], [-G, L_c + G]],
G the cells' differential conductances, is symmetric positive definite (a resistor network grounded at its
drivers and sense amplifiers); it is solved by conjugate gradients preconditioned with the exact solve of every
wire with its cells alone (a tridiagonal system per row and per column, Thomas's algorithm). For ohmic cells
the first Newton step is the exact solution. Everything is batched over leading dimensions (tiles) and input
vectors, in float64, and synchronizes with the host only for a convergence check every CHECK_EVERY iterations.

This is the exact model, for validation and sampled tiles (tests/memsim/test_ir_drop.py checks it against
ngspice and a dense nodal solve). Its cost grows with the tile's size and the wires' resistance: it is not the
read path of a whole model.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch

from memsim.params import polyval

# Interconnect per technology node, as NeuroSim 1.4 models it (neurosim/NeuroSim: NeuroSIM/Param.cpp): node (nm)
# -> wire width (nm), aspect ratio, bulk-and-scattering resistivity (ohm m) and barrier thickness (m). Its
# resistivity rises as wires narrow (size effects) and the barrier takes part of the cross-section.
NEUROSIM_WIRES: dict[int, tuple[float, float, float, float]] = {
    130: (175, 1.6, 2.01e-8, 10e-9),
    90: (110, 1.6, 2.20e-8, 10e-9),
    65: (105, 1.7, 2.21e-8, 7e-9),
    45: (80, 1.7, 2.37e-8, 5e-9),
    32: (56, 1.8, 2.63e-8, 4e-9),
    22: (40, 1.9, 2.97e-8, 2.5e-9),
    14: (32, 2.0, 3.25e-8, 2.5e-9),
    10: (22, 2.0, 3.95e-8, 2e-9),
    7: (20, 2.0, 4.17e-8, 2e-9),
}
# Wire length per cell in wire widths, (row segment, column segment), as NeuroSim assigns them (wireLengthRow from
# heightInFeatureSize*, wireLengthCol from widthInFeatureSize*): a passive crossbar cell is 2 x 2; a 1T1R cell 4 x 12.
# For the 1T1R cell the assignment is NeuroSim's (a row wire crossing a 12-wide cell would be the longer one).
CELL_PITCH = {"crossbar": (2, 2), "1t1r": (4, 12)}


def segment_resistance(node_nm: int, cell: str = "crossbar") -> tuple[float, float]:
    """Ohms of one wire segment (one cell pitch) along a row and along a column at a technology node, at 300 K, as
    NeuroSim 1.4 computes them: resistivity / (1 - barrier area fraction) / (width^2 x aspect ratio) x pitch.
    At 45 nm a passive crossbar's segment is 0.42 ohm, at 7 nm 2.8 ohm; a 1T1R cell's column segment 2.5 and
    16.7 ohm."""
    if node_nm not in NEUROSIM_WIRES or cell not in CELL_PITCH:
        raise ValueError(
            f"no wire data for node {node_nm} nm and cell {cell!r}: "
            f"nodes {sorted(NEUROSIM_WIRES)}, cells {sorted(CELL_PITCH)}"
        )
    width_nm, aspect, resistivity, barrier = NEUROSIM_WIRES[node_nm]
    width = width_nm * 1e-9
    effective = resistivity / (1 - (2 * aspect * width + width) * barrier / (aspect * width**2))
    per_metre = effective / (width * width * aspect)
    return tuple(per_metre * pitch * width for pitch in CELL_PITCH[cell])  # type: ignore[return-value]


CellModel = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]  # v -> (current, dI/dv), elementwise
CHECK_EVERY = 8  # conjugate-gradient iterations between convergence checks (each a host synchronization)


class IrDropSolution(NamedTuple):
    column_currents: torch.Tensor  # [..., B, C] amperes into each column's sense amplifier
    cell_voltages: torch.Tensor  # [..., B, R, C] Vr - Vc across each cell
    newton_steps: int


def solve(
    conductance: torch.Tensor,
    v_rows: torch.Tensor,
    wire_resistance: float | tuple[float, float],
    iv: CellModel | None = None,
    tolerance: float = 1e-10,
    max_newton_steps: int = 50,
) -> IrDropSolution:
    """The column currents and cell voltages of tiles with resistive wires (the geometry above).

    conductance [..., R, C]: each cell's conductance in siemens (ohmic cells; with `iv`, only its shape and
    device are used). v_rows [..., B, R]: the rows' driver voltages for B input vectors. wire_resistance: ohms per
    segment, one value for rows and columns or (row, column). iv: the cells' non-linear I-V, a function of the
    cell voltages [..., B, R, C] returning each cell's current and its derivative (synaptogen_iv). Converges
    until Newton's update and the conjugate gradients' residual are below `tolerance` relative to the largest
    row voltage and the drive current; raises if Newton does not converge in max_newton_steps."""
    row_ohms, column_ohms = _ohms(wire_resistance)
    g = conductance.to(torch.float64)
    v = v_rows.to(torch.float64)
    cell = iv or _ohmic(g.unsqueeze(-3))
    rows, columns = g.shape[-2:]
    shape = (*torch.broadcast_shapes(g.shape[:-2], v.shape[:-2]), v.shape[-2], rows, columns)
    if row_ohms == 0 and column_ohms == 0:  # ideal wires: every cell sees its row's voltage
        voltages = v.unsqueeze(-1).expand(shape)
        return IrDropSolution(cell(voltages)[0].sum(-2), voltages, 0)
    w_row, w_column = 1.0 / row_ohms, 1.0 / column_ohms
    row_nodes = v.unsqueeze(-1).expand(shape).clone()  # ideal wires as the first guess
    column_nodes = torch.zeros(shape, dtype=torch.float64, device=v.device)
    drive = torch.zeros(shape, dtype=torch.float64, device=v.device)
    drive[..., 0] = v * w_row
    scale = v.abs().amax().clamp_min(torch.finfo(torch.float64).tiny)
    for step in range(1, max_newton_steps + 1):
        current, slope = cell(row_nodes - column_nodes)
        residual_rows = drive - _chain(row_nodes, -1, w_row, fixed_start=True) - current
        residual_columns = current - _chain(column_nodes, -2, w_column, fixed_start=False)
        system = _NewtonSystem(slope, w_row, w_column)
        d_rows, d_columns = system.solve(residual_rows, residual_columns, tolerance)
        row_nodes += d_rows
        column_nodes += d_columns
        update = torch.maximum(d_rows.abs().amax(), d_columns.abs().amax())
        if iv is None or float(update / scale) < tolerance:
            cell_voltages = row_nodes - column_nodes
            return IrDropSolution(column_nodes[..., -1, :] * w_column, cell_voltages, step)
    raise RuntimeError(f"IR drop: Newton's method did not converge in {max_newton_steps} steps")


def _ohmic(g: torch.Tensor) -> CellModel:
    return lambda v: (g * v, g.expand(torch.broadcast_shapes(g.shape, v.shape)))


def synaptogen_iv(base: torch.Tensor, delta: torch.Tensor, r: torch.Tensor) -> CellModel:
    """The cells' I-V as memsim reads it (crossbar.ReadModel): I(v) = v (base(v) + r delta(v)), base and delta the
    chord-conductance polynomials (highest power first), r [..., R, C] each cell's state; with dI/dv."""
    current_base, current_delta = _times_v(base.double()), _times_v(delta.double())
    slope_base, slope_delta = _derivative(current_base), _derivative(current_delta)
    r = r.double().unsqueeze(-3)  # broadcast over the input vectors

    def iv(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        current = polyval(current_base, v) + r * polyval(current_delta, v)
        return current, polyval(slope_base, v) + r * polyval(slope_delta, v)

    return iv


def _times_v(poly: torch.Tensor) -> torch.Tensor:
    return torch.cat([poly, poly.new_zeros(1)])


def _derivative(poly: torch.Tensor) -> torch.Tensor:
    powers = torch.arange(poly.numel() - 1, 0, -1, dtype=poly.dtype, device=poly.device)
    return poly[:-1] * powers


def _chain(v: torch.Tensor, dim: int, w: float, fixed_start: bool) -> torch.Tensor:
    """The currents leaving each node of a chain of wire segments (conductance w) along dim: a segment between
    neighbours, and one to a node held at 0 V before the first node (fixed_start: a row's driver, its voltage in
    the right-hand side) or after the last (a column's sense amplifier)."""
    n = v.shape[dim]
    out = torch.zeros_like(v)
    step = v.narrow(dim, 1, n - 1) - v.narrow(dim, 0, n - 1)
    out.narrow(dim, 0, n - 1).sub_(step)
    out.narrow(dim, 1, n - 1).add_(step)
    end = 0 if fixed_start else n - 1
    out.narrow(dim, end, 1).add_(v.narrow(dim, end, 1))
    return out.mul_(w)


class _NewtonSystem:
    """[[L_r + G, -G], [-G, L_c + G]] x = (b_r, b_c) by preconditioned conjugate gradients, per tile and vector."""

    def __init__(self, slope: torch.Tensor, w_row: float, w_column: float):
        self.slope, self.w_row, self.w_column = slope, w_row, w_column
        self.row_lines = _Tridiagonal(_chain_diagonal(slope, -1, w_row, True), w_row, -1)
        self.column_lines = _Tridiagonal(_chain_diagonal(slope, -2, w_column, False), w_column, -2)

    def apply(self, rows: torch.Tensor, columns: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        across = self.slope * (rows - columns)
        return (
            _chain(rows, -1, self.w_row, True) + across,
            _chain(columns, -2, self.w_column, False) - across,
        )

    def solve(
        self, b_rows: torch.Tensor, b_columns: torch.Tensor, tolerance: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x_rows, x_columns = torch.zeros_like(b_rows), torch.zeros_like(b_columns)
        r_rows, r_columns = b_rows.clone(), b_columns.clone()
        z_rows, z_columns = self.row_lines.solve(r_rows), self.column_lines.solve(r_columns)
        p_rows, p_columns = z_rows.clone(), z_columns.clone()
        rz = _dot(r_rows, z_rows) + _dot(r_columns, z_columns)
        # the drive's scale: b's norm per system (an all-zero drive has the exact answer 0, and residual 0)
        b_norm = (_dot(b_rows, b_rows) + _dot(b_columns, b_columns)).sqrt().clamp_min(torch.finfo(torch.float64).tiny)
        limit = 10 * (b_rows.shape[-1] + b_rows.shape[-2]) + 100
        for iteration in range(1, limit + 1):
            a_rows, a_columns = self.apply(p_rows, p_columns)
            alpha = rz / (_dot(p_rows, a_rows) + _dot(p_columns, a_columns)).clamp_min(torch.finfo(torch.float64).tiny)
            x_rows += _expand(alpha) * p_rows
            x_columns += _expand(alpha) * p_columns
            r_rows -= _expand(alpha) * a_rows
            r_columns -= _expand(alpha) * a_columns
            if iteration % CHECK_EVERY == 0:
                relative = (_dot(r_rows, r_rows) + _dot(r_columns, r_columns)).sqrt() / b_norm
                if float(relative.amax()) < tolerance:
                    return x_rows, x_columns
            z_rows, z_columns = self.row_lines.solve(r_rows), self.column_lines.solve(r_columns)
            rz_next = _dot(r_rows, z_rows) + _dot(r_columns, z_columns)
            beta = rz_next / rz.clamp_min(torch.finfo(torch.float64).tiny)
            rz = rz_next
            p_rows = z_rows + _expand(beta) * p_rows
            p_columns = z_columns + _expand(beta) * p_columns
        raise RuntimeError(f"IR drop: conjugate gradients did not converge in {limit} iterations")


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per system (all but the last two dimensions): the sum over the tile of a b."""
    return (a * b).sum((-2, -1))


def _expand(per_system: torch.Tensor) -> torch.Tensor:
    return per_system[..., None, None]


def _chain_diagonal(slope: torch.Tensor, dim: int, w: float, fixed_start: bool) -> torch.Tensor:
    """The diagonal of a chain's Laplacian plus the cells' conductances: w per segment at each node, + slope."""
    n = slope.shape[dim]
    segments = torch.full((n,), 2.0 * w, dtype=slope.dtype, device=slope.device)
    segments[-1 if fixed_start else 0] = w  # the open end has one segment (a chain of one node: its fixed one)
    if n == 1:
        segments[0] = w
    shape = [1] * slope.dim()
    shape[dim] = n
    return slope + segments.view(shape)


class _Tridiagonal:
    """Many symmetric tridiagonal systems along one dimension, diagonal d and off-diagonal -w, factored once
    (Thomas's algorithm) and solved for any right-hand side."""

    def __init__(self, diagonal: torch.Tensor, w: float, dim: int):
        self.dim, self.w = dim, w
        d = diagonal.movedim(dim, 0)
        pivots = [d[0]]
        for k in range(1, d.shape[0]):
            pivots.append(d[k] - w * w / pivots[-1])
        self.pivots = pivots

    def solve(self, b: torch.Tensor) -> torch.Tensor:
        rhs = b.movedim(self.dim, 0)
        n, w, pivots = rhs.shape[0], self.w, self.pivots
        forward = [rhs[0]]
        for k in range(1, n):
            forward.append(rhs[k] + w * forward[-1] / pivots[k - 1])
        x = [forward[-1] / pivots[-1]]
        for k in range(n - 2, -1, -1):
            x.append((forward[k] + w * x[-1]) / pivots[k])
        return torch.stack(x[::-1]).movedim(0, self.dim)


# Elements (arrays x R x C x C) of the row wires' inverses transfer_matrix holds at once: 128 MiB in float64; with
# the temporaries made from them (the coupled blocks, Thomas's sweeps) a chunk's peak is about 4-5x that.
TRANSFER_CHUNK_ELEMENTS = 2**24


def transfer_matrix(conductance: torch.Tensor, wire_resistance: float | tuple[float, float]) -> torch.Tensor:
    """T [..., R, C] of tiles of ohmic cells with resistive wires: the column currents are v_rows @ T, exactly.

    With ohmic cells the network is linear, so each tile has one such matrix, whatever its inputs: a read through
    the wires stays one matrix product. T is found by a direct solve of the network (the geometry above), float64:
    - each row wire with its cells is a tridiagonal system L_i Vr_i = G_i Vc_i + w_r v_i e_0 (G_i the diagonal of
      row i's conductances); eliminating its nodes leaves, for the column nodes of row i,
      S_i Vc_i = a_i w_c Vc_i + G_i Vc_i - G_i L_i^-1 G_i Vc_i, driven by f_i = w_r G_i L_i^-1 e_0 v_i;
    - the column wires join row i's column nodes to row i +- 1's through w_c: a block-tridiagonal system in the
      rows, eliminated from row 0 down (block Thomas; every block is symmetric positive definite, so its inverse,
      by LU without host-synchronizing error checks, is stable; on this CPU batched LU inverses ran 40x faster
      than Cholesky solves). Only the
      last row's column nodes are needed, w_c Vc[R-1] being the sensed currents, so there is no back substitution.
    Cost per tile: R inverses of C x C blocks and their products with the sources, about R C^2 (2 C + R / 2)
    flops. Ideal wires (0 ohm for both) give T = conductance. TRANSFER_CHUNK_ELEMENTS bounds the memory held.
    """
    row_ohms, column_ohms = _ohms(wire_resistance)
    g = conductance.to(torch.float64)
    if row_ohms == 0 and column_ohms == 0:
        return g
    rows, columns = g.shape[-2:]
    lead = g.shape[:-2]
    flat = g.reshape(-1, rows, columns)
    per_chunk = max(1, TRANSFER_CHUNK_ELEMENTS // (rows * columns * columns))
    parts = [
        _transfer_chunk(flat[start : start + per_chunk], 1.0 / row_ohms, 1.0 / column_ohms)
        for start in range(0, flat.shape[0], per_chunk)
    ]
    return torch.cat(parts).reshape(*lead, rows, columns)


def _ohms(wire_resistance: float | tuple[float, float]) -> tuple[float, float]:
    """(row, column) ohms per segment of one value for both or a pair; both > 0, or both 0 (ideal wires)."""
    row_ohms, column_ohms = (
        wire_resistance if isinstance(wire_resistance, tuple) else (wire_resistance, wire_resistance)
    )
    if (row_ohms, column_ohms) != (0, 0) and (row_ohms <= 0 or column_ohms <= 0):
        raise ValueError(f"wire_resistance must be > 0 ohm for rows and columns (or 0 for both), got {wire_resistance}")
    return row_ohms, column_ohms


def _transfer_chunk(g: torch.Tensor, w_row: float, w_column: float) -> torch.Tensor:
    """transfer_matrix of tiles g [n, R, C] (float64, both wires resistive)."""
    n, rows, columns = g.shape
    # Every row wire's inverse at once: L_i^-1 [n, R, C, C], by Thomas's algorithm on the identity.
    row_lines = _Tridiagonal(_chain_diagonal(g, -1, w_row, True).unsqueeze(-1), w_row, -2)
    identity = torch.eye(columns, dtype=g.dtype, device=g.device)
    inverse = row_lines.solve(identity.expand(n, rows, columns, columns))
    coupled = g.unsqueeze(-1) * inverse * g.unsqueeze(-2)  # G_i L_i^-1 G_i
    drive = w_row * g * inverse[..., 0]  # f_i / v_i: G_i L_i^-1 e_0 w_r (L_i^-1 is symmetric)
    blocks: torch.Tensor | None = None  # M_i, the eliminated block of row i
    sources = g.new_zeros(n, columns, 0)  # y_i [n, C, i + 1]: row i's right-hand side for inputs 0..i
    for i in range(rows):
        segments = 1 + (i > 0)  # the segment below (to row i + 1 or the sense amplifier), and the one above
        block = torch.diag_embed(g[:, i] + segments * w_column) - coupled[:, i]
        if blocks is not None:  # eliminate row i - 1: M_i = S_i - w_c^2 M_{i-1}^-1, y_i = w_c M_{i-1}^-1 y_{i-1}
            eliminated, _ = torch.linalg.inv_ex(blocks)
            block = block - w_column**2 * eliminated
            sources = w_column * (eliminated @ sources)
        blocks = block
        sources = torch.cat([sources, drive[:, i].unsqueeze(-1)], -1)
    assert blocks is not None
    last = torch.linalg.inv_ex(blocks)[0] @ sources  # Vc[R-1] [n, C, R] per unit input of each row
    return (w_column * last).transpose(-1, -2)
