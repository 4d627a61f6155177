/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * ICMP errors (unreachable, packet too big, time exceeded, parameter
 * problem) pass as errors of the connection they quote, and only as such:
 * path MTU discovery and fast failure depend on them, but an error's
 * payload is free-form, so anything looser is a tunnel. An error passes
 * when
 *   - its type and code are ones a path produces,
 *   - it is no longer than an error needs (a router quotes at most 576
 *     bytes of IPv4, RFC 1812 4.3.2.3; 1,280 of IPv6, RFC 4443 2.4(c)),
 *   - it quotes a live tracked connection and is addressed to the quoted
 *     packet's sender (a router may send it from anywhere, but only the
 *     end whose packet failed is told),
 *   - and its connection has not used up its errors for the window.
 * Errors addressed to the node itself are let through by the upstream
 * program (tc_upstream.c): the node's own stack takes those.
 */
#ifndef NEUWERK_RELATED_H
#define NEUWERK_RELATED_H

#include "conntrack.h"

#define NW_ICMP_ERROR_MAX_V4 576
#define NW_ICMP_ERROR_MAX_V6 1280
/* Errors per connection and window of 2^30 ns (about a second): PMTU
 * discovery and traceroute need a few. */
#define NW_ICMP_ERRORS_PER_WINDOW 16
#define NW_ICMP_WINDOW_SHIFT 30

/* Whether the type and code are an error a path produces. */
static __always_inline int icmp_error_kind_valid(const struct nw_flow *f)
{
	__u8 code = f->icmp_code;

	if (f->is_v6) {
		switch (f->icmp_type) {
		case 1: /* destination unreachable */
			return code <= 7;
		case 2: /* packet too big */
			return code == 0;
		case 3: /* time exceeded */
			return code <= 1;
		case 4: /* parameter problem */
			return code <= 3;
		}
		return 0;
	}
	switch (f->icmp_type) {
	case ICMP_DEST_UNREACH:
		return code <= 15;
	case ICMP_TIME_EXCEEDED:
		return code <= 1;
	case ICMP_PARAMETERPROB:
		return code <= 2;
	}
	return 0;
}

static __always_inline int addr_eq(const union nw_addr *a, const union nw_addr *b)
{
	return a->w[0] == b->w[0] && a->w[1] == b->w[1] && a->w[2] == b->w[2] && a->w[3] == b->w[3];
}

/* The connection's live entry, without refreshing it: errors never keep
 * a connection alive. */
static __always_inline struct nw_ct_value *ct_live(const struct nw_ct_key *k, __u64 now)
{
	struct nw_ct_value *v = bpf_map_lookup_elem(&nw_conntrack, k);

	if (!v || ct_age(now, v->last_seen_ns) > ct_timeout(k, v))
		return NULL;
	return v;
}

/* Takes one error from the connection's budget; 0 when it is spent.
 * Racing CPUs may each take the same slot: the bound is per CPU at worst. */
static __always_inline int icmp_budget_take(struct nw_ct_value *v, __u64 now)
{
	__u32 window = (__u32)(now >> NW_ICMP_WINDOW_SHIFT) & 0xffffff;
	__u32 used = v->icmp_errors;

	if ((used >> 8) != window) {
		v->icmp_errors = window << 8 | 1;
		return 1;
	}
	if ((used & 0xff) >= NW_ICMP_ERRORS_PER_WINDOW)
		return 0;
	v->icmp_errors = used + 1;
	return 1;
}

/* The reason for an ICMP error (f->icmp_kind == NW_ICMP_ERROR):
 * NW_PASS_RELATED, with `*net_id` set to its connection's network, or one
 * of NW_DROP_ICMP_*. `from_client`: the error comes from the client side,
 * so the packet it quotes went server -> client and the connection is its
 * reverse. */
static __always_inline __u32 icmp_error_reason(struct __sk_buff *skb, const struct nw_flow *f,
					       int from_client, __u64 now, __u32 *net_id)
{
	__u32 max = f->is_v6 ? NW_ICMP_ERROR_MAX_V6 : NW_ICMP_ERROR_MAX_V4;
	struct nw_flow quote = {};
	struct nw_ct_key k = {};
	struct nw_ct_value *v;

	if (!icmp_error_kind_valid(f))
		return NW_DROP_ICMP_KIND;
	if (skb->len > max + sizeof(struct ethhdr))
		return NW_DROP_ICMP_SIZE;
	if (parse_icmp_quote(skb, f, &quote) != NW_PARSE_IP)
		return NW_DROP_ICMP_UNRELATED;
	if (!addr_eq(&f->daddr, &quote.saddr))
		return NW_DROP_ICMP_UNRELATED;
	if (from_client)
		ct_key_reverse(&k, &quote);
	else
		ct_key_forward(&k, &quote);
	v = ct_live(&k, now);
	if (!v)
		return NW_DROP_ICMP_UNRELATED;
	*net_id = v->net_id;
	if (!icmp_budget_take(v, now))
		return NW_DROP_ICMP_RATE;
	return NW_PASS_RELATED;
}

#endif /* NEUWERK_RELATED_H */
