/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Connection tracking: a connection allowed at its first packet lives on,
 * past the grant that allowed it, until it is idle or closed.
 */
#ifndef NEUWERK_CONNTRACK_H
#define NEUWERK_CONNTRACK_H

#include "maps.h"
#include "parse.h"

/* last_seen is rewritten at most this often: a write per packet would
 * bounce the entry's cache line between CPUs for no gain in precision. */
#define NW_CT_REFRESH_NS (100ULL * 1000000ULL)

/* The clock of connection tracking: CLOCK_MONOTONIC at tick resolution
 * (bpf_ktime_get_coarse_ns reads the last tick's time, no clock read), far
 * finer than any idle timeout or the refresh interval, and about 15 ns
 * cheaper per packet than bpf_ktime_get_ns. Every last_seen_ns is written
 * with it; ages are compared signed all the same, so a stamp from a finer
 * clock (up to a tick ahead) reads as fresh, never as ancient. */
static __always_inline __u64 ct_now(void)
{
	return bpf_ktime_get_coarse_ns();
}

/* Nanoseconds since `then`, never negative. */
static __always_inline __u64 ct_age(__u64 now, __u64 then)
{
	__s64 d = (__s64)(now - then);

	return d > 0 ? (__u64)d : 0;
}

static __always_inline void ct_key_forward(struct nw_ct_key *k, const struct nw_flow *f)
{
	addr_copy(&k->saddr, &f->saddr);
	addr_copy(&k->daddr, &f->daddr);
	k->sport = f->sport;
	k->dport = f->dport;
	k->proto = f->proto;
}

/* The key of the connection a reply belongs to. */
static __always_inline void ct_key_reverse(struct nw_ct_key *k, const struct nw_flow *f)
{
	addr_copy(&k->saddr, &f->daddr);
	addr_copy(&k->daddr, &f->saddr);
	k->sport = f->dport;
	k->dport = f->sport;
	k->proto = f->proto;
}

static __always_inline __u64 ct_timeout(const struct nw_ct_key *k, const struct nw_ct_value *v)
{
	if (k->proto == IPPROTO_TCP)
		return (v->flags & NW_CT_CLOSING) ? CT_TCP_CLOSING_NS : CT_TCP_IDLE_NS;
	if (k->proto == IPPROTO_UDP)
		return CT_UDP_IDLE_NS;
	return CT_ICMP_IDLE_NS;
}

/* Looks up a live connection and refreshes it; its entry (for the network
 * it counts in) or NULL. */
static __always_inline struct nw_ct_value *ct_touch(const struct nw_ct_key *k,
						    const struct nw_flow *f, __u64 now)
{
	struct nw_ct_value *v = bpf_map_lookup_elem(&nw_conntrack, k);
	__u8 closing;

	if (!v)
		return NULL;
	if (ct_age(now, v->last_seen_ns) > ct_timeout(k, v))
		return NULL; /* idle: the entry is stale, judge the packet afresh */
	/* A new SYN on the tuple of a closing connection starts another
	 * connection: it must be allowed on its own, not by the old one. */
	if (k->proto == IPPROTO_TCP && (v->flags & NW_CT_CLOSING) &&
	    (f->tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) == TCP_FLAG_SYN)
		return NULL;
	closing = (k->proto == IPPROTO_TCP) && (f->tcp_flags & (TCP_FLAG_FIN | TCP_FLAG_RST));
	if (closing && !(v->flags & NW_CT_CLOSING))
		v->flags |= NW_CT_CLOSING; /* racing writers only ever set the bit */
	if (ct_age(now, v->last_seen_ns) > NW_CT_REFRESH_NS)
		v->last_seen_ns = now;
	return v;
}

/* What opened a connection, kept in its entry: a policy reload closes it
 * only when the new policy no longer allows what opened it. */
struct nw_ct_origin {
	__u32 net_id;
	__u32 flags;   /* 0 (a static rule), NW_CT_GRANT or NW_CT_AUDIT */
	__u32 name_id; /* NW_CT_GRANT: the grant's queried name */
};

static __always_inline void ct_create(const struct nw_ct_key *k, const struct nw_flow *f,
				      const struct nw_ct_origin *o, __u64 now)
{
	struct nw_ct_value v = {
		.last_seen_ns = now,
		.net_id = o->net_id,
		.flags = o->flags,
		.name_id = o->name_id,
	};

	if (k->proto == IPPROTO_TCP && (f->tcp_flags & (TCP_FLAG_FIN | TCP_FLAG_RST)))
		v.flags |= NW_CT_CLOSING;
	bpf_map_update_elem(&nw_conntrack, k, &v, BPF_ANY);
}

#endif /* NEUWERK_CONNTRACK_H */
