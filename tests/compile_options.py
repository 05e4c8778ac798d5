"""Compile options for a test's own top-level `jax.jit`: compile time is most of a reference
test's time (tests/test_mamba.py, tests/test_mlstm.py).

The suite already compiles at LLVM optimization level 0 (`processes.TEST_XLA_FLAGS`); on top
of it, XLA:CPU's older loop emitters in place of its fusion emitters compile about 2.5x
faster: `test_mlstm.py`'s chunkwise-against-step-loop function (four value-and-gradients of
`jaxrnn.scan`), 5.3 s -> 1.9 s of CPU. The same HLO runs; the values agree to float32
rounding. XLA refuses compile options on a jit nested in a transformation (a jit under
`check_grads`' vjp), so this is for top-level jits only.
"""

import jax

FAST = {"xla_cpu_use_fusion_emitters": False}


def jit(fn, **kwargs):
  """``jax.jit(fn, **kwargs)`` compiled with `FAST`."""
  return jax.jit(fn, compiler_options=FAST, **kwargs)
