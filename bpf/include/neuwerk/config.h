/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Load-time configuration: `const volatile` globals that userspace sets
 * with EbpfLoader::override_global before loading, so the verifier sees
 * constants and nothing is looked up per packet.
 */
#ifndef NEUWERK_CONFIG_H
#define NEUWERK_CONFIG_H

#include <linux/types.h>

/* Idle timeouts of tracked connections, ns. */
volatile const __u64 CT_TCP_IDLE_NS = 3600ULL * 1000000000ULL;
volatile const __u64 CT_TCP_CLOSING_NS = 10ULL * 1000000000ULL;
volatile const __u64 CT_UDP_IDLE_NS = 60ULL * 1000000000ULL;
volatile const __u64 CT_ICMP_IDLE_NS = 30ULL * 1000000000ULL;

/* Drop and audit events each CPU may report: a sustained rate and a burst.
 * 0 events/s reports none (all count as lost). */
volatile const __u64 EVENTS_PER_SEC = 1000;
volatile const __u64 EVENTS_BURST = 200;

/* `interfaces.forwarding`. 1 (direct): passed client traffic is forwarded
 * by the programs (lib/forward.h); 0 (kernel): by the kernel's stack,
 * through its netfilter hooks. */
volatile const __u32 DIRECT_FORWARD = 0;

/* The node's interfaces that are veths with their other end in another
 * namespace (0: not such a veth). Direct forwarding hands a packet routed
 * out of one straight to that end's ingress; the loader checks this over
 * rtnetlink, as the kernel drops a peer redirect that cannot be done. */
volatile const __u32 PEER_IFINDEX_INGRESS = 0;
volatile const __u32 PEER_IFINDEX_EGRESS = 0;

/* `dns.intercept`: DNS from a client to any address on port 53 goes to
 * the listener of its family (0.0.0.0 / :: with port 0: none), its
 * replies leave as if from the address asked (lib/intercept.h). */
volatile const __u32 DNS_INTERCEPT = 0;
volatile const __u32 DNS_LISTEN4_ADDR = 0;    /* network order */
volatile const __u32 DNS_LISTEN4_PORT = 0;    /* host order; 0: no IPv4 listener */
volatile const __u32 DNS_LISTEN6_ADDR[4] = {}; /* network order */
volatile const __u32 DNS_LISTEN6_PORT = 0;    /* host order; 0: no IPv6 listener */

#endif /* NEUWERK_CONFIG_H */
