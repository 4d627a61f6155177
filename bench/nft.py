"""The nftables equivalent of a Neuwerk allow-list, for the packet benchmark.

What a user who wanted the same egress policy from nftables alone would
write: one `inet` table in the firewall's namespace, a forward chain that
drops by default, replies and related ICMP through conntrack
(`ct state established,related accept`), and new connections only to the
allowed (address . port) pairs, held in two sets:

  * `static4`: the static rules, an interval set (CIDRs and port ranges),
  * `learned4`: what Neuwerk learns from DNS, one (address . port) element
    per grant (a user would fill it from a resolver hook; here it is written
    up front with exactly the addresses Neuwerk learned in the same run).

DNS to the node itself is allowed; anything else from clients to the node is
dropped, as Neuwerk's dataplane does.

    build_ruleset(...) -> text for `nft -f`
"""

TABLE = "nwbench"


def _elements(items, per_line=5000):
    """`add element` lines of at most `per_line` elements each."""
    items = list(items)
    for i in range(0, len(items), per_line):
        yield ", ".join(items[i : i + per_line])


def build_ruleset(client_cidr, ingress, static, learned, flowtable=None):
    """client_cidr: "10.100.1.0/24"; ingress: the client-facing interface;
    static: [(cidr_or_addr, ports)] where ports is a list of ints or "lo-hi"
    strings; learned: [(addr, port)]; flowtable: None, or the two interface
    names to offload established flows to a software flowtable."""
    static_el = []
    for cidr, ports in static:
        for p in ports:
            static_el.append(f"{cidr} . {p}")
    learned_el = [f"{a} . {p}" for a, p in learned]
    out = [
        f"table inet {TABLE} {{",
        "  set static4 {",
        "    type ipv4_addr . inet_service",
        "    flags interval",
        "  }",
        "  set learned4 {",
        "    type ipv4_addr . inet_service",
        f"    size {max(65536, 2 * len(learned_el))}",
        "  }",
    ]
    if flowtable:
        devs = ", ".join(f'"{d}"' for d in flowtable)
        out += [
            "  flowtable ft {",
            "    hook ingress priority filter",
            f"    devices = {{ {devs} }}",
            "  }",
        ]
    out += [
        "  chain forward {",
        "    type filter hook forward priority filter; policy drop;",
    ]
    if flowtable:
        out.append("    meta l4proto { tcp, udp } flow add @ft")
    out += [
        "    ct state established,related accept",
        "    ct state invalid drop",
        f'    iifname "{ingress}" ip saddr {client_cidr} meta l4proto {{ tcp, udp }} '
        "ip daddr . th dport @static4 accept",
        f'    iifname "{ingress}" ip saddr {client_cidr} meta l4proto {{ tcp, udp }} '
        "ip daddr . th dport @learned4 accept",
        "  }",
        "  chain input {",
        "    type filter hook input priority filter; policy accept;",
        "    ct state established,related accept",
        f'    iifname "{ingress}" meta l4proto {{ tcp, udp }} th dport 53 accept',
        f'    iifname "{ingress}" drop',
        "  }",
        "}",
    ]
    for line in _elements(static_el):
        out.append(f"add element inet {TABLE} static4 {{ {line} }}")
    for line in _elements(learned_el):
        out.append(f"add element inet {TABLE} learned4 {{ {line} }}")
    return "\n".join(out) + "\n"


def conntrack_only_ruleset():
    """Conntrack turned on in the forward path and nothing filtered: what
    conntrack alone does to forwarded traffic, beside the full allow-list."""
    return "\n".join([
        f"table inet {TABLE} {{",
        "  chain forward {",
        "    type filter hook forward priority filter; policy accept;",
        "    ct state established,related accept",
        "  }",
        "}",
    ]) + "\n"


# Rules of the untracked control: enough per-packet work in the forward path
# to show its effect (8 in the lab: +7% on 4 streams; 60: below plain forwarding).
UNTRACKED_RULES = 8


def untracked_ruleset(n=UNTRACKED_RULES):
    """Netfilter work without conntrack: every packet marked untracked at
    raw prerouting, then `n` forward rules that match nothing (a destination
    no test uses). What the hooks' per-packet time alone does to forwarded
    traffic, beside conntrack only and the full allow-list."""
    rules = [f"    ip daddr 192.0.2.{i + 1} tcp dport 9 drop" for i in range(n)]
    return "\n".join([
        f"table inet {TABLE} {{",
        "  chain pre {",
        "    type filter hook prerouting priority raw; policy accept;",
        "    notrack",
        "  }",
        "  chain forward {",
        "    type filter hook forward priority filter; policy accept;",
        *rules,
        "  }",
        "}",
    ]) + "\n"
