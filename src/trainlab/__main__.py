"""``python -m trainlab``: the ``trainlab`` command (what torchrun starts on every rank: ``torchrun
--nproc_per_node N -m trainlab pretrain ...``, or ``trainlab pretrain --nproc N``)."""

import sys

from trainlab.cli import run_cli
from trainlab.distributed.launch import worker_main

sys.exit(worker_main(run_cli))
