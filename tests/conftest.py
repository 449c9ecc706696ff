"""8 fake CPU devices for the sharding tests; must run before anything touches a JAX backend."""
import jax

jax.config.update("jax_num_cpu_devices", 8)
