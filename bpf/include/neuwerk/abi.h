/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * The kernel ABI of Neuwerk: map keys and values, shared with userspace.
 *
 * Keep in sync with crates/neuwerk-abi/src/lib.rs, whose layout tests check
 * size and field offsets of every struct here. Never reorder fields; retire
 * a field by renaming it to a reserved one.
 *
 * Addresses are 16 bytes in network order; IPv4 is stored IPv4-mapped
 * (::ffff:a.b.c.d) so one map serves both families.
 */
#ifndef NEUWERK_ABI_H
#define NEUWERK_ABI_H

#include <linux/types.h>

/* Bump when a struct below changes meaning without changing size: a
 * starting daemon adopts pinned maps only of its own version and layout
 * (crates/neuwerk-datapath/src/pins.rs). */
#define NW_ABI_VERSION 2

#define NW_PORTSET_RANGES 16   /* ranges in one port set */
#define NW_RULE_SLOTS 8        /* port sets per static-rule prefix */
#define NW_GRANT_SLOTS 4       /* (deadline, port set) pairs per granted address */

#define NW_PROTO_ANY 0

/* An IPv6 address, or an IPv4-mapped one. */
union nw_addr {
	__u8 b[16];
	__u32 w[4];
};

/* Key of the networks LPM trie: source prefix -> network, per generation.
 * prefixlen covers gen (32 bits) plus the address bits. */
struct nw_net_key {
	__u32 prefixlen;
	__u32 gen;
	union nw_addr addr;
};

#define NW_NET_AUDIT 0x1 /* audit mode: policy drops pass, counted and reported */

struct nw_net_value {
	__u32 net_id;
	__u32 flags; /* NW_NET_* */
};

/* Key of the static rules LPM trie: (gen, network, destination prefix).
 * prefixlen covers gen and net_id (64 bits) plus the address bits. */
struct nw_rule_key {
	__u32 prefixlen;
	__u32 gen;
	__u32 net_id;
	union nw_addr addr;
};

/* Port sets allowed for a destination prefix, merged by userspace with
 * those of every shorter prefix of the same network (LPM returns only the
 * longest match). 0 = unused slot. */
struct nw_rule_value {
	__u32 portsets[NW_RULE_SLOTS];
};

struct nw_port_range {
	__u16 lo;
	__u16 hi;
	__u8 proto; /* NW_PROTO_ANY, IPPROTO_TCP, IPPROTO_UDP */
	__u8 all;   /* 1: every port of every protocol, ICMP included */
	__u8 reserved[2];
};

/* An entry of the port set array; id 0 is never used. */
struct nw_portset {
	__u32 count;
	__u32 reserved;
	struct nw_port_range ranges[NW_PORTSET_RANGES];
};

/* Key of the grants hash: a network may reach an address. */
struct nw_grant_key {
	__u32 net_id;
	union nw_addr addr;
};

struct nw_grant_slot {
	__u64 expires_ns; /* CLOCK_MONOTONIC, checked per packet */
	__u32 portset;    /* 0 = unused slot */
	__u32 name_id;    /* the queried name it was learned for (nw_names); 0 unknown */
};

struct nw_grant_value {
	struct nw_grant_slot slots[NW_GRANT_SLOTS];
};

/* A connection in its original direction (client -> server). For ICMP
 * echo, sport carries the echo id and dport is 0. */
struct nw_ct_key {
	union nw_addr saddr;
	union nw_addr daddr;
	__u16 sport;
	__u16 dport;
	__u8 proto;
	__u8 reserved[3];
};

#define NW_CT_CLOSING 0x1 /* FIN or RST seen: the short timeout applies */
#define NW_CT_GRANT 0x2   /* opened by a DNS-learned grant (name_id says whose) */
#define NW_CT_AUDIT 0x4   /* opened only because the network audits */

struct nw_ct_value {
	__u64 last_seen_ns;
	__u32 net_id;
	__u32 flags;   /* NW_CT_* */
	__u32 name_id; /* NW_CT_GRANT: the queried name of that grant (nw_names), 0 unknown */
	__u32 icmp_errors; /* ICMP errors passed for it: window << 8 | count (lib/related.h) */
};

/* Key of the local DNS listeners: traffic to these always passes. */
struct nw_local_key {
	union nw_addr addr;
	__u16 port; /* host order */
	__u8 proto;
	__u8 reserved;
};

/* Key of the DNS interception table: a client's query socket. */
struct nw_dns_nat_key {
	union nw_addr client;
	__u16 port; /* host order */
	__u8 proto;
	__u8 reserved;
};

/* Where the client's intercepted query was addressed: its replies are
 * given that address back (lib/intercept.h). */
struct nw_dns_nat_value {
	union nw_addr resolver;
	__u16 port; /* host order */
	__u16 reserved;
};

