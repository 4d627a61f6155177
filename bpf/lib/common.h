/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Includes, section names and small helpers shared by every program. */
#ifndef NEUWERK_COMMON_H
#define NEUWERK_COMMON_H

#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "neuwerk/abi.h"
#include "neuwerk/config.h"

#ifndef __always_inline
#define __always_inline inline __attribute__((always_inline))
#endif

#define likely(x) __builtin_expect(!!(x), 1)
#define unlikely(x) __builtin_expect(!!(x), 0)

/* Map sizes; userspace may override max_entries at load. */
#define NW_NETWORKS_MAX 4096
#define NW_RULES_MAX 65536
#define NW_PORTSETS_MAX 16384
#define NW_GRANTS_MAX (1 << 20)
#define NW_CT_MAX (1 << 18)
#define NW_LOCAL_MAX 64
#define NW_DNS_NAT_MAX 65536 /* client query sockets intercepted at once */
#define NW_NAME_PAGES_MAX 65536 /* 4 KiB each: room for about 7M names */
#define NW_EVENTS_RING_BYTES (256 << 10) /* ~4600 events of 56 bytes */

static __always_inline void addr_set_v4(union nw_addr *a, __u32 v4)
{
	a->w[0] = 0;
	a->w[1] = 0;
	a->w[2] = bpf_htonl(0x0000ffff);
	a->w[3] = v4;
}

static __always_inline void addr_copy(union nw_addr *dst, const void *src)
{
	__builtin_memcpy(dst, src, sizeof(*dst));
}

#endif /* NEUWERK_COMMON_H */
