//! The DNS path's observer allocates nothing per query once a network has
//! been seen (and nothing at all for the event bus without subscribers).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::Arc;
use std::time::Duration;

use neuwerk_core::events::{DnsObserver, DnsQueryView, DnsResult, FilteredView};
use neuwerk_core::special::SpecialClass;
use neuwerk_mgmt::{EventBus, Metrics, MgmtObserver};

struct Counting;

thread_local! {
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: forwards to the system allocator; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.with(|a| a.set(a.get() + 1));
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations(f: impl FnOnce()) -> u64 {
    let before = ALLOCS.with(Cell::get);
    f();
    ALLOCS.with(Cell::get) - before
}

#[test]
fn a_query_allocates_nothing_once_its_network_is_known() {
    let observer = MgmtObserver {
        metrics: Arc::new(Metrics::new("test")),
        bus: EventBus::default(),
    };
    let addrs = ["192.0.2.1".parse().unwrap()];
    let view = |network| DnsQueryView {
        client: "10.100.1.100".parse().unwrap(),
        network,
        name: "api.github.com",
        qtype: "A",
        result: DnsResult::Allowed,
        addrs: &addrs,
        total: Duration::from_micros(400),
        upstream: Some(Duration::from_micros(300)),
        grant_commit: Some(Duration::from_micros(20)),
    };
    let first = view(Some("clients"));
    assert!(
        allocations(|| observer.query(&first)) > 0,
        "first sight creates the series"
    );
    for network in [Some("clients"), Some("clients"), None, None] {
        let q = view(network);
        observer.query(&q); // first sight of "no network"
        assert_eq!(allocations(|| observer.query(&q)), 0, "{network:?}");
    }
    assert_eq!(
        allocations(|| observer.metrics.grant_learned("clients", 2)),
        0
    );
}

#[test]
fn a_filtered_address_allocates_nothing_once_its_class_is_known() {
    let observer = MgmtObserver {
        metrics: Arc::new(Metrics::new("test")),
        bus: EventBus::default(),
    };
    let view = FilteredView {
        client: "10.100.1.100".parse().unwrap(),
        network: "clients",
        name: "meta.example.com",
        addr: "169.254.169.254".parse().unwrap(),
        class: SpecialClass::LinkLocal,
        audit: false,
    };
    assert!(
        allocations(|| observer.filtered(&view)) > 0,
        "first sight creates the series"
    );
    assert_eq!(allocations(|| observer.filtered(&view)), 0);
}
