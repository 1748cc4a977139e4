"""End-to-end demo: encrypt a data set, train on the ciphertexts, decrypt, compare.

Run it with ``./dev demo`` (or ``python -m sklearn_he._demo``). It plays
both roles in one process but keeps them apart the way two machines would:

* the **client** generates a 128-bit-secure key set, encodes the training
  data (breast cancer, 30 features) into ciphertexts and keeps the secret key;
* the **server** rebuilds a context from the *public bundle bytes* alone and
  runs Nesterov-accelerated gradient descent on the ciphertexts;
* after each iteration the client decrypts and re-encrypts the model state
  (a *refresh*: SEAL has no bootstrapping), and at the end decrypts the model.

The training loop here is the direct, un-optimised one (6 levels per
iteration, one refresh per iteration). The library's compiled low-depth
circuits supersede it; the demo stays as a readable reference of the
packing and of the protocol.

Packing: the data matrix Z (rows ``y_i * (1, x_i)``) is cut into tiles of
``rows x 32`` slots, row-major. The weight vector is replicated in every
row. One iteration is, per tile::

    P = Z (.) V                       1 level   (Hadamard with the weights)
    u = within-row sum of P           5 rotations, sum lands in column 0
    u = mask column 0, replicate      1 level, 5 rotations
    s = a * g(u)  (degree-3 sigmoid)  2 levels
    Q = Z (.) s, down-the-rows sum    1 level, log2(rows) rotations
    momentum update                   1 level

and the gradient comes out replicated in every row: the layout of V again.
"""

from __future__ import annotations

import argparse
import math
import sys
import time

import numpy as np

from .backend import Ciphertext, CKKSContext, CKKSParameters, KeySet

__all__ = ["main", "train_encrypted_nag"]

#: Degree-3 least-squares fit of sigmoid(-u) on [-8, 8] (Kim et al. 2018).
SIGMOID3 = (0.5, -0.15012, 0.0, 0.001593)
ROW_WIDTH = 32


def nag_schedule(n_iter: int, lr0: float = 4.0) -> list[tuple[float, float]]:
    """(learning rate, momentum weight e_t) per iteration, as in DESIGN.md."""
    out, s = [], 0.01
    for t in range(n_iter):
        s_next = (1 + math.sqrt(1 + 4 * s * s)) / 2
        out.append((lr0 / (t + 1), (1 - s) / s_next))
        s = s_next
    return out


def encode_tiles(Z: np.ndarray, slots: int) -> list[np.ndarray]:
    """Row-major tiles of ``slots // 32`` rows x 32 columns, zero padded."""
    rows = slots // ROW_WIDTH
    n, f = Z.shape
    if f > ROW_WIDTH:
        raise ValueError(f"the demo packs at most {ROW_WIDTH - 1} features; got {f - 1}")
    tiles = []
    for start in range(0, n, rows):
        block = np.zeros((rows, ROW_WIDTH))
        chunk = Z[start : start + rows]
        block[: len(chunk), :f] = chunk
        tiles.append(block.ravel())
    return tiles


