/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Which client network an address belongs to (longest prefix). */
#ifndef NEUWERK_NETWORK_H
#define NEUWERK_NETWORK_H

#include "maps.h"

static __always_inline __u32 active_gen(void)
{
	__u32 zero = 0;
	struct nw_state *st = bpf_map_lookup_elem(&nw_state, &zero);

	return st ? st->active_gen : 0;
}

/* The network of `addr` in generation `gen`, or NULL. */
static __always_inline struct nw_net_value *network_of(__u32 gen, const union nw_addr *addr)
{
	struct nw_net_key key = {
		.prefixlen = 32 + 128,
		.gen = gen,
	};

	addr_copy(&key.addr, addr);
	return bpf_map_lookup_elem(&nw_networks, &key);
}

#endif /* NEUWERK_NETWORK_H */
