"""make_jax: MAKE (multi-aspect knowledge-enhanced vision-language pretraining) in JAX/Flax."""

__version__ = "0.1.0"


def __getattr__(name: str):
    # Lazy: `import make_jax` stays light (no jax/flax import) until `make_jax.load` is used.
    if name == "load":
        from make_jax.inference import load

        return load
    raise AttributeError(f"module 'make_jax' has no attribute {name!r}")


__all__ = ["load"]
