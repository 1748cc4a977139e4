"""Lowering a training program to a circuit, through the linear-algebra toolkit.

Feature-space vectors (weights, gradient directions) are
:class:`~sklearn_he.linalg.RowVector` (replicated down the rows of a tile).
Sample-space vectors (margins) are a :class:`~sklearn_he.linalg.ColVector`
or a ``RowVector``: each margin ``u_t`` has one *preferred orientation*
chosen by :func:`alternating` or :func:`columns`, and whoever needs the
other orientation converts it.

Two modes:

``fuse=False`` (the baseline, "as written")
    ``g(u)`` is evaluated on its own (2 levels) before the product with the
    data (1 level); margins ``Z_t v_t`` use the masked matvec (2 levels).
``fuse=True`` (with the pipelined program)
    the sigmoid polynomial is distributed through the product with the data
    or with a Gram block (``((c3 G) (.) u) (.) u**2``), so the product costs
    no level of its own; a Gram product costs 0 levels more when ``u_j`` is
    a column vector (free down-the-rows sum) and 1 when it is a row vector
    (masked within-row sum), hence the alternation.

``transposed=True`` (chunks without Gram blocks)
    the minibatch tiles hold ``Z_t^T`` (features down the tile rows,
    samples across), the weights are ColVectors and the margins RowVectors:
    a margin is a free down-the-rows sum (``rmatvec``, no mask) and a
    gradient a masked within-row sum (``matvec``). A gradient that only the
    chunk's outputs read is left in column 0 (``replicate=False``): the
    client decodes column 0 when it refreshes the state, so the replication
    back across the rows - ``log2(w)`` rotations on the critical path - is
    never computed. Critical path per step: ``log2(h) + log2(w)`` rotations
    instead of ``2 log2(w) + log2(h)``. With ``client_sums`` (the chunks
    that leave the update to the client) such a gradient stops before its
    sums within the rows as well: the client adds each row of the products
    after decrypting them (:class:`~sklearn_he.linalg.RowSums`), which
    saves the ``log2(w)`` rotations per row block, the column-0 mask's
    level and the rotation keys of those steps.

With *paired* inputs (:class:`~sklearn_he.linalg.PairedMatrix` minibatches
and a :class:`~sklearn_he.linalg.PairedColVector` ``v``, only in chunks that
leave the update to the client) nothing here changes: the toolkit's
``rmatvec`` adds the complex conjugate of its down-the-rows sums and
``matvec(reduce=False)`` returns :class:`~sklearn_he.linalg.PairedRowSums`.

Linear combinations are depth-aware: a term that is not on the critical path
is scaled with a product (one level it can afford), the deepest terms get
their coefficient folded into the operation that produces them (free).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..circuit import Sym, Tracer
from ..linalg import ColVector, EncMatrix, LinAlg, RowVector
from ._program import Gram, Lin, MatVec, Program, RMatVec, Sig, Var, VExpr

__all__ = ["ChunkInputs", "Lowering", "alternating", "columns", "rows"]

Orient = str  # "C" (ColVector) or "R" (RowVector)
Vec = ColVector[Sym] | RowVector[Sym]


def columns(t: int) -> Orient:
    """Every margin as a column vector (the baseline layout)."""
    return "C"


def alternating(t: int) -> Orient:
    """Even steps as column vectors, odd steps as row vectors (2.5 levels per step)."""
    return "C" if t % 2 == 0 else "R"


def rows(t: int) -> Orient:
    """Every margin as a row vector (with diagonal-major Gram blocks: 2 levels per step)."""
    return "R"


@dataclass
class ChunkInputs:
    """The encrypted inputs of one chunk circuit, as traced handles.

    Attributes
    ----------
    Z : list of EncMatrix
        ``Z_t`` (``m x f``) per step of the chunk (``Z_t^T`` when transposed,
        a :class:`~sklearn_he.linalg.PairedMatrix` when paired).
    state : dict
        ``"v"`` and ``"w"`` RowVectors (length ``f``).
    gram : callable
        ``gram(a, b)`` returns the block ``Z_a Z_b^T`` (``m x m``); how it is
        obtained (client upload or server precomputation) is the caller's.
    SZ : list of EncMatrix or None
        The weighted copies ``S_t Z_t`` (same layout as ``Z``) of a
        sample-weighted chunk: the gradients read them, the margins read
        ``Z``. None: unweighted.
    """

    Z: list[EncMatrix[Sym]]
    state: dict[str, Vec]
    gram: Callable[[int, int], EncMatrix[Sym]]
    used_grams: set[tuple[int, int]] = field(default_factory=set)
    diagonals: Callable[[int, int], tuple[list[int], EncMatrix[Sym]]] | None = None
    used_diagonals: set[tuple[int, int]] = field(default_factory=set)
    SZ: list[EncMatrix[Sym]] | None = None

    def gradient_data(self, t: int) -> EncMatrix[Sym]:
        """The matrix gradient ``t`` is the product of: ``S_t Z_t`` when weighted, else ``Z_t``."""
        return self.Z[t] if self.SZ is None else self.SZ[t]


class Lowering:
    """Turns a :class:`~sklearn_he.training._program.Program` into traced toolkit calls."""

    def __init__(
        self,
        tracer: Tracer,
        la: LinAlg[Sym],
        coeffs: Sequence[float],
        inputs: ChunkInputs,
        *,
        fuse: bool,
        orient: Callable[[int], Orient],
        transposed: bool = False,
        client_sums: bool = False,
    ) -> None:
        self.tracer = tracer
        self.la = la
        self.coeffs = np.asarray(coeffs, dtype=float)
        self.inputs = inputs
        self.fuse = fuse
        self.orient = orient
        self.transposed = transposed
        #: Leave the within-row sums of a transposed gradient that only the
        #: outputs read to the client (:class:`~sklearn_he.linalg.RowSums`).
        self.client_sums = client_sums
        #: Gradients that a later margin reads (replicated); the others feed
        #: the outputs only (set by :meth:`lower`).
        self._replicated: set[int] = set()
        self._memo: dict[tuple[Any, ...], Any] = {}
        self.margin_depths: dict[int, int] = {}
        #: Per output, the public factor the decrypting side multiplies it by
        #: (``client_sums``: a ``c * gradient`` output is sent unscaled, so that
        #: its noise is not amplified relative to its value: 1.0 otherwise).
        self.output_scales: dict[str, float] = {}

    # ------------------------------------------------------------- helpers
    def depth(self, x: EncMatrix[Sym] | Vec) -> int:
        blocks = [t for row in x.tiles for t in row] if isinstance(x, EncMatrix) else x.blocks
        return max(self.tracer.depth(b) for b in blocks)

    def _convert(self, x: Vec, o: Orient) -> Vec:
        if o == "C":
            return x if isinstance(x, ColVector) else self.la.row_to_col(x)
        return x if isinstance(x, RowVector) else self.la.col_to_row(x)

    def _fold(self, matrix: EncMatrix[Sym], vec: Vec) -> str:
        return "matrix" if self.depth(matrix) < self.depth(vec) else "vector"

    def _lin(self, x: Lin, lower: Callable[[VExpr, float], Any]) -> Any:
        base = {y.uid: lower(y, 1.0) for y, _ in x.terms}
        deepest = max(self.depth(v) for v in base.values())
        parts = []
        for y, c in x.terms:
            b = base[y.uid]
            if c == 1.0:
                parts.append(b)
            elif self.depth(b) + 1 <= deepest or isinstance(y, Var):
                parts.append(self.la.scale(b, c))
            else:
                parts.append(lower(y, c))  # fold into the producer: free
        acc = parts[0]
        for p in parts[1:]:
            acc = self.la.add(acc, p)
        return acc

    # ------------------------------------------------------ feature space
    def feature(self, x: VExpr, c: float = 1.0) -> Vec:
        """Lower a weight-space expression, times ``c`` (a RowVector; ColVector if transposed)."""
        key = ("f", x.uid, c)
        if key not in self._memo:
            self._memo[key] = self._feature(x, c)
        return self._memo[key]

    def _feature(self, x: VExpr, c: float) -> Vec:
        la = self.la
        if isinstance(x, Var):
            v = self.inputs.state[x.name]
            return v if c == 1.0 else la.scale(v, c)
        if isinstance(x, Lin):
            return self._lin(x, self.feature)
        if isinstance(x, RMatVec) and self.transposed:
            ZT = self.inputs.gradient_data(x.batch)
            replicate = x.uid in self._replicated
            reduce = replicate or not self.client_sums
            if isinstance(x.s, Sig) and self.fuse:
                u = self._convert(self.margin(x.s.x, self._pref(x.s.x)), "R")
                return la.matvec_poly(
                    ZT,
                    u,
                    self.coeffs,
                    scale=c,
                    fold=self._fold(ZT, u),
                    replicate=replicate,
                    reduce=reduce,
                )
            if not reduce:  # no mask to carry the scale: folded into g(u)
                return la.matvec(ZT, self.margin(x.s, "R", c), reduce=False)
            # The scale rides on the column-0 mask: one g(u) and one set of
            # products for every coefficient the gradient appears with.
            return la.matvec(ZT, self.margin(x.s, "R"), scale=c, replicate=replicate)
        if isinstance(x, RMatVec):
            Z = self.inputs.gradient_data(x.batch)
            if isinstance(x.s, Sig) and self.fuse:
                u = self._convert(self.margin(x.s.x, self._pref(x.s.x)), "C")
                return la.rmatvec_poly(Z, u, self.coeffs, scale=c, fold=self._fold(Z, u))
            s = self.margin(x.s, "C", c)
            return la.rmatvec(Z, s)
        raise TypeError(f"{x!r} is not a feature-space expression")

    # ------------------------------------------------------- sample space
    def _pref(self, u: VExpr) -> Orient:
        return self.orient(_batch_of(u))

    def margin(self, x: VExpr, o: Orient, c: float = 1.0) -> Vec:
        """Lower a sample-space expression, times ``c``, in orientation ``o``."""
        key = ("s", x.uid, o, c)
        if key not in self._memo:
            self._memo[key] = self._margin(x, o, c)
        return self._memo[key]

    def _margin(self, x: VExpr, o: Orient, c: float) -> Vec:
        la = self.la
        if isinstance(x, MatVec):
            Z, v = self.inputs.Z[x.batch], self.feature(x.x)
            if self.transposed:
                return self._convert(la.rmatvec(Z, v, scale=c), o)
            return self._convert(la.matvec(Z, v, scale=c), o)
        if isinstance(x, Sig):
            return la.poly(self.margin(x.x, o), c * self.coeffs)
        if isinstance(x, Lin):
            return self._lin(x, lambda y, d: self.margin(y, o, d))
        if isinstance(x, Gram):
            if not isinstance(x.s, Sig):
                raise TypeError(f"Gram products are lowered for g(u) only; got {x.s!r}")
            uj = x.s.x
            pref = self._pref(uj)
            u = self.margin(uj, pref)
            if pref == "R" and self.inputs.diagonals is not None:
                # Diagonal-major G_{t,j}: row orientation kept, no mask.
                offsets, D = self.inputs.diagonals(x.t, x.j)
                self.inputs.used_diagonals.add((x.t, x.j))
                y = la.diagonal_matvec_poly(D, offsets, u, self.coeffs, scale=c)
                m = self.inputs.Z[x.t].n_rows
                return self._convert(RowVector(y.blocks, y.shape, m), o)
            if pref == "C":  # free: column sums of G_{j,t}, weighted by g(u_j)
                G = self.inputs.gram(x.j, x.t)
                self.inputs.used_grams.add((x.j, x.t))
                r: Vec = la.rmatvec_poly(G, u, self.coeffs, scale=c, fold=self._fold(G, u))
            else:  # masked: row sums of G_{t,j} against g(u_j) replicated down the rows
                G = self.inputs.gram(x.t, x.j)
                self.inputs.used_grams.add((x.t, x.j))
                r = la.matvec_poly(G, u, self.coeffs, scale=c, fold=self._fold(G, u))
            return self._convert(r, o)
        raise TypeError(f"{x!r} is not a sample-space expression")

    # --------------------------------------------------------------- entry
    def lower(self, program: Program) -> dict[str, Vec]:
        """Lower every output; records the depth of each margin ``u_t``."""
        self._replicated = _read_by_margins(program)
        out = {}
        for name, expr in program.outputs.items():
            scale = 1.0
            if (
                self.client_sums
                and isinstance(expr, Lin)
                and len(expr.terms) == 1
                and isinstance(expr.terms[0][0], RMatVec)
                and expr.terms[0][0].uid not in self._replicated
            ):
                # ``c * gradient`` left to the client: products of magnitude
                # ``|z g(u)|`` carry CKKS's absolute noise; scaled by a small
                # ``c`` on the server, that noise would grow 1/c relative to them.
                expr, scale = expr.terms[0]
            out[name] = self.feature(expr)
            self.output_scales[name] = float(scale)
        for x in program.nodes():
            if isinstance(x, Sig):
                # The margin as lowered: in its preferred orientation, or only
                # in the other one (an unfused gradient reads g(u) as a column).
                depths = [
                    self.depth(self._memo[key])
                    for o in (self._pref(x.x), *({"R", "C"} - {self._pref(x.x)}))
                    if (key := ("s", x.x.uid, o, 1.0)) in self._memo
                ]
                if depths:
                    self.margin_depths[_batch_of(x.x)] = min(depths)
        return out


def _read_by_margins(program: Program) -> set[int]:
    """Gradient nodes (:class:`RMatVec`) inside the weights of some margin ``Z_t x``."""
    found: set[int] = set()

    def visit(x: VExpr) -> None:
        if isinstance(x, RMatVec):
            found.add(x.uid)
        for ch in () if isinstance(x, (MatVec, Gram, Sig)) else x.children:
            visit(ch)

    for x in program.nodes():
        if isinstance(x, MatVec):
            visit(x.x)
    return found


def _batch_of(u: VExpr) -> int:
    """The minibatch a margin expression belongs to."""
    if isinstance(u, MatVec):
        return u.batch
    if isinstance(u, Gram):
        return u.t
    if isinstance(u, Lin):
        return _batch_of(u.terms[0][0])
    raise TypeError(f"{u!r} is not a margin")
