"""Where programs run: devices and sharding (`parallel`), multi-process jobs (`distributed`), and
JAX's persistent compilation cache (`compile_cache`)."""
