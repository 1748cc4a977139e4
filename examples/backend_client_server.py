"""Client and server with the low-level backend: keys, public bundle, ciphertext bytes.

The client encrypts two vectors and keeps the secret key; the server gets
only the public bundle and ciphertext bytes, computes ``(a * b) rotated by
one slot + a``, and sends the result back; the client decrypts it.

    python examples/backend_client_server.py [--workdir DIR]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from sklearn_he import CKKSParameters, KeySet


def client_setup(workdir: Path) -> KeySet:
    keys = KeySet.generate(CKKSParameters.for_depth(2), rotation_steps=[1])
    keys.save(workdir / "client")  # public.bundle + secret.key (mode 0600)
    (workdir / "server").mkdir(exist_ok=True)
    (workdir / "server" / "public.bundle").write_bytes(keys.public_bundle())
    return keys


def server_compute(workdir: Path) -> None:
    keys = KeySet.load(workdir / "server" / "public.bundle")  # no secret key here
    ctx = keys.context
    a = ctx.ciphertext_from_bytes((workdir / "server" / "a.ct").read_bytes())
    b = ctx.ciphertext_from_bytes((workdir / "server" / "b.ct").read_bytes())
    result = ctx.add(ctx.rotate(ctx.multiply(a, b), 1), a)
    (workdir / "server" / "result.ct").write_bytes(result.to_bytes())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.workdir or Path(tmp)
        keys = client_setup(workdir)
        a, b = np.array([1.0, 2.0, 3.0, 4.0]), np.array([0.5, -1.0, 2.0, 0.25])
        (workdir / "server" / "a.ct").write_bytes(keys.context.encrypt(a).to_bytes())
        (workdir / "server" / "b.ct").write_bytes(keys.context.encrypt(b).to_bytes())
        server_compute(workdir)
        ct = keys.context.ciphertext_from_bytes((workdir / "server" / "result.ct").read_bytes())
        got = keys.context.decrypt(ct, 4)
        want = np.roll(np.pad(a * b, (0, 1)), -1)[:4] + a
        print("decrypted:", np.round(got, 6))
        print("expected: ", want)
        print("max error:", float(np.abs(got - want).max()))
        return 0 if np.allclose(got, want, atol=1e-5) else 1


if __name__ == "__main__":
    raise SystemExit(main())
