/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * The single exit of every program: count the reason and the packet in its
 * network, report drops and audit passes, turn the reason into a TC action.
 *
 * Which network a packet counts in (`net_id`, 0 = none):
 *   client side   - the network of the source; for tracked and related
 *                   packets the one stored in the conntrack entry;
 *   upstream side - the conntrack entry's for replies and related errors,
 *                   the network of the destination otherwise;
 *   both          - 0 for what is decided before any network lookup:
 *                   non-IP frames, neighbour discovery, DNS to neuwerk's
 *                   own listeners, malformed packets and ethertype drops.
 *                   Looking the network up only to count these would cost
 *                   an LPM lookup per DNS packet; malformed ones may have no
 *                   address to look up. (Client-side fragments do count in
 *                   their source's network: a rare path, worth the lookup.)
 */
#ifndef NEUWERK_VERDICT_H
#define NEUWERK_VERDICT_H

#include "maps.h"
#include "parse.h"
#include "stats.h"
#include "events.h"

static __always_inline void count_reason(__u32 reason)
{
	__u64 *n = bpf_map_lookup_elem(&nw_counters, &reason);

	if (n)
		*n += 1; /* per-CPU slot: no atomic needed */
}

/* Whether `reason` drops the packet. Listed, not a range: reasons are only
 * ever appended, so passes and drops interleave in the enum. */
static __always_inline int reason_drops(__u32 reason)
{
	switch (reason) {
	case NW_DROP_NO_NETWORK:
	case NW_DROP_POLICY:
	case NW_DROP_UNSOLICITED:
	case NW_DROP_MALFORMED:
	case NW_DROP_FRAGMENT:
	case NW_DROP_ETHERTYPE:
	case NW_DROP_ICMP_UNRELATED:
	case NW_DROP_ICMP_KIND:
	case NW_DROP_ICMP_SIZE:
	case NW_DROP_ICMP_RATE:
		return 1;
	}
	return 0;
}

/* `reason` is an enum nw_reason, `f` the packet as far as it was parsed. */
static __always_inline int verdict(const struct nw_flow *f, __u32 net_id, __u32 reason)
{
	int drop = reason_drops(reason);
	__u32 vclass = drop                     ? NW_VC_DROPPED
		       : reason == NW_PASS_AUDIT ? NW_VC_AUDIT_ALLOWED
						 : NW_VC_ALLOWED;

	count_reason(reason);
	count_net(net_id, f->proto, vclass);
	/* Other ethertypes have no addresses to report. */
	if (vclass != NW_VC_ALLOWED && reason != NW_DROP_ETHERTYPE)
		report_event(f, net_id, reason);
	return drop ? TC_ACT_SHOT : TC_ACT_OK;
}

#endif /* NEUWERK_VERDICT_H */
