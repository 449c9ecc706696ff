"""mvlm-jax: MobileVLM training, conversion, export and evaluation in JAX."""
from mvlm_jax.tpu_env import quiet_libtpu_without_tpu

quiet_libtpu_without_tpu()  # before anything starts a JAX backend (libtpu's warnings on machines without TPU)
