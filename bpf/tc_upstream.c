/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * TC ingress of the upstream-facing interface: what comes back. Replies of
 * tracked connections and traffic for the node itself pass; anything else
 * addressed to a client network is unsolicited and dropped, or passed and
 * reported when that network audits.
 */
#include "lib/common.h"
#include "lib/parse.h"
#include "lib/network.h"
#include "lib/conntrack.h"
#include "lib/policy.h"
#include "lib/related.h"
#include "lib/verdict.h"
#include "lib/forward.h"

/* An ICMP error from the upstream side: one addressed to a client passes
 * only as an error of the connection it quotes (lib/related.h); one for
 * the node itself goes to its stack. */
static __always_inline __u32 judge_upstream_icmp_error(struct __sk_buff *skb, const struct nw_flow *f,
						       __u64 now, __u32 *net_id)
{
	__u32 reason = icmp_error_reason(skb, f, 0, now, net_id);
	struct nw_net_value *net;

	if (reason == NW_PASS_RELATED)
		return reason;
	net = network_of(active_gen(), &f->daddr);
	if (!net)
		return NW_PASS_NOT_CLIENT;
	*net_id = net->net_id;
	return reason;
}

/* The reason for `f`; `*net_id` receives the network it counts in. */
static __always_inline __u32 judge_upstream(struct __sk_buff *skb, const struct nw_flow *f,
					    int parse_rc, __u32 *net_id)
{
	__u64 now = ct_now();
	struct nw_ct_key ct = {};
	struct nw_ct_value *tracked;
	struct nw_net_value *net;

	/* Errors first: their ports are 0, which a tracked ping of id 0
	 * would match. */
	if (parse_rc == 0 && f->icmp_kind == NW_ICMP_ERROR)
		return judge_upstream_icmp_error(skb, f, now, net_id);
	if (parse_rc == 0) {
		ct_key_reverse(&ct, f);
		tracked = ct_touch(&ct, f, now);
		if (tracked) {
			*net_id = tracked->net_id;
			return NW_PASS_REPLY;
		}
	}
	/* Only traffic to clients is ours to judge; the node's own (DNS
	 * answers from upstreams, management) goes to its stack. */
	net = network_of(active_gen(), &f->daddr);
	if (!net)
		return NW_PASS_NOT_CLIENT;
	*net_id = net->net_id;
	if (parse_rc < 0)
		return -parse_rc; /* fragments: no ports, never audited */
	/* Not tracked: each such packet is reported again (rate-limited),
	 * which is what an audit of inbound exposure wants to see. */
	if (audit_allows(net))
		return NW_PASS_AUDIT;
	return NW_DROP_UNSOLICITED;
}

SEC("classifier")
int nw_from_upstream(struct __sk_buff *skb)
{
	struct nw_flow f = {};
	__u32 net_id = 0;
	int rc = parse_flow(skb, &f);

	switch (rc) {
	case NW_PARSE_ARP:
	case NW_PARSE_OTHER_L2:
		return verdict(&f, 0, NW_PASS_NON_IP);
	case NW_PARSE_ND:
		return verdict(&f, 0, NW_PASS_ND);
	case -NW_DROP_MALFORMED:
		return verdict(&f, 0, NW_DROP_MALFORMED);
	}
	/* Fragments (rc = -NW_DROP_FRAGMENT) have addresses but no ports: they
	 * pass only when not addressed to a client. */
	rc = judge_upstream(skb, &f, rc, &net_id);
	return forward_passed(skb, &f, rc, verdict(&f, net_id, rc));
}
