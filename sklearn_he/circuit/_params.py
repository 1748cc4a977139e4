"""CKKS parameter selection for a compiled circuit."""

from __future__ import annotations

from ..backend import MAX_COEFF_MODULUS_BITS_128, CKKSParameters
from ..exceptions import ParameterError
from ._compiler import CompiledCircuit

__all__ = ["select_parameters"]

#: Measured here: at scale 2**s, values that went through products and
#: rotation sums keep about s - 20 bits of absolute precision (2**40 gives
#: errors around 1e-6). The scale is chosen from the precision asked for.
_NOISE_BITS = 20
_MIN_SCALE_BITS = 30  # below ~2**26 rotation sums drift (DESIGN.md section 5)
_MAX_SCALE_BITS = 50


def select_parameters(
    circuit: CompiledCircuit | int,
    *,
    precision_bits: int = 20,
    integer_bits: int = 20,
    slots: int | None = None,
) -> CKKSParameters:
    """Smallest 128-bit-secure parameters that run ``circuit`` at the asked precision.

    Parameters
    ----------
    circuit : CompiledCircuit or int
        The circuit (its depth and slot count are used) or a depth.
    precision_bits : int, default=20
        Bits of absolute precision wanted in the outputs (20 is about 1e-6).
        Sets the scale: ``scale_bits = precision_bits + 20`` (30 to 50).
    integer_bits : int, default=20
        Bits for the integer part of every intermediate value; the first
        prime gets ``scale_bits + integer_bits`` bits (at most 60).
    slots : int, optional
        Minimum slot count (default: the circuit's).

    Returns
    -------
    CKKSParameters

    Raises
    ------
    ParameterError
        No ring up to N=32768 fits: the message says by how much.
    """
    if isinstance(circuit, CompiledCircuit):
        depth, need_slots = circuit.depth, circuit.slots
    else:
        depth, need_slots = int(circuit), 1
    if slots is not None:
        need_slots = max(need_slots, int(slots))
    scale_bits = min(max(precision_bits + _NOISE_BITS, _MIN_SCALE_BITS), _MAX_SCALE_BITS)
    first = min(60, scale_bits + integer_bits)
    if first <= scale_bits:
        raise ParameterError(f"integer_bits must be positive; got {integer_bits}")
    special = max(first, scale_bits)
    min_n = max(1024, 2 * need_slots)
    if min_n > max(MAX_COEFF_MODULUS_BITS_128):
        raise ParameterError(
            f"the circuit needs {need_slots} slots but the largest ring (N=32768) has 16384"
        )
    try:
        return CKKSParameters.for_depth(
            depth,
            scale_bits=scale_bits,
            first_prime_bits=first,
            special_prime_bits=special,
            min_poly_modulus_degree=min_n,
        )
    except ParameterError as exc:
        slots_note = f", {need_slots} slots" if need_slots > 1 else ""
        raise ParameterError(
            f"{exc} (asked: depth {depth}{slots_note}, {precision_bits} bits of "
            f"precision -> {scale_bits}-bit scale)"
        ) from None
