/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Direct forwarding: a packet the policy passes is routed by the program
 * itself (the kernel's FIB lookup, TTL or hop limit, MACs) and sent out of
 * the egress interface (or, when that interface is a veth with its other
 * end in another namespace, straight into that end), skipping the kernel's
 * IP receive, routing and netfilter path for it. Whatever the lookup
 * cannot settle here (no route, no neighbour yet, too big, TTL running
 * out, the node's own addresses) goes to the stack as before, which
 * answers it properly.
 *
 * The kernel's netfilter hooks (and its reverse-path filter) do not see
 * packets forwarded here: a node whose own NAT or filter rules must see
 * every packet sets `forwarding: kernel` (DIRECT_FORWARD = 0).
 *
 * The header writes are direct, so the verifier makes a cloned skb's head
 * private before the program runs (as the stack's forwarding would too).
 */
#ifndef NEUWERK_FORWARD_H
#define NEUWERK_FORWARD_H

#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/ipv6.h>

#include "common.h"
#include "parse.h"

#define NW_AF_INET 2
#define NW_AF_INET6 10

/* RFC 1624 incremental update for a TTL decrement: the TTL is the high
 * byte of its 16-bit word, so the sum grows by 0x0100. */
static __always_inline void ipv4_ttl_dec(struct iphdr *ip)
{
	__u32 sum = (__u32)ip->check + (__u32)bpf_htons(0x0100);

	ip->check = (__sum16)(sum + (sum >= 0xffff));
	ip->ttl--;
}

/* Fills the lookup from the IP header; 0, or -1 to leave the packet to
 * the stack (its TTL or hop limit runs out here). */
static __always_inline int fib_params(struct __sk_buff *skb, struct bpf_fib_lookup *p,
				      const struct nw_flow *f)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;

	if (!f->is_v6) {
		struct iphdr *ip = PKT_AT(struct iphdr, data, sizeof(struct ethhdr), end);

		if (!ip || ip->ttl <= 1)
			return -1; /* the stack sends time-exceeded */
		p->family = NW_AF_INET;
		p->tos = ip->tos;
		p->ipv4_src = ip->saddr;
		p->ipv4_dst = ip->daddr;
	} else {
		struct ipv6hdr *ip6 = PKT_AT(struct ipv6hdr, data, sizeof(struct ethhdr), end);

		if (!ip6 || ip6->hop_limit <= 1)
			return -1;
		p->family = NW_AF_INET6;
		p->flowinfo = *(__be32 *)ip6 & bpf_htonl(0x0fffffff);
		__builtin_memcpy(p->ipv6_src, &ip6->saddr, 16);
		__builtin_memcpy(p->ipv6_dst, &ip6->daddr, 16);
	}
	p->l4_protocol = f->proto;
	p->sport = bpf_htons(f->sport); /* for multipath routes' hash */
	p->dport = bpf_htons(f->dport);
	/* tot_len 0: the kernel checks the skb itself against the egress MTU,
	 * GSO packets by their segments. */
	p->tot_len = 0;
	p->ifindex = skb->ingress_ifindex;
	return 0;
}

/* Writes the TTL or hop limit and MACs; 0, or -1 if the header moved out
 * of reach (never expected: it was read above). */
static __always_inline int rewrite_headers(struct __sk_buff *skb, const struct bpf_fib_lookup *p,
					   const struct nw_flow *f)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = PKT_AT(struct ethhdr, data, 0, end);

	if (!eth)
		return -1;
	if (!f->is_v6) {
		struct iphdr *ip = PKT_AT(struct iphdr, data, sizeof(*eth), end);

		if (!ip)
			return -1;
		ipv4_ttl_dec(ip);
	} else {
		struct ipv6hdr *ip6 = PKT_AT(struct ipv6hdr, data, sizeof(*eth), end);

		if (!ip6)
			return -1;
		ip6->hop_limit--;
	}
	__builtin_memcpy(eth->h_dest, p->dmac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, p->smac, ETH_ALEN);
	return 0;
}

/* The TC action for a packet the policy passes: a redirect to the egress
 * interface when direct forwarding is on and the kernel's tables settle
 * the route, otherwise TC_ACT_OK (the stack forwards it). */
static __always_inline int forward(struct __sk_buff *skb, const struct nw_flow *f)
{
	struct bpf_fib_lookup p = {};

	if (!DIRECT_FORWARD)
		return TC_ACT_OK;
	/* GSO super-packets (TCP bulk data from senders on this host's
	 * veths) stay with the stack: redirected, they cut 4-stream TCP
	 * throughput to about 0.8 of the stack's in the benchmark topology
	 * (0.85-0.92 handed to the veth peer), for reasons not yet pinned
	 * down. Their per-byte cost is small either way; the gain is on
	 * small packets. */
	if (skb->gso_segs > 1)
		return TC_ACT_OK;
	if (fib_params(skb, &p, f))
		return TC_ACT_OK;
	if (bpf_fib_lookup(skb, &p, sizeof(p), 0) != BPF_FIB_LKUP_RET_SUCCESS)
		return TC_ACT_OK;
	if (rewrite_headers(skb, &p, f))
		return TC_ACT_OK;
	/* A veth's other end in another namespace takes the packet at its
	 * ingress within this softirq: no transmit, no second backlog queue
	 * (the node's own qdisc on that veth is skipped with them). */
	if (p.ifindex == PEER_IFINDEX_INGRESS || p.ifindex == PEER_IFINDEX_EGRESS)
		return bpf_redirect_peer(p.ifindex, 0);
	return bpf_redirect(p.ifindex, 0);
}

/* Whether `reason` passes client traffic through the node, the packets
 * forward() may route; the node's own (its DNS listeners, anything not
 * addressed to a client) and non-IP frames always go to the stack. */
static __always_inline int reason_forwards(__u32 reason)
{
	switch (reason) {
	case NW_PASS_CT:
	case NW_PASS_RULE:
	case NW_PASS_GRANT:
	case NW_PASS_REPLY:
	case NW_PASS_RELATED:
	case NW_PASS_AUDIT:
		return 1;
	}
	return 0;
}

/* The TC action for `f`, given `reason` and verdict()'s action for it. */
static __always_inline int forward_passed(struct __sk_buff *skb, const struct nw_flow *f,
					  __u32 reason, int act)
{
	if (act != TC_ACT_OK || !reason_forwards(reason))
		return act;
	return forward(skb, f);
}

#endif /* NEUWERK_FORWARD_H */
