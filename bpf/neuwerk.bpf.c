/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * The dataplane object: both TC programs in one compilation unit so they
 * share one set of maps without pinning (bpffs is not mounted inside
 * `ip netns exec`, and a pin would outlive the process).
 */
#include "tc_client.c"
#include "tc_upstream.c"

char _license[] SEC("license") = "Dual BSD/GPL";
