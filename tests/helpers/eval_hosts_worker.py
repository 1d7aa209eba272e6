"""One host of a multi-process evaluation (tests/eval/test_engine_hosts.py), under JAX_COORDINATOR_ADDRESS /
JAX_NUM_PROCESSES / JAX_PROCESS_ID: `instructjax generate` and then `instructjax score` in this one process (one
start-up for both), with the arguments given as two JSON lists."""

import json
import sys

from instructjax import cli

if __name__ == "__main__":
    sys.exit(cli.main(json.loads(sys.argv[1])) or cli.main(json.loads(sys.argv[2])))
