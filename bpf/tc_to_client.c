/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * TC egress of the client-facing interface: what the node itself sends to
 * clients (forwarded traffic handed straight to a veth peer skips it).
 * Only intercepted DNS is touched here: the listener's replies leave as if
 * from the resolver the client asked (lib/intercept.h). Nothing is judged
 * or dropped; the programs on the way in decided.
 */
#include "lib/common.h"
#include "lib/parse.h"
#include "lib/intercept.h"

SEC("classifier")
int nw_to_client(struct __sk_buff *skb)
{
	struct nw_flow f = {};

	if (!DNS_INTERCEPT)
		return TC_ACT_OK;
	if (parse_flow(skb, &f) == NW_PARSE_IP)
		dns_intercept_reply(skb, &f);
	return TC_ACT_OK;
}
