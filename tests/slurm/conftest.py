"""The real one-node Slurm cluster (``slurm/local-cluster.sh``) that the ``slurm``-marked tests submit to."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from tests.conftest import REPO

CLUSTER = REPO / "slurm" / "local-cluster.sh"


@pytest.fixture(scope="session")
def slurm_cluster():
    if shutil.which("sbatch") is None or shutil.which("slurmctld") is None:
        if os.environ.get("DISTILL_REQUIRE_SLURM") == "1":
            pytest.fail(
                "DISTILL_REQUIRE_SLURM=1 but Slurm is not installed (apt-get install slurmctld slurmd slurm-client munge)"
            )
        pytest.skip("Slurm is not installed (slurm/local-cluster.sh start installs it)")
    was_up = subprocess.run([CLUSTER, "status"], capture_output=True).returncode == 0
    proc = subprocess.run([CLUSTER, "start"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    yield
    if not was_up:  # leave a cluster someone else started running
        subprocess.run([CLUSTER, "stop"], capture_output=True, timeout=120)
