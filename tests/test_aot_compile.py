"""Every kernel configuration the GPU path can launch compiles for sm_90 (H100), without a GPU, with the JIT's
production specialisation, and passes the static rules of kernels/aot.py (no unlisted spills, shared memory within
the limit, 16-bit dots on tensor cores, no warps repeating MMA work).

Runs in subprocesses: compilation needs the kernels decorated without TRITON_INTERPRET, which this test session
sets. Two shards use both cores of a CI machine.
"""
import os
import re
import subprocess
import sys

from quietstar_fast.kernels.aot import launchable_configs


def test_every_launchable_kernel_config_compiles_for_sm90():
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    shards = 2
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "quietstar_fast.kernels.aot", "--arch", "90", "--shard", f"{i}/{shards}"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
        )
        for i in range(shards)
    ]
    outputs = [proc.communicate(timeout=1800)[0] for proc in procs]
    report = "\n".join(outputs)
    compiled = sum(int(m) for m in re.findall(r"compiled (\d+) kernel variants", report))
    assert all(proc.returncode == 0 for proc in procs), report
    assert compiled == len(list(launchable_configs())), report
    print(report)