def replicate_rows(w: np.ndarray, slots: int) -> np.ndarray:
    row = np.zeros(ROW_WIDTH)
    row[: w.size] = w
    return np.tile(row, slots // ROW_WIDTH)


def rotation_steps(slots: int) -> list[int]:
    rows = slots // ROW_WIDTH
    within = [2**i for i in range(int(math.log2(ROW_WIDTH)))]
    down = [ROW_WIDTH * 2**i for i in range(int(math.log2(rows)))]
    return within + [-s for s in within] + down


def _row_sum(ctx: CKKSContext, ct: Ciphertext) -> Ciphertext:
    """Sum within each row; the result sits in column 0 (other columns: garbage)."""
    k = 1
    while k < ROW_WIDTH:
        ct = ctx.add(ct, ctx.rotate(ct, k))
        k *= 2
    return ct


def _replicate_col0(ctx: CKKSContext, ct: Ciphertext) -> Ciphertext:
    """Copy column 0 across each row (other columns must be zero)."""
    k = 1
    while k < ROW_WIDTH:
        ct = ctx.add(ct, ctx.rotate(ct, -k))
        k *= 2
    return ct


def _column_sum(ctx: CKKSContext, ct: Ciphertext) -> Ciphertext:
    """Sum down the rows; the result is replicated in every row."""
    k = ROW_WIDTH
    while k < ctx.slots:
        ct = ctx.add(ct, ctx.rotate(ct, k))
        k *= 2
    return ct


def server_iteration(
    ctx: CKKSContext,
    tiles: list[Ciphertext],
    v: Ciphertext,
    w: Ciphertext,
    a: float,
    e: float,
) -> tuple[Ciphertext, Ciphertext]:
    """One NAG step on ciphertexts: returns (w_next, v_next). Needs 6 levels."""
    mask = np.tile(np.eye(1, ROW_WIDTH).ravel(), ctx.slots // ROW_WIDTH)
    c0, c1, _, c3 = SIGMOID3
    q = None
    for z in tiles:
        u = _row_sum(ctx, ctx.multiply(z, v))
        u = _replicate_col0(ctx, ctx.multiply_plain(u, mask))
        u2 = ctx.square(u)
        s = ctx.add(
            ctx.multiply(ctx.multiply_scalar(u, a * c3), u2),  # a c3 u^3
            ctx.multiply_scalar(u, a * c1),  # a c1 u
        )
        s = ctx.add_plain(s, a * c0)
        part = _column_sum(ctx, ctx.multiply(z, s))
        q = part if q is None else ctx.add(q, part)
    assert q is not None
    w_next = ctx.add(v, q)
    v_next = ctx.add(ctx.multiply_scalar(w_next, 1 - e), ctx.multiply_scalar(w, e))
    return w_next, v_next


def plaintext_nag(Z: np.ndarray, n_iter: int) -> np.ndarray:
    """The same recurrence in NumPy (what the ciphertexts should decrypt to)."""
    c0, c1, _, c3 = SIGMOID3
    w = v = np.zeros(Z.shape[1])
    for lr, e in nag_schedule(n_iter):
        u = Z @ v
        w_next = v + lr / len(Z) * (Z.T @ (c0 + c1 * u + c3 * u**3))
        v, w = (1 - e) * w_next + e * w, w_next
    return w


def train_encrypted_nag(
    Z: np.ndarray, n_iter: int, keys: KeySet, *, log=print
) -> tuple[np.ndarray, dict[str, float]]:
    """Train on encrypted ``Z`` (rows ``y_i * (1, x_i)``); return weights and stats."""
    slots = keys.params.slots
    client = keys.context
    # --- client: encrypt the data, ship ciphertexts + public bundle --------
    t0 = time.perf_counter()
    wire = [client.encrypt(t).to_bytes() for t in encode_tiles(Z, slots)]
    bundle = keys.public_bundle()
    stats = {
        "encrypt_s": time.perf_counter() - t0,
        "bytes_uploaded": float(sum(map(len, wire)) + len(bundle)),
    }
    # --- server: only the public bundle and ciphertext bytes ---------------
    server = KeySet.from_public_bundle(
        bundle, allow_insecure_for_testing=keys.allow_insecure_for_testing
    )
    sctx = server.context
    tiles = [sctx.ciphertext_from_bytes(b) for b in wire]
    f = Z.shape[1]
    w_plain = np.zeros(f)
    v_plain = np.zeros(f)
    t0 = time.perf_counter()
    for t, (lr, e) in enumerate(nag_schedule(n_iter)):
        # client refresh: (re-)encrypt the model state
        v_ct = sctx.ciphertext_from_bytes(
            client.encrypt(replicate_rows(v_plain, slots)).to_bytes()
        )
        w_ct = sctx.ciphertext_from_bytes(
            client.encrypt(replicate_rows(w_plain, slots)).to_bytes()
        )
        w_next, v_next = server_iteration(sctx, tiles, v_ct, w_ct, lr / len(Z), e)
        # client: decrypt the state (row 0 holds the vector)
        w_plain = client.decrypt(client.ciphertext_from_bytes(w_next.to_bytes()), f)
        v_plain = client.decrypt(client.ciphertext_from_bytes(v_next.to_bytes()), f)
        log(
            f"  iteration {t + 1:2d}/{n_iter}: levels left {v_next.level}, "
            f"|w| = {np.linalg.norm(w_plain):.3f}"
        )
    stats["train_s"] = time.perf_counter() - t0
    stats["refreshes"] = float(n_iter)
    return w_plain, stats


def main(argv: list[str] | None = None) -> int:
    from sklearn.datasets import load_breast_cancer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=20, help="NAG iterations (20)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.iterations < 1:
        parser.error("--iterations must be >= 1")

    X, y = load_breast_cancer(return_X_y=True)
    X_tr, X_te, y_tr, y_te = train_test_split(
        X, y, test_size=0.2, stratify=y, random_state=args.seed
    )
    scaler = StandardScaler().fit(X_tr)
    # Scale features into the sigmoid approximation's range: standardised
    # values, clipped to 4 standard deviations and divided by 4.
    X_tr_s = np.clip(scaler.transform(X_tr), -4, 4) / 4
    X_te_s = np.clip(scaler.transform(X_te), -4, 4) / 4
    Z = (2 * y_tr - 1)[:, None] * np.hstack([np.ones((len(X_tr_s), 1)), X_tr_s])

    params = CKKSParameters.for_depth(6)
    print(f"breast cancer: {len(X_tr)} training rows, {X.shape[1]} features")
    print(f"client: generating keys ({params.describe()})", flush=True)
    t0 = time.perf_counter()
    keys = KeySet.generate(params, rotation_steps=rotation_steps(params.slots))
    print(f"        done in {time.perf_counter() - t0:.1f} s, fingerprint {keys.fingerprint[:16]}")
    print(f"server: training {args.iterations} NAG iterations on ciphertexts", flush=True)
    w, stats = train_encrypted_nag(Z, args.iterations, keys, log=lambda m: print(m, flush=True))
    acc_he = accuracy_score(y_te, (w[0] + X_te_s @ w[1:]) > 0)
    w_ref = plaintext_nag(Z, args.iterations)
    acc_same = accuracy_score(y_te, (w_ref[0] + X_te_s @ w_ref[1:]) > 0)
    ref = LogisticRegression(max_iter=1000).fit(X_tr_s, y_tr)
    acc_ref = accuracy_score(y_te, ref.predict(X_te_s))
    print()
    print(
        f"uploaded {stats['bytes_uploaded'] / 2**20:.1f} MiB (data + public keys); "
        f"encryption {stats['encrypt_s']:.1f} s, training {stats['train_s']:.1f} s, "
        f"{int(stats['refreshes'])} refresh round trips"
    )
    print(f"test accuracy, trained on ciphertexts         : {acc_he:.4f}")
    print(
        f"test accuracy, same recurrence in plaintext   : {acc_same:.4f}"
        f"  (max weight difference {np.abs(w - w_ref).max():.1e})"
    )
    print(f"test accuracy, scikit-learn LogisticRegression: {acc_ref:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
