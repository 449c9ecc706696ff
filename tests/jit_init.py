"""mvlm_jax.models.init_params compiled as one program (the config static): run eagerly, every
initialiser op of a model compiles on its own, which took 17-32 s for the tiny VLM in each test process
(5 s jitted, and the persistent compilation cache then shares it between the test processes). The same
model code and random keys; the values equal the eager ones to float32 rounding."""
import jax

from mvlm_jax import models

init_params = jax.jit(models.init_params, static_argnums=0)
