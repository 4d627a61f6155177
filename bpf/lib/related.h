/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * ICMP errors (unreachable, packet too big, time exceeded) about a tracked
 * connection pass: path MTU discovery depends on them.
 */
#ifndef NEUWERK_RELATED_H
#define NEUWERK_RELATED_H

#include "conntrack.h"

/* `from_client`: the error comes from the client side, so the packet it
 * quotes went server -> client and the connection is its reverse. Returns
 * the connection's entry or NULL. */
static __always_inline struct nw_ct_value *icmp_error_related(struct __sk_buff *skb, const struct nw_flow *f,
					      int from_client, __u64 now)
{
	struct nw_flow quote = {};
	struct nw_ct_key k = {};

	if (parse_icmp_quote(skb, f, &quote) != NW_PARSE_IP)
		return NULL;
	if (from_client)
		ct_key_reverse(&k, &quote);
	else
		ct_key_forward(&k, &quote);
	quote.tcp_flags = 0; /* an error never closes the connection by itself */
	return ct_touch(&k, &quote, now);
}

#endif /* NEUWERK_RELATED_H */
