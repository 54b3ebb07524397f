"""``python -m shmsave`` and the ``shmsave`` command: ``main`` runs the command in this process."""

import os


def main() -> int:
    """Run the command on ``sys.argv``; return its exit status."""
    # Before numpy and OpenCV load: their OpenBLAS libraries would each start a thread per core that
    # spins for ~0.1 s, and the command does no linear algebra (its workers are told the same, pool.py).
    # An OPENBLAS_NUM_THREADS of the user's own stays as it is.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    from .cli import main as run

    return run()


if __name__ == "__main__":
    raise SystemExit(main())
