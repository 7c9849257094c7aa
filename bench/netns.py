"""Network namespaces for the party services: one per party, a middle one on the path.

    root (coordinator) ─veth─ middle ─veth─ party k      (k = 0, 1, 2)
    10.231.B.1/30        .2   10.231.(B+1+k).1/30  .2

The middle namespace forwards between the coordinator and the parties (so the party
services are reached at their own addresses), and is where `bench wan` shapes the links
(htb on both ends of each party's veth; this kernel has no netem) and runs its delaying
TCP relay. Addresses come from 10.231.0.0/16, which nothing else in the project uses;
each user of this module passes its own third-octet base so concurrent users do not
collide, and interface names carry a short tag. Everything made here is removed by
:meth:`Topology.destroy` (also on failure: use it as a context manager), and leftovers
of the same tag from a crashed run are removed first. Needs root (CAP_NET_ADMIN).
"""
from __future__ import annotations

import os
import subprocess

from wenlv.errors import WenlvError

NET = "10.231"


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True, timeout=30)


def have_netns() -> str | None:
    """None if namespaces can be made here, else why not."""
    if os.geteuid() != 0:
        return "needs root (ip netns, veth, tc)"
    try:
        _ip("netns", "list")
    except (OSError, subprocess.CalledProcessError) as exc:
        return f"ip netns unavailable: {exc}"
    return None


