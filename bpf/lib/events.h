/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Drop and audit events through the nw_events ring buffer. Each CPU spends
 * from its own token bucket, so a flood of dropped packets costs userspace
 * at most EVENTS_PER_SEC (+ EVENTS_BURST) events per CPU and second; what
 * the bucket or a full ring holds back is counted in nw_events_lost, so
 * userspace can say how much it did not see.
 */
#ifndef NEUWERK_EVENTS_H
#define NEUWERK_EVENTS_H

#include "maps.h"
#include "parse.h"

#define NW_NS_PER_SEC 1000000000ULL

static __always_inline void event_lost(void)
{
	__u32 zero = 0;
	__u64 *n = bpf_map_lookup_elem(&nw_events_lost, &zero);

	if (n)
		*n += 1; /* per-CPU slot: no atomic needed */
}

/* The bucket holds time, not tokens: it fills at 1 ns per ns up to
 * EVENTS_BURST events' worth and an event costs 1e9 / EVENTS_PER_SEC ns.
 * Integer arithmetic then loses no fraction of a token between packets. */
static __always_inline int event_take_token(__u64 now)
{
	__u32 zero = 0;
	struct nw_event_bucket *b = bpf_map_lookup_elem(&nw_event_bucket, &zero);
	__u64 cost, cap, credit;

	if (!b || !EVENTS_PER_SEC)
		return 0;
	cost = NW_NS_PER_SEC / EVENTS_PER_SEC;
	cap = EVENTS_BURST * cost;
	credit = b->credit_ns + (now - b->last_ns); /* first use: last_ns 0, bucket fills */
	if (credit > cap)
		credit = cap;
	b->last_ns = now;
	if (credit < cost) {
		b->credit_ns = credit;
		return 0;
	}
	b->credit_ns = credit - cost;
	return 1;
}

static __always_inline void report_event(const struct nw_flow *f, __u32 net_id, __u32 reason)
{
	__u64 now = bpf_ktime_get_ns(); /* only on the drop/audit path */
	struct nw_event *e;

	if (!event_take_token(now)) {
		event_lost();
		return;
	}
	e = bpf_ringbuf_reserve(&nw_events, sizeof(*e), 0);
	if (!e) {
		event_lost(); /* ring full: userspace is behind */
		return;
	}
	e->time_ns = now;
	e->net_id = net_id;
	e->reason = reason;
	e->proto = f->proto;
	e->sport = f->sport;
	e->dport = f->dport;
	e->reserved = 0;
	addr_copy(&e->saddr, &f->saddr);
	addr_copy(&e->daddr, &f->daddr);
	e->reserved2 = 0;
	/* Flags 0: wake the reader only when it has caught up (adaptive),
	 * not once per event. */
	bpf_ringbuf_submit(e, 0);
}

#endif /* NEUWERK_EVENTS_H */
