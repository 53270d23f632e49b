import sys

from hasmap_jax.cli import main

sys.exit(main())
