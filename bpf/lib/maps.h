/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Every map of the dataplane, declared in one place so that the two
 * programs of the object share them. Userspace opens them by these names
 * (crates/neuwerk-datapath/src/dataplane.rs and stats.rs) and pins every
 * one, so that they outlive the daemon (crates/neuwerk-datapath/src/pins.rs).
 */
#ifndef NEUWERK_MAPS_H
#define NEUWERK_MAPS_H

#include "common.h"

/* Source prefix -> network, per policy generation. */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, NW_NETWORKS_MAX);
	__type(key, struct nw_net_key);
	__type(value, struct nw_net_value);
} nw_networks SEC(".maps");

/* (gen, network, destination prefix) -> port sets of static rules. */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, NW_RULES_MAX);
	__type(key, struct nw_rule_key);
	__type(value, struct nw_rule_value);
} nw_rules SEC(".maps");

/* Port set id -> ranges; shared by rules and grants, id 0 unused. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, NW_PORTSETS_MAX);
	__type(key, __u32);
	__type(value, struct nw_portset);
} nw_portsets SEC(".maps");

/* (network, address) -> deadlines and port sets learned from DNS. Not
 * preallocated: a million grants would otherwise cost their memory up front. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, NW_GRANTS_MAX);
	__type(key, struct nw_grant_key);
	__type(value, struct nw_grant_value);
} nw_grants SEC(".maps");

/* Tracked connections; LRU so a flood evicts the oldest, not new ones. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, NW_CT_MAX);
	__type(key, struct nw_ct_key);
	__type(value, struct nw_ct_value);
} nw_conntrack SEC(".maps");

/* Neuwerk's own DNS listeners. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, NW_LOCAL_MAX);
	__type(key, struct nw_local_key);
	__type(value, __u8);
} nw_local SEC(".maps");

/* Intercepted DNS: the client's socket -> the resolver it asked. LRU: a
 * flood of sockets evicts the oldest, whose late replies then leave from
 * the listener's own address. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, NW_DNS_NAT_MAX);
	__type(key, struct nw_dns_nat_key);
	__type(value, struct nw_dns_nat_value);
} nw_dns_nat SEC(".maps");

/* Runtime state flipped by userspace (the active policy generation). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct nw_state);
} nw_state SEC(".maps");

/* Packets per enum nw_reason, per CPU: no shared cache line per packet. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, NW_REASON_MAX);
	__type(key, __u32);
	__type(value, __u64);
} nw_counters SEC(".maps");

/* Packets per network, protocol class and verdict class, per CPU. Index =
 * net_id; ids past NW_NETWORKS_MAX are not counted here (only by reason). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, NW_NETWORKS_MAX + 1);
	__type(key, __u32);
	__type(value, struct nw_net_stats);
} nw_net_stats SEC(".maps");

/* Drop and audit events for userspace (struct nw_event). */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, NW_EVENTS_RING_BYTES);
} nw_events SEC(".maps");

/* State of each CPU's event token bucket (lib/events.h). */
struct nw_event_bucket {
	__u64 credit_ns; /* time credit; an event costs 1e9 / EVENTS_PER_SEC */
	__u64 last_ns;   /* when credit was last topped up */
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct nw_event_bucket);
} nw_event_bucket SEC(".maps");

/* Events not reported: suppressed by the bucket or the ring was full. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} nw_events_lost SEC(".maps");

/* Which build made these maps (struct nw_stamp); userspace only. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct nw_stamp);
} nw_stamp SEC(".maps");

/* The names log: page number -> page of (id, name) records; userspace
 * only. Pages are allocated as they are written. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, NW_NAME_PAGES_MAX);
	__type(key, __u32);
	__type(value, struct nw_name_page);
} nw_names SEC(".maps");

#endif /* NEUWERK_MAPS_H */
