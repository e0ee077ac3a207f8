"""Run a Python command on another CPU class's torch kernels: `python benchmarks/on_isa.py avx2 -m pytest -q`.

On an AVX-512 machine this runs what an AVX2-only CPU runs (ATen's, inductor's, oneDNN's and MKL's AVX2 code, with
inductor's cache of its own: common.isa_environment), so the other machine class's rounding is checked here.
`make test-avx2` is the test suite this way.
"""

from __future__ import annotations

import os
import sys

from common import ISA_ENVIRONMENT, isa_environment


def main(argv: list[str]) -> None:
    if not argv or argv[0] not in ISA_ENVIRONMENT:
        raise SystemExit(f"usage: python benchmarks/on_isa.py {{{','.join(ISA_ENVIRONMENT)}}} PYTHON_ARGS...")
    isa, rest = argv[0], argv[1:]
    os.execve(sys.executable, [sys.executable, *rest], {**os.environ, **isa_environment(isa)})


if __name__ == "__main__":
    main(sys.argv[1:])
