/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Transparent DNS interception (`dns.intercept`): a client's DNS to any
 * address on port 53 (UDP or TCP) is rewritten to neuwerk's own listener
 * of its family on the way in, and the listener's replies to that client
 * socket are given the address the client asked back on the way out, so
 * the client's choice of resolver stops mattering and its query never
 * reaches that resolver. A table keyed by the client's socket remembers
 * what it asked, until that socket's port asks the listener itself;
 * nothing else is tracked: the proxy judges every query.
 */
#ifndef NEUWERK_INTERCEPT_H
#define NEUWERK_INTERCEPT_H

#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/in.h>

#include "maps.h"
#include "parse.h"

#define NW_DNS_PORT 53

/* The listener queries of `f`'s family go to; 0 when there is none. */
static __always_inline int dns_listener(const struct nw_flow *f, union nw_addr *addr, __u16 *port)
{
	if (!f->is_v6) {
		if (!DNS_LISTEN4_PORT)
			return 0;
		addr_set_v4(addr, DNS_LISTEN4_ADDR);
		*port = DNS_LISTEN4_PORT;
		return 1;
	}
	if (!DNS_LISTEN6_PORT)
		return 0;
	addr->w[0] = DNS_LISTEN6_ADDR[0];
	addr->w[1] = DNS_LISTEN6_ADDR[1];
	addr->w[2] = DNS_LISTEN6_ADDR[2];
	addr->w[3] = DNS_LISTEN6_ADDR[3];
	*port = DNS_LISTEN6_PORT;
	return 1;
}

/* Whether `f` is a client's DNS for another resolver, to intercept: its
 * family has a listener to send it to. */
static __always_inline int dns_intercepts(const struct nw_flow *f)
{
	if (!DNS_INTERCEPT || f->dport != NW_DNS_PORT)
		return 0;
	if (f->proto != IPPROTO_UDP && f->proto != IPPROTO_TCP)
		return 0;
	return f->is_v6 ? DNS_LISTEN6_PORT != 0 : DNS_LISTEN4_PORT != 0;
}

/* Offset of the L4 checksum of `f` (UDP or TCP). */
static __always_inline __u32 l4_csum_off(const struct nw_flow *f)
{
	return f->l4_off + (f->proto == IPPROTO_TCP ? 16 : 6);
}

/* Rewrites one end of `f` (the destination when `dst`, else the source)
 * to `to`:`to_port`, with the checksums; 0, or a helper's error. `f`
 * keeps the packet's original addresses. */
static __always_inline int rewrite_end(struct __sk_buff *skb, const struct nw_flow *f, int dst,
				       const union nw_addr *to, __u16 to_port)
{
	const union nw_addr *from = dst ? &f->daddr : &f->saddr;
	__be16 old_port = bpf_htons(dst ? f->dport : f->sport);
	__be16 new_port = bpf_htons(to_port);
	/* UDP over IPv4 may carry no checksum (0): it stays without one. */
	__u64 mangled = (f->proto == IPPROTO_UDP && !f->is_v6) ? BPF_F_MARK_MANGLED_0 : 0;
	__u32 csum = l4_csum_off(f);
	int err;

	if (!f->is_v6) {
		__u32 at = ETH_HLEN + (dst ? offsetof(struct iphdr, daddr) : offsetof(struct iphdr, saddr));

		err = bpf_l4_csum_replace(skb, csum, from->w[3], to->w[3],
					  BPF_F_PSEUDO_HDR | mangled | sizeof(__u32));
		err = err ?: bpf_l3_csum_replace(skb, ETH_HLEN + offsetof(struct iphdr, check), from->w[3],
						 to->w[3], sizeof(__u32));
		err = err ?: bpf_skb_store_bytes(skb, at, &to->w[3], sizeof(__u32), 0);
	} else {
		__u32 at = ETH_HLEN + (dst ? offsetof(struct ipv6hdr, daddr) : offsetof(struct ipv6hdr, saddr));
		union nw_addr a = *from, b = *to; /* bpf_csum_diff reads the stack */
		__s64 diff = bpf_csum_diff(a.w, sizeof(a), b.w, sizeof(b), 0);

		err = diff < 0 ? (int)diff : bpf_l4_csum_replace(skb, csum, 0, diff, BPF_F_PSEUDO_HDR);
		err = err ?: bpf_skb_store_bytes(skb, at, b.b, sizeof(b), 0);
	}
	err = err ?: bpf_l4_csum_replace(skb, csum, old_port, new_port, mangled | sizeof(__u16));
	return err ?: bpf_skb_store_bytes(skb, f->l4_off + (dst ? 2 : 0), &new_port, sizeof(new_port), 0);
}

static __always_inline void dns_nat_key(struct nw_dns_nat_key *k, const union nw_addr *client,
					__u16 port, __u8 proto)
{
	addr_copy(&k->client, client);
	k->port = port;
	k->proto = proto;
}

/* Client side: remembers what `f` asked and sends it to the listener; 0,
 * or -1 if the packet could not be rewritten. */
static __always_inline int dns_intercept(struct __sk_buff *skb, const struct nw_flow *f)
{
	struct nw_dns_nat_key k = {};
	struct nw_dns_nat_value v = {}, *seen;
	union nw_addr listener;
	__u16 port;

	if (!dns_listener(f, &listener, &port))
		return -1;
	dns_nat_key(&k, &f->saddr, f->sport, f->proto);
	seen = bpf_map_lookup_elem(&nw_dns_nat, &k);
	addr_copy(&v.resolver, &f->daddr);
	v.port = f->dport;
	/* A write only when the socket asks another resolver: TCP segments
	 * and retries find their entry as it is. */
	if (!seen || __builtin_memcmp(&seen->resolver, &v.resolver, sizeof(v.resolver)))
		bpf_map_update_elem(&nw_dns_nat, &k, &v, BPF_ANY);
	return rewrite_end(skb, f, 1, &listener, port) ? -1 : 0;
}

/* Client side: a query to the listener itself. A socket of the same
 * client port that asked another resolver before (ports are reused) is
 * forgotten, so the listener's replies to this one leave as they are. */
static __always_inline void dns_intercept_forget(const struct nw_flow *f)
{
	struct nw_dns_nat_key k = {};

	if (!DNS_INTERCEPT)
		return;
	dns_nat_key(&k, &f->saddr, f->sport, f->proto);
	bpf_map_delete_elem(&nw_dns_nat, &k);
}

/* Client side, outgoing: a listener's reply to an intercepted socket
 * leaves from the address that socket asked. */
static __always_inline void dns_intercept_reply(struct __sk_buff *skb, const struct nw_flow *f)
{
	struct nw_dns_nat_key k = {};
	struct nw_dns_nat_value *v;
	union nw_addr listener;
	__u16 port;

	if (!DNS_INTERCEPT || (f->proto != IPPROTO_UDP && f->proto != IPPROTO_TCP))
		return;
	if (!dns_listener(f, &listener, &port) || f->sport != port)
		return;
	if (__builtin_memcmp(&f->saddr, &listener, sizeof(listener)))
		return;
	dns_nat_key(&k, &f->daddr, f->dport, f->proto);
	v = bpf_map_lookup_elem(&nw_dns_nat, &k);
	if (v) {
		union nw_addr resolver = v->resolver;

		rewrite_end(skb, f, 0, &resolver, v->port);
	}
}

#endif /* NEUWERK_INTERCEPT_H */
