"""A stand-in for `gcloud` in tests of launch/tpu_vm.py: the transport to a slice's workers, on this machine.

  gcloud compute tpus tpu-vm ssh NAME ... --worker=W --command CMD   runs CMD with bash once per worker (W: `all` or
      an index), all at once, and exits with the largest status (as gcloud runs it on every worker of a slice)
  gcloud compute tpus tpu-vm scp SRC NAME:DST ... --worker=all       copies SRC to DST in every worker's home

A worker is a home folder of its own (`$FAKE_TPU_HOMES`, separated by os.pathsep): CMD runs there with HOME set to
it and JAX_PROCESS_ID to the worker's index (the coordinator's address and the process count come with the
environment, as a TPU VM's metadata gives them). Any other gcloud command fails.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys


def main(argv: list[str]) -> int:
    homes = os.environ["FAKE_TPU_HOMES"].split(os.pathsep)
    worker = next(a for a in argv if a.startswith("--worker=")).split("=", 1)[1]
    workers = range(len(homes)) if worker == "all" else [int(worker)]
    if argv[:4] == ["compute", "tpus", "tpu-vm", "ssh"]:
        command = argv[argv.index("--command") + 1]
        procs = [subprocess.Popen(["bash", "-c", command], cwd=homes[i],
                                  env={**os.environ, "HOME": homes[i], "JAX_PROCESS_ID": str(i)}) for i in workers]
        return max(p.wait() for p in procs)
    if argv[:4] == ["compute", "tpus", "tpu-vm", "scp"]:
        source, target = argv[4], argv[5].split(":", 1)[1]
        for i in workers:
            shutil.copy(source, os.path.join(homes[i], target.removeprefix("~/")))
        return 0
    print(f"fake gcloud: not a command it stands in for: {argv}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
