"""Set before anything touches a JAX backend: 8 fake CPU devices for the sharding tests, and one persistent
compilation cache for the whole test session (both xdist workers and the trainer subprocesses, which
inherit the environment): many tests compile the same tiny programs, and the demo test trains the same
stages three times."""
import os
from pathlib import Path

# The file lock that a size limit brings keeps two workers from reading an entry while it is written.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(Path(__file__).resolve().parent.parent / ".pytest_cache" / "jax"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(4 << 30))
# The example cache (data_pipelines/example_cache.py) of the test session stays beside it, not in ~/.cache.
os.environ.setdefault("MVLM_CACHE", str(Path(__file__).resolve().parent.parent / ".pytest_cache" / "mvlm"))

# llama.cpp with one thread: ggml's spinning threads crawl when the other xdist worker holds the other core
# (a 16-token answer of the demo's VLM took 7.5 s with two threads, 0.03 s with one).
os.environ.setdefault("MVLM_LLAMACPP_THREADS", "1")

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)

# The tests compile hundreds of tiny programs whose run time is negligible, so this process compiles them
# with XLA's backend at -O0 (a classifier-to-VLM stage test: 55 s instead of 76 s from an empty cache).
# XLA reads the flag once, at the first compilation below; subprocesses (the demo's stages, the multi-process
# and resume tests' trainers) get the environment back and run their demo-size steps at the default level.
_xla_flags = os.environ.get("XLA_FLAGS")
os.environ["XLA_FLAGS"] = f"{_xla_flags or ''} --xla_backend_optimization_level=0".strip()
jax.jit(lambda x: x + 1)(0).block_until_ready()
if _xla_flags is None:
    del os.environ["XLA_FLAGS"]
else:
    os.environ["XLA_FLAGS"] = _xla_flags
