"""Attaching a pinned classifier at TCX ingress of an interface in another
network namespace, as neuwerk attaches its own programs (aya picks TCX on
kernels >= 6.6): the benchmark's floor for any TC filter is an empty
program on the very hook neuwerk uses.

bpftool 7.1 (Debian 12) cannot attach TCX and `tc` only attaches through
clsact, a different and heavier hook, so this makes the two syscalls
itself: BPF_OBJ_GET on the pin, BPF_LINK_CREATE with BPF_TCX_INGRESS.
The link lives as long as its descriptor: closing it detaches.
"""

from __future__ import annotations

import ctypes
import os
import socket
import struct
import threading

SYS_BPF = 321  # x86_64
BPF_OBJ_GET = 7
BPF_LINK_CREATE = 28
BPF_TCX_INGRESS = 46
CLONE_NEWNET = 0x40000000

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def _bpf(cmd: int, attr: bytes) -> int:
    buf = ctypes.create_string_buffer(attr, 128)  # bpf_attr, zero-filled past `attr`
    fd = _libc.syscall(ctypes.c_long(SYS_BPF), ctypes.c_long(cmd), buf, ctypes.c_uint(128))
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"bpf({cmd}): {os.strerror(err)}")
    return fd


def _obj_get(pin: str) -> int:
    path = ctypes.create_string_buffer(pin.encode())  # alive until the call returns
    # struct { __aligned_u64 pathname; __u32 bpf_fd; __u32 file_flags; }
    return _bpf(BPF_OBJ_GET, struct.pack("<QII", ctypes.addressof(path), 0, 0))


def _link_create(prog_fd: int, ifindex: int) -> int:
    # struct { __u32 prog_fd; __u32 target_ifindex; __u32 attach_type; __u32 flags; tcx {...} }
    return _bpf(BPF_LINK_CREATE, struct.pack("<IIII", prog_fd, ifindex, BPF_TCX_INGRESS, 0))


def attach_ingress(pin, netns: str, ifname: str) -> int:
    """Attaches the classifier pinned at `pin` at TCX ingress of `ifname` in
    network namespace `netns` (an `ip netns` name); returns the link's
    descriptor (close it to detach)."""
    out: dict = {}

    def in_netns():
        # setns moves only this thread; the descriptors it makes are the
        # process's, and the pin resolves through the (unchanged) mount ns.
        try:
            with open(f"/var/run/netns/{netns}") as f:
                if _libc.setns(f.fileno(), CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns {netns}: {os.strerror(err)}")
            prog = _obj_get(str(pin))
            try:
                out["link"] = _link_create(prog, socket.if_nametoindex(ifname))
            finally:
                os.close(prog)
        except Exception as e:  # noqa: BLE001 - re-raised in the caller's thread
            out["error"] = e

    t = threading.Thread(target=in_netns)
    t.start()
    t.join()
    if "error" in out:
        raise out["error"]
    return out["link"]
