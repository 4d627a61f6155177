/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Header parsing: Ethernet, IPv4/IPv6 (with extension headers), TCP, UDP,
 * ICMP/ICMPv6 -> struct nw_flow. The only file that reads packet data
 * through data/data_end; callers see a flow, never pointers.
 */
#ifndef NEUWERK_PARSE_H
#define NEUWERK_PARSE_H

#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/in.h>
#include <linux/tcp.h>
#include <linux/udp.h>

#include "common.h"

#ifndef ETH_P_ARP
#define ETH_P_ARP 0x0806
#endif

/* <linux/icmp.h> drags in libc socket headers that don't build for BPF;
 * the few ICMP facts needed here are spelled out instead. */
struct nw_icmphdr {
	__u8 type;
	__u8 code;
	__u16 checksum;
	__be16 id;  /* echo only */
	__be16 seq; /* echo only */
};

#define ICMP_ECHOREPLY 0
#define ICMP_DEST_UNREACH 3
#define ICMP_ECHO 8
#define ICMP_TIME_EXCEEDED 11
#define ICMP_PARAMETERPROB 12
#define ICMPV6_ECHO_REQUEST 128
#define ICMPV6_ECHO_REPLY 129

#define NW_IPV6_EXT_MAX 4 /* extension headers walked before giving up */

/* What kind of ICMP message a flow is; decides how it is tracked. */
enum nw_icmp_kind {
	NW_ICMP_NONE = 0,  /* not ICMP */
	NW_ICMP_ECHO_REQ,  /* tracked: sport = id, dport = 0 */
	NW_ICMP_ECHO_REPLY,/* reply: sport = 0, dport = id (reversed request) */
	NW_ICMP_ERROR,     /* carries the headers of the packet it is about */
	NW_ICMP_OTHER,
};

/* A parsed packet, ports in host order. */
struct nw_flow {
	union nw_addr saddr;
	union nw_addr daddr;
	__u16 sport;
	__u16 dport;
	__u8 proto;
	__u8 tcp_flags; /* TCP: the flags byte (FIN 0x01, SYN 0x02, RST 0x04) */
	__u8 icmp_kind;
	__u8 is_v6;
	__u32 l4_off;   /* offset of the L4 header, for ICMP error payloads */
	__u8 icmp_type; /* ICMP and ICMPv6: the header's type and code */
	__u8 icmp_code;
};

/* Results of parse_flow besides a drop reason (negative). */
#define NW_PARSE_IP 0
#define NW_PARSE_ARP 1     /* ARP: never blocked */
#define NW_PARSE_ND 2      /* IPv6 neighbour discovery / MLD: never blocked */
#define NW_PARSE_OTHER_L2 3

#define TCP_FLAG_FIN 0x01
#define TCP_FLAG_SYN 0x02
#define TCP_FLAG_RST 0x04
#define TCP_FLAG_ACK 0x10

/* A bounds check on packet data that the verifier can follow. */
#define PKT_AT(type, data, off, end)                                      \
	({                                                                \
		type *__p = (type *)((void *)(data) + (off));             \
		((void *)(__p + 1) > (void *)(end)) ? NULL : __p;         \
	})

