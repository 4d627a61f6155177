/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * TC ingress of the client-facing interface: every packet a client sends.
 * parse -> ICMP error -> tracked connection -> local DNS -> network -> DNS
 * interception -> rule -> grant -> audit -> verdict.
 */
#include "lib/common.h"
#include "lib/parse.h"
#include "lib/network.h"
#include "lib/conntrack.h"
#include "lib/policy.h"
#include "lib/related.h"
#include "lib/intercept.h"
#include "lib/verdict.h"
#include "lib/forward.h"

/* DNS to neuwerk's own listeners always passes: the proxy judges it. */
static __always_inline int is_local_dns(const struct nw_flow *f)
{
	struct nw_local_key k = {
		.port = f->dport,
		.proto = f->proto,
	};

	if (f->proto != IPPROTO_UDP && f->proto != IPPROTO_TCP)
		return 0;
	addr_copy(&k.addr, &f->daddr);
	return bpf_map_lookup_elem(&nw_local, &k) != NULL;
}

/* The network of a client-side packet's source, for counting its drop. */
static __always_inline __u32 source_net_id(const struct nw_flow *f)
{
	struct nw_net_value *net = network_of(active_gen(), &f->saddr);

	return net ? net->net_id : 0;
}

/* An ICMP error a client sends: it passes only as an error of the
 * connection it quotes (lib/related.h), whatever the rules say; a drop
 * counts in the source's network. */
static __always_inline __u32 judge_client_icmp_error(struct __sk_buff *skb, const struct nw_flow *f,
						     __u64 now, __u32 *net_id)
{
	__u32 reason = icmp_error_reason(skb, f, 1, now, net_id);

	if (reason != NW_PASS_RELATED)
		*net_id = source_net_id(f);
	return reason;
}

/* The reason for `f`; `*net_id` receives the network it counts in.
 *
 * The tracked-connection lookup comes first: it is what almost every packet
 * hits, and no connection to a local listener is ever tracked (those pass
 * below before any rule could track them), so asking it before the listener
 * lookup changes no verdict and spares established traffic a hash lookup. */
static __always_inline __u32 judge_client(struct __sk_buff *skb, const struct nw_flow *f,
					  __u32 *net_id)
{
	__u64 now = ct_now();
	struct nw_ct_origin origin = {};
	struct nw_ct_key ct = {};
	struct nw_ct_value *tracked;
	struct nw_net_value *net;
	__u32 gen;

	/* Errors first: their ports are 0, which a tracked ping of id 0
	 * would match. */
	if (f->icmp_kind == NW_ICMP_ERROR)
		return judge_client_icmp_error(skb, f, now, net_id);
	ct_key_forward(&ct, f);
	tracked = ct_touch(&ct, f, now);
	if (tracked) {
		*net_id = tracked->net_id;
		return NW_PASS_CT;
	}
	if (is_local_dns(f)) {
		dns_intercept_forget(f);
		return NW_PASS_LOCAL_DNS;
	}

	gen = active_gen();
	net = network_of(gen, &f->saddr);
	if (!net)
		return NW_DROP_NO_NETWORK;
	*net_id = net->net_id;
	/* Before any rule: a query never reaches another resolver. */
	if (dns_intercepts(f))
		return NW_PASS_DNS_INTERCEPT;
	origin.net_id = net->net_id;
	if (rule_allows(gen, net->net_id, f)) {
		ct_create(&ct, f, &origin, now);
		return NW_PASS_RULE;
	}
	/* Grant deadlines are exact: the precise clock, on new connections only. */
	if (grant_allows(net->net_id, f, bpf_ktime_get_ns(), &origin.name_id)) {
		origin.flags = NW_CT_GRANT;
		ct_create(&ct, f, &origin, now);
		return NW_PASS_GRANT;
	}
	/* Tracked so that its replies pass; its later packets then count
	 * as tracked (allowed), this first one as audit. */
	if (audit_allows(net)) {
		origin.flags = NW_CT_AUDIT;
		ct_create(&ct, f, &origin, now);
		return NW_PASS_AUDIT;
	}
	return NW_DROP_POLICY;
}

SEC("classifier")
int nw_from_client(struct __sk_buff *skb)
{
	struct nw_flow f = {};
	__u32 net_id = 0;
	int rc = parse_flow(skb, &f);

	if (rc == -NW_DROP_FRAGMENT)
		return verdict(&f, source_net_id(&f), NW_DROP_FRAGMENT);
	if (rc < 0)
		return verdict(&f, 0, -rc);
	switch (rc) {
	case NW_PARSE_ARP:
		return verdict(&f, 0, NW_PASS_NON_IP);
	case NW_PARSE_ND:
		return verdict(&f, 0, NW_PASS_ND);
	case NW_PARSE_OTHER_L2:
		return verdict(&f, 0, NW_DROP_ETHERTYPE); /* no bypass through other ethertypes */
	}
	rc = judge_client(skb, &f, &net_id);
	if (rc == NW_PASS_DNS_INTERCEPT && dns_intercept(skb, &f))
		rc = NW_DROP_MALFORMED;
	return forward_passed(skb, &f, rc, verdict(&f, net_id, rc));
}
