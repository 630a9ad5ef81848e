"""OpenVINO compiles leave the thread's alternate signal stack as it was (cfgsurgeon.signal_stack).

Each scenario runs in a process of its own: the failure it guards against kills the process."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("openvino")

SCENARIO = textwrap.dedent(
    """
    import faulthandler, gc, signal, subprocess, sys
    import numpy as np
    import openvino as ov
    from openvino import opset13 as ops
    from cfgsurgeon.emit.openvino import compile_model
    from cfgsurgeon.signal_stack import current_signal_stack

    def model():
        x = ops.parameter([1, 3, 8, 8], np.float32)
        w = ops.constant(np.ones((4, 3, 3, 3), np.float32))
        return ov.Model([ops.convolution(x, w, [1, 1], [1, 1], [1, 1], [1, 1])], [x])

    def unguarded(m):
        return ov.Core().compile_model(m, "CPU")

    compile = {"ours": compile_model, "unguarded": unguarded}[sys.argv[1]]
    faulthandler.enable()  # gives the thread an alternate signal stack, as pytest does
    before = current_signal_stack()
    first, second = compile(model()), compile(model())
    first(np.ones((1, 3, 8, 8), np.float32))
    del first; gc.collect()  # released out of order: the first compiled, first
    del second; gc.collect()
    print(current_signal_stack() == before)
    signal.signal(signal.SIGCHLD, lambda *args: None)  # a handler on the alternate stack, as torch's
    subprocess.run(["true"], check=True)  # its child's exit signals this process
    print("alive")
    """
)


def scenario(compile: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", SCENARIO, compile], capture_output=True, text=True, timeout=300
    )


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the plugin's behaviour is Linux's")
def test_compiled_models_released_out_of_order_leave_the_signal_stack_usable():
    ours = scenario("ours")
    assert ours.returncode == 0, ours.stderr[-2000:]
    assert ours.stdout.split() == ["True", "alive"]
    # the control: OpenVINO's own compile leaves another stack behind, a freed one, so the process lives on
    # only while that memory happens to stay mapped (when an OpenVINO release stops this, the guard can go)
    unguarded = scenario("unguarded")
    assert unguarded.stdout.split()[:1] == ["False"] and unguarded.returncode in (0, -11), unguarded
