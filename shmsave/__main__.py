"""``python -m shmsave``: the same as the ``shmsave`` command."""

from .cli import main

raise SystemExit(main())
