/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* The single exit of every program: count the reason, turn it into a TC action. */
#ifndef NEUWERK_VERDICT_H
#define NEUWERK_VERDICT_H

#include "maps.h"

static __always_inline void count_reason(__u32 reason)
{
	__u64 *n = bpf_map_lookup_elem(&nw_counters, &reason);

	if (n)
		*n += 1; /* per-CPU slot: no atomic needed */
}

/* `reason` is an enum nw_reason; NW_DROP_* reasons drop the packet. */
static __always_inline int verdict(__u32 reason)
{
	count_reason(reason);
	return reason >= NW_DROP_NO_NETWORK ? TC_ACT_SHOT : TC_ACT_OK;
}

#endif /* NEUWERK_VERDICT_H */
