"""``python -m trainlab.cli``: the same as the ``trainlab`` command."""

from trainlab.cli import main

main()
