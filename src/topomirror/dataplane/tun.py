"""TUN device: open it, configure it with pyroute2, read and write whole IP packets."""

from __future__ import annotations

import fcntl
import os
import struct

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

TUNSETIFF = 0x400454CA
TUNSETPERSIST = 0x400454CB
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000


class TunError(RuntimeError):
    pass


def open_tun(name: str, persist: bool = True) -> int:
    """Create (or attach to) TUN `name`; return a non-blocking fd. Packets carry no extra header.

    The device is made persistent: it, its address and the routes into it outlive the node
    process, so a node restart does not take the VMs' addresses away (their TCP connections just
    see a short outage). `remove_tun` deletes it."""
    try:
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise TunError(f"cannot open /dev/net/tun ({exc.strerror}): the node needs root and the tun module") from None
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
    except OSError as exc:
        os.close(fd)
        raise TunError(f"cannot create TUN {name!r}: {exc.strerror}") from None
    if persist:
        fcntl.ioctl(fd, TUNSETPERSIST, 1)
    return fd


def remove_tun(name: str) -> None:
    with IPRoute() as ip:
        for index in ip.link_lookup(ifname=name):
            ip.link("del", index=index)


def configure_tun(name: str, address: str, prefixlen: int, mtu: int, routes: list[tuple[str, int]]) -> None:
    """Address, MTU, up, and a route into the TUN for every peer overlay prefix."""
    with IPRoute() as ip:
        index = ip.link_lookup(ifname=name)[0]
        # A deep queue between the kernel and the node: a node descheduled for a moment on a busy
        # host must not turn that into loss (500, the default, is 250 ms at 2k packets/s).
        ip.link("set", index=index, mtu=mtu, txqlen=10000)
        try:
            ip.addr("add", index=index, address=address, prefixlen=prefixlen)
        except NetlinkError as exc:
            if exc.code != 17:  # EEXIST: restarted on an existing device
                raise
        ip.link("set", index=index, state="up")
        for dst, plen in routes:
            ip.route("replace", dst=dst, dst_len=plen, oif=index)
