"""The planner: candidates, cost-model choice, and what must not depend on the worker count."""

from __future__ import annotations

import numpy as np
import pytest

from sklearn_he.backend import MAX_COEFF_MODULUS_BITS_128, CKKSParameters
from sklearn_he.training import plan_training, sigmoid_poly
from sklearn_he.training._planner import (
    AUTO_BATCH_SIZES,
    _chunk,
    candidate_shapes,
    estimate_seconds_per_sample,
)
from tests._costs import skewed_costs


@pytest.mark.parametrize(("f", "m"), [(197, 128), (31, 64), (3, 8), (600, 32)])
def test_candidate_shapes_fill_the_slots_and_fit_the_batch(f, m):
    slots = 8192
    shapes = candidate_shapes(f, m, slots)
    assert shapes
    for s in shapes:
        assert s.rows * s.cols == slots
        assert s.rows <= max(m, 1) * 2  # never taller than the rounded-up batch
    assert len({(s.rows, s.cols) for s in shapes}) == len(shapes)


@pytest.mark.parametrize("circuit", ["baseline", "pipelined"])
def test_plan_is_the_cheapest_candidate_it_tried(circuit):
    """No (shape, fusion) candidate at k = 1 beats the plan by the same cost model."""
    n, f = 1587, 197
    coeffs = tuple(sigmoid_poly(5))
    plan = plan_training(n, f, circuit=circuit, coeffs=coeffs, epochs=5)
    assert plan.batch_size in AUTO_BATCH_SIZES and plan.batch_size <= n // 4
    fusions = [True, False] if circuit == "pipelined" else [None]
    for m in AUTO_BATCH_SIZES:
        for shape in candidate_shapes(f, m, plan.params.slots):
            for fuse in fusions:
                chunk = _chunk(
                    1,
                    circuit=circuit,
                    shape=shape,
                    m=m,
                    f=f,
                    gram_depth=0,
                    coeffs=coeffs,
                    fuse=fuse,
                )
                if chunk.depth > (MAX_COEFF_MODULUS_BITS_128[16384] - 120) // 40:
                    continue
                params = CKKSParameters.for_depth(chunk.depth, min_poly_modulus_degree=16384)
                cost = estimate_seconds_per_sample(chunk, params)
                assert plan.estimated_seconds_per_sample <= cost + 1e-12


def test_worker_count_never_changes_the_minibatch_size():
    """The batch size changes the model; n_jobs may only change shapes and fusion."""
    coeffs = sigmoid_poly(5)
    for n, f in [(1587, 197), (455, 31), (300, 10)]:
        one = plan_training(n, f, circuit="pipelined", coeffs=coeffs, epochs=5)
        two = plan_training(n, f, circuit="pipelined", coeffs=coeffs, epochs=5, n_jobs=2)
        assert one.batch_size == two.batch_size
        assert two.estimated_seconds_per_sample <= one.estimated_seconds_per_sample + 1e-12


def test_fixed_batch_size_and_k_are_kept():
    plan = plan_training(
        1000,
        50,
        circuit="pipelined",
        coeffs=sigmoid_poly(3),
        batch_size=40,
        minibatches_per_circuit=1,
    )
    assert plan.batch_size == 40 and plan.k == 1 and plan.n_batches == 25


def test_fixed_k_beyond_the_minibatches_is_planned_as_run():
    """60 rows in one minibatch of 64: k=2 runs one step, and is planned (ring, depth) so."""
    kw = {"circuit": "pipelined", "coeffs": sigmoid_poly(3), "batch_size": 64}
    two = plan_training(60, 30, minibatches_per_circuit=2, **kw)
    one = plan_training(60, 30, minibatches_per_circuit=1, **kw)
    assert two.k == 1 and two.n_batches == 1
    assert two.params == one.params and two.estimated_seconds_per_sample == pytest.approx(
        one.estimated_seconds_per_sample
    )
    # Transposed tiles need one step per pipelined chunk: one there is.
    assert plan_training(60, 30, minibatches_per_circuit=2, transposed=True, **kw).transposed


@pytest.mark.parametrize(
    ("kw", "needs", "fixes", "not_fixes"),
    [
        # One minibatch per circuit on transposed tiles: the client adds the last
        # gradient's row sums, so no column-0 mask (one level less than before).
        ({}, 4, ["sigmoid_degree=3", "for_depth(4)"], ["fewer minibatches", "pipelined"]),
        ({"circuit": "baseline"}, 5, ["circuit='pipelined'", "for_depth(5)"], ["fewer"]),
        ({"minibatches_per_circuit": 3}, 12, ["fewer minibatches", "for_depth(12)"], []),
        ({"coeffs": sigmoid_poly(3)}, 3, ["for_depth(3)"], ["sigmoid_degree", "pipelined"]),
    ],
)
def test_no_fit_names_the_shallowest_candidate_and_only_fixes_that_apply(
    kw, needs, fixes, not_fixes
):
    kw = {"circuit": "pipelined", "coeffs": sigmoid_poly(5), **kw}
    with pytest.raises(ValueError, match=rf"needs {needs} levels; N=8192 provides 2") as exc:
        plan_training(455, 30, params=CKKSParameters.for_depth(2), **kw)
    for fix in fixes:
        assert fix in str(exc.value)
    for fix in not_fixes:
        assert fix not in str(exc.value)