static __always_inline int parse_ports(struct nw_flow *f, void *data, void *end)
{
	__u32 off = f->l4_off;

	if (f->proto == IPPROTO_TCP) {
		struct tcphdr *th = PKT_AT(struct tcphdr, data, off & 0xffff, end);

		if (!th)
			return -NW_DROP_MALFORMED;
		f->sport = bpf_ntohs(th->source);
		f->dport = bpf_ntohs(th->dest);
		f->tcp_flags = ((__u8 *)th)[13];
		return NW_PARSE_IP;
	}
	if (f->proto == IPPROTO_UDP) {
		struct udphdr *uh = PKT_AT(struct udphdr, data, off & 0xffff, end);

		if (!uh)
			return -NW_DROP_MALFORMED;
		f->sport = bpf_ntohs(uh->source);
		f->dport = bpf_ntohs(uh->dest);
		return NW_PARSE_IP;
	}
	if (f->proto == IPPROTO_ICMP || f->proto == IPPROTO_ICMPV6) {
		/* type, code, checksum, then id and sequence for echo */
		struct nw_icmphdr *ih = PKT_AT(struct nw_icmphdr, data, off & 0xffff, end);
		__u8 type;

		if (!ih)
			return -NW_DROP_MALFORMED;
		type = ih->type;
		f->icmp_type = type;
		f->icmp_code = ih->code;
		if (f->proto == IPPROTO_ICMPV6) {
			if (type >= 130 && type <= 137)
				return NW_PARSE_ND; /* MLD, RS, RA, NS, NA, redirect */
			if (type == 143)
				return NW_PARSE_ND; /* MLDv2 report */
			if (type == ICMPV6_ECHO_REQUEST)
				f->icmp_kind = NW_ICMP_ECHO_REQ;
			else if (type == ICMPV6_ECHO_REPLY)
				f->icmp_kind = NW_ICMP_ECHO_REPLY;
			else if (type >= 1 && type <= 4)
				f->icmp_kind = NW_ICMP_ERROR;
			else
				f->icmp_kind = NW_ICMP_OTHER;
		} else {
			if (type == ICMP_ECHO)
				f->icmp_kind = NW_ICMP_ECHO_REQ;
			else if (type == ICMP_ECHOREPLY)
				f->icmp_kind = NW_ICMP_ECHO_REPLY;
			else if (type == ICMP_DEST_UNREACH || type == ICMP_TIME_EXCEEDED ||
				 type == ICMP_PARAMETERPROB)
				f->icmp_kind = NW_ICMP_ERROR;
			else
				f->icmp_kind = NW_ICMP_OTHER;
		}
		if (f->icmp_kind == NW_ICMP_ECHO_REQ)
			f->sport = bpf_ntohs(ih->id);
		else if (f->icmp_kind == NW_ICMP_ECHO_REPLY)
			f->dport = bpf_ntohs(ih->id);
		return NW_PARSE_IP;
	}
	return NW_PARSE_IP; /* other protocols: judged by address, no ports */
}

static __always_inline int parse_ipv4(struct nw_flow *f, void *data, void *end, __u32 off)
{
	struct iphdr *ip = PKT_AT(struct iphdr, data, off, end);
	__u32 ihl;

	if (!ip || ip->version != 4)
		return -NW_DROP_MALFORMED;
	ihl = ip->ihl * 4;
	if (ihl < sizeof(*ip))
		return -NW_DROP_MALFORMED;
	addr_set_v4(&f->saddr, ip->saddr);
	addr_set_v4(&f->daddr, ip->daddr);
	f->proto = ip->protocol;
	/* Non-first fragments carry no ports; nothing to match them with.
	 * Their addresses are set: they count in a network, and upstream
	 * ones pass only when not addressed to a client. */
	if (ip->frag_off & bpf_htons(0x1fff))
		return -NW_DROP_FRAGMENT;
	f->l4_off = off + ihl;
	return parse_ports(f, data, end);
}

static __always_inline int parse_ipv6(struct nw_flow *f, void *data, void *end, __u32 off)
{
	struct ipv6hdr *ip6 = PKT_AT(struct ipv6hdr, data, off, end);
	__u8 nexthdr;
	int i;

	if (!ip6 || ip6->version != 6)
		return -NW_DROP_MALFORMED;
	addr_copy(&f->saddr, &ip6->saddr);
	addr_copy(&f->daddr, &ip6->daddr);
	nexthdr = ip6->nexthdr;
	off += sizeof(*ip6);

	for (i = 0; i < NW_IPV6_EXT_MAX; i++) {
		/* Hop-by-hop, routing and destination options share this
		 * layout; the fragment header starts the same way. */
		struct nw_ipv6_ext {
			__u8 nexthdr;
			__u8 hdrlen;
			__be16 frag_off; /* fragment header only */
		} *ext;

		if (nexthdr != IPPROTO_HOPOPTS && nexthdr != IPPROTO_ROUTING &&
		    nexthdr != IPPROTO_DSTOPTS && nexthdr != IPPROTO_FRAGMENT)
			break;
		ext = PKT_AT(struct nw_ipv6_ext, data, off & 0xffff, end);
		if (!ext)
			return -NW_DROP_MALFORMED;
		if (nexthdr == IPPROTO_FRAGMENT) {
			if (ext->frag_off & bpf_htons(0xfff8))
				return -NW_DROP_FRAGMENT;
			off += 8;
		} else {
			off += (ext->hdrlen + 1) * 8;
		}
		nexthdr = ext->nexthdr;
	}
	f->proto = nexthdr;
	f->is_v6 = 1;
	f->l4_off = off;
	return parse_ports(f, data, end);
}

