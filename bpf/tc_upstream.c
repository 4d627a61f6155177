/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * TC ingress of the upstream-facing interface: what comes back. Replies of
 * tracked connections and traffic for the node itself pass; anything else
 * addressed to a client network is unsolicited and dropped.
 */
#include "lib/common.h"
#include "lib/parse.h"
#include "lib/network.h"
#include "lib/conntrack.h"
#include "lib/related.h"
#include "lib/verdict.h"

static __always_inline __u32 judge_upstream(struct __sk_buff *skb, const struct nw_flow *f,
					    int parse_rc)
{
	__u64 now = bpf_ktime_get_ns();
	struct nw_ct_key ct = {};

	if (parse_rc == 0) {
		ct_key_reverse(&ct, f);
		if (ct_touch(&ct, f, now))
			return NW_PASS_REPLY;
		if (f->icmp_kind == NW_ICMP_ERROR && icmp_error_related(skb, f, 0, now))
			return NW_PASS_RELATED;
	}
	/* Only traffic to clients is ours to judge; the node's own (DNS
	 * answers from upstreams, management) goes to its stack. */
	if (!network_of(active_gen(), &f->daddr))
		return NW_PASS_NOT_CLIENT;
	return parse_rc < 0 ? -parse_rc : NW_DROP_UNSOLICITED;
}

SEC("classifier")
int nw_from_upstream(struct __sk_buff *skb)
{
	struct nw_flow f = {};
	int rc = parse_flow(skb, &f);

	switch (rc) {
	case NW_PARSE_ARP:
	case NW_PARSE_OTHER_L2:
		return verdict(NW_PASS_NON_IP);
	case NW_PARSE_ND:
		return verdict(NW_PASS_ND);
	case -NW_DROP_MALFORMED:
		return verdict(NW_DROP_MALFORMED);
	}
	/* Fragments (rc = -NW_DROP_FRAGMENT) have addresses but no ports: they
	 * pass only when not addressed to a client. */
	return verdict(judge_upstream(skb, &f, rc));
}