class Topology:
    """Namespaces ``<tag>-m`` and ``<tag>-p<k>`` with veth links and routes (see the module doc)."""

    def __init__(self, tag: str, base: int, parties: tuple[str, ...]):
        if len(tag) > 8 or not tag.replace("-", "").isalnum():
            raise WenlvError(f"namespace tag {tag!r}: at most 8 letters/digits (interface names ≤ 15)")
        if not 0 <= base <= 250 - len(parties):
            raise WenlvError(f"third-octet base {base} out of range")
        self.tag, self.base, self.parties = tag, base, tuple(parties)
        self.middle = f"{tag}-m"
        self.ns = {p: f"{tag}-p{k}" for k, p in enumerate(self.parties)}
        self.root_addr, self.middle_addr = f"{NET}.{base}.1", f"{NET}.{base}.2"
        self.addr = {p: f"{NET}.{base + 1 + k}.2" for k, p in enumerate(self.parties)}
        self.gateway = {p: f"{NET}.{base + 1 + k}.1" for k, p in enumerate(self.parties)}
        self.links = {p: (f"{tag}-m{k + 1}", f"{tag}-p{k}e") for k, p in enumerate(self.parties)}  # (middle, party)

    def __enter__(self) -> "Topology":
        self.create()
        return self

    def __exit__(self, *exc) -> None:
        self.destroy()

    def create(self) -> None:
        self.destroy()  # leftovers of a crashed run with the same tag
        try:
            t, b = self.tag, self.base
            _ip("netns", "add", self.middle)
            _ip("-n", self.middle, "link", "set", "lo", "up")
            _ip("link", "add", f"{t}-r0", "type", "veth", "peer", "name", f"{t}-m0", "netns", self.middle)
            _ip("addr", "add", f"{self.root_addr}/30", "dev", f"{t}-r0")
            _ip("link", "set", f"{t}-r0", "up")
            _ip("-n", self.middle, "addr", "add", f"{self.middle_addr}/30", "dev", f"{t}-m0")
            _ip("-n", self.middle, "link", "set", f"{t}-m0", "up")
            subprocess.run(["ip", "netns", "exec", self.middle, "sysctl", "-qw", "net.ipv4.ip_forward=1"],
                           check=True, capture_output=True, timeout=30)
            for k, p in enumerate(self.parties):
                ns, (mid_if, party_if) = self.ns[p], self.links[p]
                _ip("netns", "add", ns)
                _ip("-n", ns, "link", "set", "lo", "up")
                _ip("-n", self.middle, "link", "add", mid_if, "type", "veth", "peer", "name", party_if, "netns", ns)
                _ip("-n", self.middle, "addr", "add", f"{self.gateway[p]}/30", "dev", mid_if)
                _ip("-n", self.middle, "link", "set", mid_if, "up")
                _ip("-n", ns, "addr", "add", f"{self.addr[p]}/30", "dev", party_if)
                _ip("-n", ns, "link", "set", party_if, "up")
                _ip("-n", ns, "route", "add", "default", "via", self.gateway[p])
                _ip("route", "add", f"{NET}.{b + 1 + k}.0/30", "via", self.middle_addr)
        except subprocess.CalledProcessError as exc:
            self.destroy()
            raise WenlvError(f"namespaces: `{' '.join(exc.cmd)}` failed: {exc.stderr.strip()}") from None

    def destroy(self) -> None:
        """Remove the namespaces (their veths go with them) and the root end; idempotent."""
        for ns in [*self.ns.values(), self.middle]:
            _ip("netns", "del", ns, check=False)
        _ip("link", "del", f"{self.tag}-r0", check=False)  # also drops the routes through it

    def exec_prefix(self, party: str | None = None) -> list[str]:
        """Command prefix that runs a program in a party's namespace (or the middle one)."""
        return ["ip", "netns", "exec", self.middle if party is None else self.ns[party]]

    def shape(self, party: str, rate_mbit: float) -> str:
        """htb at `rate_mbit` on both ends of the party's link; the commands, for the JSON.

        Pure TCP ACKs get a class of their own ahead of the bulk data (as a home or office
        router does), so a flow's ACKs do not queue behind the other direction's transfer and
        both directions can be busy at once; each class queues at most ~50 ms of traffic.
        (This kernel has neither netem nor fq_codel/sfq/prio; htb, tbf and u32 work.)"""
        mid_if, party_if = self.links[party]
        rate = f"{rate_mbit}mbit"
        packets = max(int(rate_mbit * 1e6 / 8 * 0.05 / 1514), 16)
        quantum = "1514"
        commands = []
        for ns, dev in ((self.middle, mid_if), (self.ns[party], party_if)):
            subprocess.run(["tc", "-n", ns, "qdisc", "del", "dev", dev, "root"], capture_output=True, timeout=30)
            steps = [
                ["qdisc", "add", "dev", dev, "root", "handle", "1:", "htb", "default", "20"],
                ["class", "add", "dev", dev, "parent", "1:", "classid", "1:1", "htb", "rate", rate, "quantum", quantum],
                ["class", "add", "dev", dev, "parent", "1:1", "classid", "1:10", "htb", "rate", f"{rate_mbit / 10}mbit",
                 "ceil", rate, "prio", "0", "quantum", quantum],
                ["class", "add", "dev", dev, "parent", "1:1", "classid", "1:20", "htb", "rate", f"{rate_mbit * 0.9}mbit",
                 "ceil", rate, "prio", "1", "quantum", quantum],
                ["qdisc", "add", "dev", dev, "parent", "1:10", "pfifo", "limit", str(packets)],
                ["qdisc", "add", "dev", dev, "parent", "1:20", "pfifo", "limit", str(packets)],
                ["filter", "add", "dev", dev, "parent", "1:", "protocol", "ip", "prio", "1", "u32",
                 "match", "ip", "protocol", "6", "0xff", "match", "u8", "0x10", "0xff", "at", "nexthdr+13",
                 "match", "u16", "0x0000", "0xffc0", "at", "2", "flowid", "1:10"],
            ]
            for step in steps:
                subprocess.run(["tc", "-n", ns, *step], check=True, capture_output=True, timeout=30)
                commands.append("tc -n " + ns + " " + " ".join(step))
        return "; ".join(commands)

    def unshape(self, party: str) -> None:
        mid_if, party_if = self.links[party]
        for ns, dev in ((self.middle, mid_if), (self.ns[party], party_if)):
            subprocess.run(["tc", "-n", ns, "qdisc", "del", "dev", dev, "root"], capture_output=True, timeout=30)