/* Parses the frame of `skb` into `f`. Returns NW_PARSE_* or a negative
 * reason to drop. */
static __always_inline int parse_flow(struct __sk_buff *skb, struct nw_flow *f)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = PKT_AT(struct ethhdr, data, 0, end);

	if (!eth)
		return -NW_DROP_MALFORMED;
	if (eth->h_proto == bpf_htons(ETH_P_IP))
		return parse_ipv4(f, data, end, sizeof(*eth));
	if (eth->h_proto == bpf_htons(ETH_P_IPV6))
		return parse_ipv6(f, data, end, sizeof(*eth));
	if (eth->h_proto == bpf_htons(ETH_P_ARP))
		return NW_PARSE_ARP;
	return NW_PARSE_OTHER_L2;
}

/* Parses the packet quoted in an ICMP error into `inner` (its original
 * direction), reading through bpf_skb_load_bytes: this is a rare path and
 * the quote may lie beyond the linear area. */
static __always_inline int parse_icmp_quote(struct __sk_buff *skb, const struct nw_flow *outer,
					    struct nw_flow *inner)
{
	__u32 off = outer->l4_off + 8; /* ICMP header */
	__u16 ports[2];

	if (!outer->is_v6) {
		struct iphdr ip;

		if (bpf_skb_load_bytes(skb, off, &ip, sizeof(ip)) || ip.version != 4 || ip.ihl < 5)
			return -NW_DROP_MALFORMED;
		addr_set_v4(&inner->saddr, ip.saddr);
		addr_set_v4(&inner->daddr, ip.daddr);
		inner->proto = ip.protocol;
		off += ip.ihl * 4;
	} else {
		struct ipv6hdr ip6;

		if (bpf_skb_load_bytes(skb, off, &ip6, sizeof(ip6)) || ip6.version != 6)
			return -NW_DROP_MALFORMED;
		addr_copy(&inner->saddr, &ip6.saddr);
		addr_copy(&inner->daddr, &ip6.daddr);
		inner->proto = ip6.nexthdr; /* extension headers in quotes: not followed */
		off += sizeof(ip6);
	}
	if (inner->proto == IPPROTO_ICMP || inner->proto == IPPROTO_ICMPV6) {
		struct nw_icmphdr ih;
		__u8 echo = inner->proto == IPPROTO_ICMP ? ICMP_ECHO : ICMPV6_ECHO_REQUEST;

		/* An error about a ping: tracked like the request (sport = id). */
		if (bpf_skb_load_bytes(skb, off & 0xffff, &ih, sizeof(ih)))
			return -NW_DROP_MALFORMED;
		if (ih.type != echo)
			return -NW_DROP_ICMP_UNRELATED;
		inner->sport = bpf_ntohs(ih.id);
		inner->dport = 0;
		return NW_PARSE_IP;
	}
	if (inner->proto != IPPROTO_TCP && inner->proto != IPPROTO_UDP)
		return -NW_DROP_ICMP_UNRELATED;
	if (bpf_skb_load_bytes(skb, off & 0xffff, ports, sizeof(ports)))
		return -NW_DROP_MALFORMED;
	inner->sport = bpf_ntohs(ports[0]);
	inner->dport = bpf_ntohs(ports[1]);
	return NW_PARSE_IP;
}

#endif /* NEUWERK_PARSE_H */
