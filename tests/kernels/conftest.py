"""Set-up of the kernel tests: run the Triton kernels under Triton's CPU interpreter.

Triton 3.9 decides interpreter mode when ``@triton.jit`` decorates a function, i.e. when
mpq's Triton kernel modules are first imported, so ``TRITON_INTERPRET`` is set here, before any
test module imports them. Run with ``TRITON_INTERPRET=0`` on a CUDA machine to test the compiled
kernels on the GPU instead.
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")