def test_transposed_accepts_numpy_booleans():
    kw = {"circuit": "pipelined", "coeffs": sigmoid_poly(3), "minibatches_per_circuit": 2}
    with pytest.raises(ValueError, match="without Gram blocks"):
        plan_training(1000, 30, transposed=np.True_, **kw)
    assert not plan_training(1000, 30, transposed=np.False_, **kw).transposed


def test_plan_estimate_needs_parameters():
    from dataclasses import replace

    from sklearn_he.training import estimate_plan_seconds_per_sample

    coeffs = sigmoid_poly(3)
    plan = plan_training(200, 10, circuit="pipelined", coeffs=coeffs)
    assert estimate_plan_seconds_per_sample(plan, coeffs) == pytest.approx(
        plan.estimated_seconds_per_sample
    )
    with pytest.raises(ValueError, match="no CKKS parameters to estimate with"):
        estimate_plan_seconds_per_sample(replace(plan, params=None), coeffs)


@pytest.mark.parametrize("factor", [1.0, 0.6, 0.5])
def test_refresh_is_priced_as_pooled_encryption_only_when_workers_evaluate(factor, monkeypatch):
    """With workers busy on the chunk the client makes the refresh's zeros meanwhile."""
    import sklearn_he.training._planner as planner
    from sklearn_he.circuit import CostModel, Op, analyze

    coeffs = tuple(sigmoid_poly(5))
    chunk = _chunk(
        1,
        circuit="pipelined",
        shape=_shape(),
        m=128,
        f=197,
        gram_depth=0,
        coeffs=coeffs,
        fuse=False,
    )
    params = CKKSParameters.for_depth(chunk.depth, min_poly_modulus_degree=16384)
    costs = CostModel.nominal()
    monkeypatch.setattr(planner, "parallel_factor", lambda *a: factor)
    got = planner.estimate_seconds_per_minibatch(chunk, params, costs, n_jobs=2)
    n, top = params.poly_modulus_degree, params.max_level
    refresh = got - factor * analyze(chunk.compiled, params, costs).work_seconds
    blocks = 2 * -(-197 // chunk.shape.cols)
    decrypt = blocks * costs.decrypt_cost(n, top - chunk.depth)
    if factor == 1.0:  # in-process: the client encrypts after the chunk
        assert refresh == pytest.approx(decrypt + blocks * costs.encrypt_cost(n))
    else:
        # The zeros take the core time the schedule leaves idle first, then a
        # share of the cores; the refresh itself adds them to the encoded state.
        work = analyze(chunk.compiled, params, costs).work_seconds
        idle = max(0.0, 2 * factor * work - work)
        zeros = blocks * costs.encrypt_cost(n)
        added = blocks * costs.op_seconds(Op.ADD_PLAIN, n, top)
        assert refresh == pytest.approx(decrypt + max(0.0, zeros - idle) / 2 + added)
        assert refresh < decrypt + zeros
        if factor == 0.5:  # a perfect split leaves no idle time
            assert refresh == pytest.approx(decrypt + zeros / 2 + added)


def _shape():
    from sklearn_he.linalg import TileShape

    return TileShape(64, 128)


def test_machine_costs_choose_how_workers_split_the_circuit_not_the_model():
    """With n_jobs > 1 this machine's costs re-choose shape, fusion and k; ring, chain and
    batch size are the one-worker plan's (the worker count never changes the model)."""
    coeffs = sigmoid_poly(5)
    machine = skewed_costs("add_plain", 3.0)  # a machine whose plaintext additions are dear
    asked = []

    def machine_costs(params):
        asked.append(params)
        return machine

    # Row-oriented tiles, whose 2-worker split these costs re-rank.
    kw = {"circuit": "pipelined", "coeffs": coeffs, "epochs": 5, "transposed": False}
    nominal = plan_training(1587, 197, n_jobs=2, **kw)
    one = plan_training(1587, 197, **kw)
    plan = plan_training(1587, 197, n_jobs=2, machine_costs=machine_costs, **kw)
    assert asked == [one.params]
    assert (plan.params, plan.batch_size) == (one.params, one.batch_size)
    # Fixed parameters and batch size are used as they are.
    fixed = plan_training(
        1587,
        197,
        n_jobs=2,
        machine_costs=machine_costs,
        params=nominal.params,
        batch_size=32,
        **kw,
    )
    assert asked[-1] == nominal.params and fixed.batch_size == 32
    # The cheapest split under the machine's costs, which here is not the nominal one.
    direct = plan_training(
        1587,
        197,
        n_jobs=2,
        params=nominal.params,
        batch_size=nominal.batch_size,
        costs=machine,
        **kw,
    )
    assert plan == direct
    assert plan.shape != nominal.shape


def test_machine_costs_are_not_asked_for_one_worker():
    def machine_costs(params):
        raise AssertionError("one worker keeps the nominal plan")

    coeffs = sigmoid_poly(5)
    kw = {"circuit": "pipelined", "coeffs": coeffs, "epochs": 5}
    one = plan_training(1587, 197, **kw)
    assert plan_training(1587, 197, machine_costs=machine_costs, **kw) == one


def test_plans_under_measured_costs_are_cached_by_their_values():
    """The same costs give the same (cached) plan; other costs are not served from the cache."""
    from sklearn_he.circuit import CostModel

    coeffs = sigmoid_poly(5)
    kw = {"circuit": "pipelined", "coeffs": coeffs, "epochs": 5, "n_jobs": 2, "transposed": False}
    nominal = plan_training(1587, 197, **kw)
    fixed = {"params": nominal.params, "batch_size": nominal.batch_size}
    same = CostModel(CostModel.nominal().fits)  # a new object with the nominal values
    first = plan_training(1587, 197, costs=same, **fixed, **kw)
    assert plan_training(1587, 197, costs=CostModel(same.fits), **fixed, **kw) is first
    dear = plan_training(1587, 197, costs=skewed_costs("add_plain", 3.0), **fixed, **kw)
    assert dear.shape != first.shape


def test_transposed_must_be_a_bool_or_auto():
    with pytest.raises(ValueError, match="transposed must be True, False or 'auto'; got 'yes'"):
        plan_training(100, 5, circuit="baseline", coeffs=sigmoid_poly(3), transposed="yes")


def test_transposed_true_is_refused_where_every_chunk_has_gram_blocks():
    with pytest.raises(ValueError, match=r"without Gram blocks.*Use transposed='auto'"):
        plan_training(
            100,
            5,
            circuit="pipelined",
            coeffs=sigmoid_poly(3),
            minibatches_per_circuit=2,
            transposed=True,
        )


def test_workers_keep_the_one_worker_plan_unless_a_split_is_clearly_faster(monkeypatch):
    """A shape chosen to split must beat the one-worker plan by MIN_SPLIT_GAIN with workers.

    Nominal costs for MNIST on row tiles (``Z``, as the protocol once forced): 64x128
    tiles split in two and are estimated a little faster on 2 workers than the
    one-worker plan's 128x64, not 10% faster; in process (where a fit falls back
    when workers disappoint) they are slower. (On transposed tiles, whose one-step
    chunk leaves its row sums to the client, 64x128 is the best for both.)
    """
    from sklearn_he.training import _planner

    kw = {"circuit": "pipelined", "coeffs": sigmoid_poly(5), "epochs": 5, "transposed": False}
    one = plan_training(1587, 197, **kw)
    two = plan_training(1587, 197, n_jobs=2, **kw)
    assert (two.shape, two.transposed, two.k) == (one.shape, one.transposed, one.k)
    monkeypatch.setattr(_planner, "MIN_SPLIT_GAIN", 1.0)
    split = plan_training(1587, 197, n_jobs=2, **kw)
    assert split.shape != one.shape
    assert split.estimated_seconds_per_sample < two.estimated_seconds_per_sample
    assert split.estimated_seconds_per_sample * 1.1 > two.estimated_seconds_per_sample
    from sklearn_he.training import estimate_plan_seconds_per_sample

    in_process = [
        estimate_plan_seconds_per_sample(p, kw["coeffs"], epochs=5) for p in (one, split)
    ]
    assert in_process[1] > 1.05 * in_process[0]  # in process the split shape is slower


def test_planner_pairs_row_blocks_where_it_pays():
    """MNIST's transposed one-minibatch plan holds its four row blocks in two pairs; with one
    row block (breast cancer) the conjugation would buy nothing and the plan stays real."""
    mnist = plan_training(1587, 197, circuit="pipelined", coeffs=sigmoid_poly(5), epochs=5)
    assert mnist.transposed and mnist.k == 1 and mnist.paired
    assert mnist.state_blocks == 2 and mnist.compile_chunk([(0.1, 0.1)], sigmoid_poly(5)).paired
    assert 0 in mnist.compile_chunk([(0.1, 0.1)], sigmoid_poly(5)).compiled.rotation_steps
    cancer = plan_training(455, 31, circuit="pipelined", coeffs=sigmoid_poly(5), epochs=5)
    assert cancer.transposed and not cancer.paired and cancer.state_blocks == 1
    # Rows of Z: no pairs (margins would need the sums within rows of both halves).
    rows = plan_training(
        1587, 197, circuit="pipelined", coeffs=sigmoid_poly(5), epochs=5, transposed=False
    )
    assert not rows.paired