/* The single entry of the state array: what userspace flips at runtime. */
struct nw_state {
	__u32 active_gen; /* generation of networks and rules in force */
	__u32 reserved;
};

/* The single entry of nw_stamp: which daemon build made the pinned maps.
 * Written by userspace once every map exists; 0 until then. */
struct nw_stamp {
	__u32 abi_version; /* NW_ABI_VERSION */
	__u32 reserved;
	__u64 layout;      /* userspace's fingerprint of every map definition */
};

/* A page of the names log (nw_names): records of ids and names, written by
 * userspace only, so that a restarted daemon knows which network and which
 * queried name each pinned grant belongs to. Record: kind (1 network, 2
 * hostname), length, id (4 bytes, little endian), then the name's bytes.
 * Sized so that a page and its hash entry fill one 4 KiB allocation. */
#define NW_NAME_PAGE_DATA 4024

struct nw_name_page {
	__u32 used; /* bytes of data holding records */
	__u32 reserved;
	__u8 data[NW_NAME_PAGE_DATA];
};

/* Why a packet passed or was dropped; index of the per-CPU counters.
 * Keep in sync with neuwerk_abi::Reason. */
enum nw_reason {
	NW_PASS_NON_IP = 0,    /* ARP and other non-IP frames on the upstream side */
	NW_PASS_ND,            /* IPv6 neighbour discovery */
	NW_PASS_LOCAL_DNS,     /* to one of neuwerk's own DNS listeners */
	NW_PASS_CT,            /* tracked connection, client side */
	NW_PASS_RULE,          /* static rule, new connection */
	NW_PASS_GRANT,         /* DNS-learned grant, new connection */
	NW_PASS_REPLY,         /* reply of a tracked connection */
	NW_PASS_RELATED,       /* ICMP error about a tracked connection */
	NW_PASS_NOT_CLIENT,    /* upstream side, not addressed to a client network */
	NW_DROP_NO_NETWORK,    /* source in no network */
	NW_DROP_POLICY,        /* no rule or live grant allows it */
	NW_DROP_UNSOLICITED,   /* upstream side, to a client, not a reply */
	NW_DROP_MALFORMED,     /* headers truncated or inconsistent */
	NW_DROP_FRAGMENT,      /* non-first fragment: no ports to judge */
	NW_DROP_ETHERTYPE,     /* client side, neither IP nor ARP */
	NW_PASS_AUDIT,         /* would be NW_DROP_POLICY or NW_DROP_UNSOLICITED; the network audits */
	NW_DROP_ICMP_UNRELATED,/* ICMP error quoting no tracked connection, or not sent to the quoted packet's sender */
	NW_DROP_ICMP_KIND,     /* ICMP error of a type or code no path produces */
	NW_DROP_ICMP_SIZE,     /* ICMP error longer than an error needs (576 / 1280 bytes) */
	NW_DROP_ICMP_RATE,     /* ICMP error over its connection's rate */
	NW_PASS_DNS_INTERCEPT, /* DNS to another resolver, given to neuwerk's own listener */
	/* Append new reasons here: userspace counters are indexed by value.
	 * Classify every new reason in reason_drops() (lib/verdict.h). */
	NW_REASON_MAX,
};

/* Per-network packet counters, index of nw_net_stats = net_id (0: source,
 * resp. destination, in no network, or not looked up; see lib/verdict.h). */
enum nw_proto_class {
	NW_PC_TCP = 0,
	NW_PC_UDP,
	NW_PC_ICMP,  /* ICMP and ICMPv6 */
	NW_PC_OTHER, /* other IP protocols, and non-IP frames */
	NW_PC_MAX,
};

enum nw_verdict_class {
	NW_VC_ALLOWED = 0,
	NW_VC_DROPPED,
	NW_VC_AUDIT_ALLOWED, /* NW_PASS_AUDIT */
	NW_VC_MAX,
};

struct nw_net_stats {
	__u64 packets[NW_PC_MAX][NW_VC_MAX];
};

/* A dropped or audit-passed IP packet, reported through the nw_events ring
 * buffer (rate-limited per CPU, see lib/events.h). */
struct nw_event {
	__u64 time_ns;  /* CLOCK_MONOTONIC */
	__u32 net_id;   /* as counted in nw_net_stats */
	__u8 reason;    /* enum nw_reason */
	__u8 proto;     /* IP protocol number */
	__u16 sport;    /* host order; ICMP echo: id in sport (request) or dport (reply) */
	__u16 dport;    /* host order */
	__u16 reserved;
	union nw_addr saddr;
	union nw_addr daddr;
	__u32 reserved2; /* the tail padding, spelled out so that it is written */
};

#endif /* NEUWERK_ABI_H */
