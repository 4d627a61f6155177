"""Where the bench's neuwerk instances keep their dataplane: pin dirs in the
host's bpffs, launched through nsenter (so that the pins outlive a process
and restarts can be measured), detached when an instance stops and cleaned
up whatever fails (Topology.down, atexit, stale dirs of dead runs).
Used by common.Neuwerk; common's helpers are imported where they are used,
since common imports this module."""

from __future__ import annotations

import atexit
import ctypes
import itertools
import os
import shutil
import subprocess
import threading
from pathlib import Path

# Where the bench's neuwerk instances pin their dataplane: a directory per
# instance, named after this process, so that concurrent runs never share one
# and a dead run's leftovers can be told apart (sweep_stale_pins).
BPFFS = Path("/sys/fs/bpf")
PIN_PREFIX = "nwbench-"
_pin_seq = itertools.count()
# pin dir -> (namespace, config path, binary): what release_pins() detaches.
_PINNED: dict = {}
_pins_lock = threading.Lock()


def nsenter_cmd(ns, argv) -> list:
    """argv run in the network namespace `ns` only (`nsenter --net`), keeping the
    host's mount namespace, so that what the process pins in the host's bpffs
    outlives it (`ip netns exec` gives it a private /sys). nsenter execs argv:
    the Popen pid is the command's."""
    return ["nsenter", f"--net=/run/netns/{ns}", *[str(a) for a in argv]]


def ensure_bpffs() -> None:
    """bpffs mounted at /sys/fs/bpf on the host (where the pins live)."""
    from common import ensure_packages, log
    ensure_packages(["nsenter:util-linux", "stat:coreutils"])
    t = subprocess.run(["stat", "-f", "-c", "%T", str(BPFFS)], capture_output=True, text=True)
    if t.stdout.strip() != "bpf_fs":
        log(f"mounting bpffs at {BPFFS}")
        BPFFS.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "-t", "bpf", "bpf", str(BPFFS)], check=True)


def sweep_stale_pins() -> list:
    """Removes the pin dirs of bench runs whose process is gone (a run killed
    with SIGKILL cannot clean up); returns what it removed."""
    from common import log
    removed = []
    for d in BPFFS.glob(PIN_PREFIX + "*"):
        pid = d.name[len(PIN_PREFIX):].split("-", 1)[0]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            shutil.rmtree(d, ignore_errors=True)
            removed.append(str(d))
    if removed:
        log("removed stale pins of dead bench runs:", *removed)
    return removed


def _register_pins(pin_dir, ns, config_path, binary) -> None:
    with _pins_lock:
        _PINNED[str(pin_dir)] = (ns, Path(config_path), Path(binary))


def detach_pins(pin_dir, ns, config_path, binary) -> dict:
    """`neuwerk detach --config` through nsenter (programs off the interfaces,
    pins removed) while the namespace and config exist, then removes whatever
    is left of the pin dir (a link whose interface went with its namespace
    needs nothing else). -> {"output", "returncode", "left_removed"}."""
    from common import log
    res = {"output": None, "returncode": None, "left_removed": False}
    # The config must still name this pin dir (a later instance may have rewritten it).
    try:
        ours = f"pin_dir: {pin_dir} " in Path(config_path).read_text()
    except OSError:
        ours = False
    if ours and Path(f"/run/netns/{ns}").exists() and Path(binary).exists():
        cp = subprocess.run(nsenter_cmd(ns, [binary, "detach", "--config", config_path]),
                            capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=120)
        res["output"] = (cp.stdout + cp.stderr).strip()
        res["returncode"] = cp.returncode
        if cp.returncode != 0:
            log(f"neuwerk detach {pin_dir} failed ({cp.returncode}): {res['output']}")
    if os.path.lexists(pin_dir):
        shutil.rmtree(pin_dir, ignore_errors=True)
        res["left_removed"] = True
    with _pins_lock:
        _PINNED.pop(str(pin_dir), None)
    return res


def release_pins(namespaces=None) -> None:
    """Detaches and removes every pin dir registered by this process (those of
    neuwerk instances in `namespaces`, or all): the bench's cleanup on the way
    out (Topology.down, atexit), whatever failed before."""
    from common import log
    with _pins_lock:
        todo = [(d, v) for d, v in _PINNED.items() if namespaces is None or v[0] in namespaces]
    for pin_dir, (ns, config, binary) in todo:
        try:
            detach_pins(pin_dir, ns, config, binary)
        except Exception as e:  # noqa: BLE001 - cleanup goes on with the rest
            log(f"releasing pins {pin_dir}: {e}")


atexit.register(release_pins)

_CLONE_NEWNET = 0x40000000


def in_netns(ns, fn, *args):
    """fn(*args) in a thread moved into network namespace `ns` (setns moves only
    that thread); returns its result or raises what it raised."""
    out = {}

    def run():
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            with open(f"/run/netns/{ns}") as f:
                if libc.setns(f.fileno(), _CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns {ns}: {os.strerror(err)}")
            out["v"] = fn(*args)
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
            out["e"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join()
    if "e" in out:
        raise out["e"]
    return out.get("v")
