/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Per-network packet counters: what an operator graphs per network without
 * any per-packet work in userspace. Per-CPU slots, read and summed only
 * when userspace scrapes.
 */
#ifndef NEUWERK_STATS_H
#define NEUWERK_STATS_H

#include <linux/in.h>

#include "maps.h"

static __always_inline __u32 proto_class(__u8 proto)
{
	switch (proto) {
	case IPPROTO_TCP:
		return NW_PC_TCP;
	case IPPROTO_UDP:
		return NW_PC_UDP;
	case IPPROTO_ICMP:
	case IPPROTO_ICMPV6:
		return NW_PC_ICMP;
	}
	return NW_PC_OTHER;
}

/* `vclass` is an enum nw_verdict_class. */
static __always_inline void count_net(__u32 net_id, __u8 proto, __u32 vclass)
{
	struct nw_net_stats *s = bpf_map_lookup_elem(&nw_net_stats, &net_id);

	if (s && vclass < NW_VC_MAX)
		s->packets[proto_class(proto)][vclass] += 1; /* per-CPU slot: no atomic */
}

#endif /* NEUWERK_STATS_H */
