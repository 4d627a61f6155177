//! Kernel entries that lag the store: answers the kernel already allows
//! are written REFRESH_MARGIN_NS before that runs out.

use super::*;

const SEC: u64 = 1_000_000_000;

#[test]
fn an_answer_the_kernel_already_allows_is_written_before_that_runs_out() {
    let s = GrantStore::new(Recorder::default());
    s.learn_at(&[grant("a.example", "192.0.2.1", 443, 60 * SEC)], Some(0))
        .unwrap();
    assert_eq!(writes(&s), 1, "a new address is written at once");
    // Another name on the same address and ports: the kernel allows it
    // until 60 s, so it waits.
    s.learn_at(
        &[grant("b.example", "192.0.2.1", 443, 70 * SEC)],
        Some(10 * SEC),
    )
    .unwrap();
    assert_eq!(writes(&s), 1);
    assert_eq!(
        backend_entries(&s, "192.0.2.1").unwrap(),
        vec![(ports(443), 60 * SEC)]
    );
    assert!(s.allows("clients", "192.0.2.1".parse().unwrap(), 6, 443, 65 * SEC));
    // Written by the sweep REFRESH_MARGIN_NS before 60 s, not earlier.
    assert!(s.expire(55 * SEC - 1).is_empty());
    assert_eq!(writes(&s), 1);
    assert!(s.expire(55 * SEC).is_empty());
    assert_eq!(writes(&s), 2);
    assert_eq!(
        backend_entries(&s, "192.0.2.1").unwrap(),
        vec![(ports(443), 60 * SEC), (ports(443), 70 * SEC)]
    );
    // Nothing lags now: a later sweep writes nothing more.
    s.expire(59 * SEC);
    assert_eq!(writes(&s), 2);
}

#[test]
fn a_refreshed_name_waits_as_another_name_would() {
    let s = GrantStore::new(Recorder::default());
    s.learn_at(&[grant("a.example", "192.0.2.1", 443, 60 * SEC)], Some(0))
        .unwrap();
    s.learn_at(
        &[grant("a.example", "192.0.2.1", 443, 65 * SEC)],
        Some(5 * SEC),
    )
    .unwrap();
    assert_eq!(writes(&s), 1);
    s.expire(55 * SEC);
    assert_eq!(
        backend_entries(&s, "192.0.2.1").unwrap(),
        vec![(ports(443), 65 * SEC)]
    );
}

#[test]
fn an_answer_allowed_too_briefly_or_on_other_ports_is_written_at_once() {
    let s = GrantStore::new(Recorder::default());
    s.learn_at(&[grant("a.example", "192.0.2.1", 443, 10 * SEC)], Some(0))
        .unwrap();
    // Allowed until 10 s, less than REFRESH_MARGIN_NS after 6 s.
    s.learn_at(
        &[grant("b.example", "192.0.2.1", 443, 20 * SEC)],
        Some(6 * SEC),
    )
    .unwrap();
    assert_eq!(writes(&s), 2);
    // Long enough, but no written grant has these ports.
    s.learn_at(
        &[grant("c.example", "192.0.2.1", 8443, 30 * SEC)],
        Some(SEC),
    )
    .unwrap();
    assert_eq!(writes(&s), 3);
    // Without a clock, everything is written.
    s.learn(&[grant("d.example", "192.0.2.1", 443, 40 * SEC)])
        .unwrap();
    assert_eq!(writes(&s), 4);
}

#[test]
fn a_key_written_meanwhile_is_not_written_again_by_its_refresh() {
    let s = GrantStore::new(Recorder::default());
    s.learn_at(&[grant("a.example", "192.0.2.1", 443, 60 * SEC)], Some(0))
        .unwrap();
    s.learn_at(
        &[grant("b.example", "192.0.2.1", 443, 70 * SEC)],
        Some(10 * SEC),
    )
    .unwrap();
    // Other ports: written at once, and with them the waiting name.
    s.learn_at(
        &[grant("c.example", "192.0.2.1", 8443, 80 * SEC)],
        Some(11 * SEC),
    )
    .unwrap();
    assert_eq!(writes(&s), 2);
    assert_eq!(backend_entries(&s, "192.0.2.1").unwrap().len(), 3);
    s.expire(55 * SEC);
    assert_eq!(writes(&s), 2, "the refresh entry was stale");
}

#[test]
fn after_a_failed_write_nothing_waits_on_the_kernel() {
    let s = GrantStore::new(Recorder {
        fail: Some("192.0.2.1".parse().unwrap()),
        ..Recorder::default()
    });
    assert!(s
        .learn_at(&[grant("a.example", "192.0.2.1", 443, 60 * SEC)], Some(0))
        .is_err());
    // What the kernel holds is unknown: written (and failing) at once.
    assert!(s
        .learn_at(
            &[grant("b.example", "192.0.2.1", 443, 70 * SEC)],
            Some(10 * SEC)
        )
        .is_err());
}

#[test]
fn a_batch_writes_only_what_the_kernel_does_not_allow_yet() {
    let s = GrantStore::new(Recorder::default());
    s.learn_at(&[grant("a.example", "192.0.2.1", 443, 60 * SEC)], Some(0))
        .unwrap();
    let waits = [grant("b.example", "192.0.2.1", 443, 70 * SEC)];
    let new = [grant("c.example", "192.0.2.2", 443, 70 * SEC)];
    let results = s.learn_many_at(&[&waits, &new], Some(10 * SEC));
    assert!(results.iter().all(|r| r.is_ok()));
    assert_eq!(writes(&s), 2, "only the new address");
    assert_eq!(
        backend_entries(&s, "192.0.2.1").unwrap(),
        vec![(ports(443), 60 * SEC)]
    );
    assert!(backend_entries(&s, "192.0.2.2").is_some());
}
