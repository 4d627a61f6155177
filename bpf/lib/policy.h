/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Whether a new connection of a network may start. Precedence:
 *   1. a static rule of the network covering the destination and port;
 *   2. a DNS-learned grant of the network for the destination whose
 *      deadline has not passed (checked here, per packet: exact expiry);
 *   3. the network audits (NW_NET_AUDIT): pass and track it like an
 *      allowed connection, but count and report it as NW_PASS_AUDIT, so an
 *      operator sees what enforcing would break before it breaks;
 *   4. otherwise drop.
 * On the upstream side only 3. applies, to unsolicited traffic.
 */
#ifndef NEUWERK_POLICY_H
#define NEUWERK_POLICY_H

#include "maps.h"
#include "parse.h"

static __always_inline int range_allows(const struct nw_port_range *r, __u32 proto, __u32 dport)
{
	if (r->all)
		return 1;
	if (proto != IPPROTO_TCP && proto != IPPROTO_UDP)
		return 0; /* port-less protocols need the all-ports range */
	if (r->proto != NW_PROTO_ANY && r->proto != proto)
		return 0;
	return dport >= r->lo && dport <= r->hi;
}

/* Whether port set `id` allows (proto, dport). A global function, so the
 * kernel verifies its loop once rather than at every call site on every
 * path: the client program's verification is most of a daemon's start,
 * and DNS goes unanswered while a restarting daemon waits for it. */
__attribute__((noinline)) int nw_portset_allows(__u32 id, __u32 proto, __u32 dport)
{
	struct nw_portset *ps;
	__u32 i;

	if (!id)
		return 0;
	ps = bpf_map_lookup_elem(&nw_portsets, &id);
	if (!ps)
		return 0;
	for (i = 0; i < NW_PORTSET_RANGES; i++) {
		if (i >= ps->count)
			break;
		if (range_allows(&ps->ranges[i], proto, dport))
			return 1;
	}
	return 0;
}

static __always_inline int portset_allows(__u32 id, const struct nw_flow *f)
{
	return nw_portset_allows(id, f->proto, f->dport);
}

/* 1. static rules */
static __always_inline int rule_allows(__u32 gen, __u32 net_id, const struct nw_flow *f)
{
	struct nw_rule_key key = {
		.prefixlen = 64 + 128,
		.gen = gen,
		.net_id = net_id,
	};
	struct nw_rule_value *rv;
	__u32 i;

	addr_copy(&key.addr, &f->daddr);
	rv = bpf_map_lookup_elem(&nw_rules, &key);
	if (!rv)
		return 0;
	for (i = 0; i < NW_RULE_SLOTS; i++) {
		if (!rv->portsets[i])
			break;
		if (portset_allows(rv->portsets[i], f))
			return 1;
	}
	return 0;
}

/* 2. grants, with the deadline checked against the packet's time; `*name_id`
 * receives the queried name of the slot that allows it */
static __always_inline int grant_allows(__u32 net_id, const struct nw_flow *f, __u64 now,
					__u32 *name_id)
{
	struct nw_grant_key key = { .net_id = net_id };
	struct nw_grant_value *gv;
	__u32 i;

	addr_copy(&key.addr, &f->daddr);
	gv = bpf_map_lookup_elem(&nw_grants, &key);
	if (!gv)
		return 0;
	for (i = 0; i < NW_GRANT_SLOTS; i++) {
		struct nw_grant_slot *s = &gv->slots[i];

		if (s->portset && s->expires_ns > now && portset_allows(s->portset, f)) {
			*name_id = s->name_id;
			return 1;
		}
	}
	return 0;
}

/* 3. audit mode */
static __always_inline int audit_allows(const struct nw_net_value *net)
{
	return net->flags & NW_NET_AUDIT;
}

#endif /* NEUWERK_POLICY_H */
