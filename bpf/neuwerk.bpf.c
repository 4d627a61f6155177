/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * The dataplane object: every TC program in one compilation unit, so that
 * they share one set of maps (which userspace pins, with their links, so
 * that they outlive the daemon: crates/neuwerk-datapath/src/pins.rs).
 */
#include "tc_client.c"
#include "tc_upstream.c"
#include "tc_to_client.c"

char _license[] SEC("license") = "Dual BSD/GPL";
