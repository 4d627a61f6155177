use std::sync::Mutex;

use super::write::{INLINE_ENTRIES, SCAN_DEDUP_MAX};
use super::*;
use crate::grants::GrantEntry;
use crate::policy::{PortRange, Proto};

type Written = HashMap<(String, IpAddr), Vec<(PortSet, u64)>>;

/// Records the backend's view: (network, addr) -> entries.
#[derive(Default)]
struct Recorder {
    map: Mutex<Written>,
    writes: std::sync::atomic::AtomicUsize,
    /// Calls of `write_many`.
    write_manys: std::sync::atomic::AtomicUsize,
    /// Writes of this address fail.
    fail: Option<IpAddr>,
}

impl GrantBackend for Recorder {
    fn write(
        &self,
        network: &str,
        addr: IpAddr,
        entries: &[GrantEntry<'_>],
    ) -> Result<(), GrantError> {
        if self.fail == Some(addr) {
            return Err(GrantError::Backend {
                addr,
                reason: "refused".into(),
            });
        }
        let v = entries
            .iter()
            .map(|e| (e.ports.clone(), e.expires_ns))
            .collect();
        self.map.lock().unwrap().insert((network.into(), addr), v);
        self.writes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }
    fn write_many(
        &self,
        items: &[(&str, IpAddr, &[GrantEntry<'_>])],
    ) -> Vec<Result<(), GrantError>> {
        self.write_manys
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        items
            .iter()
            .map(|&(network, addr, entries)| self.write(network, addr, entries))
            .collect()
    }
    fn remove(&self, network: &str, addr: IpAddr) -> Result<(), GrantError> {
        self.map.lock().unwrap().remove(&(network.into(), addr));
        Ok(())
    }
}

fn ports(p: u16) -> PortSet {
    PortSet::new(vec![PortRange {
        proto: Proto::Tcp,
        lo: p,
        hi: p,
    }])
}

fn grant(host: &str, addr: &str, port: u16, expires_ns: u64) -> Grant {
    Grant {
        network: "clients".into(),
        addr: addr.parse().unwrap(),
        hostname: host.into(),
        ports: ports(port),
        expires_ns,
    }
}

fn backend_entries(s: &GrantStore<Recorder>, addr: &str) -> Option<Vec<(PortSet, u64)>> {
    let map = s.backend().map.lock().unwrap();
    map.get(&("clients".to_string(), addr.parse().unwrap()))
        .cloned()
}

/// `n` grants of `host`, one per address of 10.`net`.0.0/16, due at `expires_ns`.
fn grants_in(net: u8, host: &str, n: usize, expires_ns: u64) -> Vec<Grant> {
    (0..n)
        .map(|i| {
            grant(
                host,
                &format!("10.{net}.{}.{}", i / 256, i % 256),
                443,
                expires_ns,
            )
        })
        .collect()
}

#[test]
fn learn_writes_backend_and_keeps_the_later_deadline() {
    let s = GrantStore::new(Recorder::default());
    s.learn(&[grant("a.example", "192.0.2.1", 443, 100)])
        .unwrap();
    s.learn(&[grant("a.example", "192.0.2.1", 443, 50)])
        .unwrap();
    assert_eq!(
        backend_entries(&s, "192.0.2.1").unwrap(),
        vec![(ports(443), 100)]
    );
    s.learn(&[grant("a.example", "192.0.2.1", 443, 200)])
        .unwrap();
    assert_eq!(
        backend_entries(&s, "192.0.2.1").unwrap(),
        vec![(ports(443), 200)]
    );
    assert_eq!(s.len(), 1);
}

#[test]
fn two_names_on_one_address_are_both_written() {
    let s = GrantStore::new(Recorder::default());
    s.learn(&[
        grant("a.example", "192.0.2.1", 443, 100),
        grant("b.example", "192.0.2.1", 80, 300),
    ])
    .unwrap();
    let e = backend_entries(&s, "192.0.2.1").unwrap();
    assert_eq!(e.len(), 2);
    assert!(s.allows("clients", "192.0.2.1".parse().unwrap(), 6, 80, 150));
    assert!(!s.allows("clients", "192.0.2.1".parse().unwrap(), 6, 443, 150));
}

#[test]
fn expire_removes_only_due_grants_and_reports_them() {
    let s = GrantStore::new(Recorder::default());
    s.learn(&[
        grant("a.example", "192.0.2.1", 443, 100),
        grant("b.example", "192.0.2.1", 80, 300),
    ])
    .unwrap();
    s.learn(&[grant("c.example", "192.0.2.2", 443, 100)])
        .unwrap();
    assert!(s.expire(99).is_empty());
    let gone = s.expire(100);
    assert_eq!(gone.len(), 2);
    assert_eq!(
        backend_entries(&s, "192.0.2.1").unwrap(),
        vec![(ports(80), 300)]
    );
    assert!(backend_entries(&s, "192.0.2.2").is_none());
    assert_eq!(s.len(), 1);
    assert_eq!(s.expire(1000).len(), 1);
    assert!(s.is_empty());
    assert!(s.snapshot().is_empty());
}

#[test]
fn expire_takes_every_due_grant_across_batches() {
    let s = GrantStore::new(Recorder::default());
    // Three full batches and a part one, all due; one more that is not.
    let due = 3 * EXPIRE_BATCH + 5;
    let grants = grants_in(0, "a.example", due, 100);
    s.learn(&grants).unwrap();
    s.learn(&[grant("b.example", "192.0.2.9", 443, 500)])
        .unwrap();
    assert_eq!(s.expire(100).len(), due);
    assert_eq!(s.len(), 1);
    assert_eq!(s.backend().map.lock().unwrap().len(), 1);
    // Exactly a whole number of batches due: the loop must still stop.
    let s = GrantStore::new(Recorder::default());
    s.learn(&grants[..EXPIRE_BATCH]).unwrap();
    assert_eq!(s.expire(100).len(), EXPIRE_BATCH);
    assert!(s.is_empty());
}

#[test]
fn a_refreshed_grant_outlives_its_first_deadline_and_expires_at_its_last() {
    let s = GrantStore::new(Recorder::default());
    for expires_ns in [100, 200, 300] {
        s.learn(&[grant("a.example", "192.0.2.1", 443, expires_ns)])
            .unwrap();
    }
    // Its first deadline comes up: it is still held, and written as it was.
    assert!(s.expire(150).is_empty());
    assert_eq!(s.len(), 1);
    assert_eq!(
        backend_entries(&s, "192.0.2.1").unwrap(),
        vec![(ports(443), 300)]
    );
    assert!(s.expire(299).is_empty());
    let gone = s.expire(300);
    assert_eq!(gone.len(), 1);
    assert_eq!(gone[0].expires_ns, 300);
    assert!(backend_entries(&s, "192.0.2.1").is_none());
    assert!(s.is_empty());
}

#[test]
fn a_revoked_grant_learned_again_keeps_its_new_deadline() {
    let s = GrantStore::new(Recorder::default());
    s.learn(&[grant("a.example", "192.0.2.1", 443, 100)])
        .unwrap();
    assert_eq!(s.retain(|_, _| None).len(), 1);
    assert!(s.is_empty());
    s.learn(&[grant("a.example", "192.0.2.1", 443, 500)])
        .unwrap();
    // The first grant's deadline comes up: it must not take the new one,
    // and its entry is dropped, not moved (or every revocation would leave
    // a duplicate for as long as the name is refreshed).
    assert!(s.expire(100).is_empty());
    assert_eq!(s.len(), 1);
    assert_eq!(s.lock().due.len(), 1);
    assert!(backend_entries(&s, "192.0.2.1").is_some());
    // Revoked and learned again at the same deadline: expired once.
    assert_eq!(s.retain(|_, _| None).len(), 1);
    s.learn(&[grant("a.example", "192.0.2.1", 443, 500)])
        .unwrap();
    assert_eq!(s.expire(500).len(), 1);
    assert!(s.is_empty());
    assert!(s.expire(u64::MAX).is_empty());
}

#[test]
fn moving_deadlines_counts_toward_a_batch_and_every_due_grant_still_goes() {
    let s = GrantStore::new(Recorder::default());
    // Refreshed grants whose first deadlines come up before the due ones.
    let n = 2 * EXPIRE_BATCH + 3;
    let refreshed = grants_in(1, "r.example", n, 10);
    s.learn(&refreshed).unwrap();
    let later: Vec<Grant> = refreshed
        .iter()
        .map(|g| Grant {
            expires_ns: 1000,
            ..g.clone()
        })
        .collect();
    s.learn(&later).unwrap();
    let due = grants_in(2, "d.example", n, 20);
    s.learn(&due).unwrap();
    assert_eq!(s.expire(20).len(), n);
    assert_eq!(s.len(), n);
    assert_eq!(s.expire(1000).len(), n);
    assert!(s.is_empty());
}

#[test]
fn retain_revokes_and_rewrites_changed_ports() {
    let s = GrantStore::new(Recorder::default());
    s.learn(&[
        grant("keep.example", "192.0.2.1", 443, 100),
        grant("drop.example", "192.0.2.2", 443, 100),
    ])
    .unwrap();
    let revoked = s.retain(|_, host| (host == "keep.example").then(|| ports(8443)));
    assert_eq!(revoked.len(), 1);
    assert_eq!(&*revoked[0].hostname, "drop.example");
    assert!(backend_entries(&s, "192.0.2.2").is_none());
    assert_eq!(
        backend_entries(&s, "192.0.2.1").unwrap(),
        vec![(ports(8443), 100)]
    );
    // The revoked grant's deadline is gone too: nothing left to expire there.
    assert_eq!(s.expire(1000).len(), 1);
}

#[test]
fn retain_judges_every_grant_across_batches() {
    let s = GrantStore::new(Recorder::default());
    // Three full batches and a part one; every third address loses its
    // grant, every other one gets new ports, the rest stay as they are.
    let n = 3 * RETAIN_BATCH + 5;
    let addr = |i: usize| format!("10.0.{}.{}", i / 256, i % 256);
    let grants: Vec<Grant> = (0..n)
        .map(|i| grant(&format!("h{i}.example"), &addr(i), 443, 100))
        .collect();
    s.learn(&grants).unwrap();
    let writes_before = writes(&s);
    let mut judged = 0;
    let revoked = s.retain(|_, host| {
        judged += 1;
        let i: usize = host[1..host.find('.').unwrap()].parse().unwrap();
        match i % 3 {
            0 => None,
            1 => Some(ports(8443)),
            _ => Some(ports(443)),
        }
    });
    assert_eq!(judged, n);
    assert_eq!(revoked.len(), n.div_ceil(3));
    assert_eq!(s.len(), n - n.div_ceil(3));
    for i in 0..n {
        let expected = match i % 3 {
            0 => None,
            1 => Some(vec![(ports(8443), 100)]),
            _ => Some(vec![(ports(443), 100)]),
        };
        assert_eq!(backend_entries(&s, &addr(i)), expected, "address {i}");
    }
    // Only the changed addresses were rewritten (removals are not writes).
    assert_eq!(
        writes(&s) - writes_before,
        (0..n).filter(|i| i % 3 == 1).count()
    );
}

#[test]
fn a_learner_gets_in_between_the_batches_of_a_reload() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let s = GrantStore::new(Recorder::default());
    let n = 8 * RETAIN_BATCH;
    let grants: Vec<Grant> = (0..n)
        .map(|i| {
            grant(
                "a.example",
                &format!("10.0.{}.{}", i / 256, i % 256),
                443,
                100,
            )
        })
        .collect();
    s.learn(&grants).unwrap();
    let judged = AtomicUsize::new(0);
    let retained = AtomicBool::new(false);
    std::thread::scope(|t| {
        t.spawn(|| {
            s.retain(|_, _| {
                judged.fetch_add(1, Ordering::SeqCst);
                // A slow judgement (10 µs): each batch holds the lock a while.
                let start = std::time::Instant::now();
                while start.elapsed() < std::time::Duration::from_micros(10) {}
                Some(ports(443))
            });
            retained.store(true, Ordering::SeqCst);
        });
        // The walk holds the lock now; learn waits for it.
        while judged.load(Ordering::SeqCst) == 0 {
            std::hint::spin_loop();
        }
        s.learn(&[grant("b.example", "192.0.2.1", 443, 100)])
            .unwrap();
        // Handed the lock at a batch's end, not after the whole walk.
        assert!(
            !retained.load(Ordering::SeqCst),
            "learn waited for the whole walk"
        );
        assert!(judged.load(Ordering::SeqCst) < n);
    });
}

#[test]
fn counts_held_grants_per_network_as_they_come_and_go() {
    let s = GrantStore::new(Recorder::default());
    let lab = |host: &str, addr: &str, expires_ns| Grant {
        network: "lab".into(),
        ..grant(host, addr, 443, expires_ns)
    };
    s.learn(&[
        grant("a.example", "192.0.2.1", 443, 100),
        grant("b.example", "192.0.2.1", 80, 300),
        lab("a.example", "192.0.2.1", 300),
    ])
    .unwrap();
    // Learned again: still one grant.
    s.learn(&[grant("a.example", "192.0.2.1", 443, 150)])
        .unwrap();
    let counts = |s: &GrantStore<Recorder>| -> Vec<(String, u64)> {
        s.count_by_network()
            .into_iter()
            .map(|(n, c)| (n.to_string(), c))
            .collect()
    };
    assert_eq!(counts(&s), [("clients".into(), 2), ("lab".into(), 1)]);
    assert_eq!(s.len(), 3);
    // A grant leaves the counts when the sweep takes it, and a refreshed
    // one not at its first deadline.
    assert!(s.expire(100).is_empty());
    assert_eq!(s.expire(200).len(), 1);
    assert_eq!(counts(&s), [("clients".into(), 1), ("lab".into(), 1)]);
    assert_eq!(
        s.retain(|n, _| (n == "clients").then(|| ports(80))).len(),
        1
    );
    assert_eq!(counts(&s), [("clients".into(), 1)]);
    assert_eq!(s.expire(300).len(), 1);
    assert!(counts(&s).is_empty());
    assert!(s.is_empty());
}

fn writes(s: &GrantStore<Recorder>) -> usize {
    s.backend()
        .writes
        .load(std::sync::atomic::Ordering::Relaxed)
}

#[test]
fn each_touched_address_is_written_once_per_learn() {
    // Small batches are de-duplicated by a scan, large ones by a set.
    for n in [3, 2 * SCAN_DEDUP_MAX] {
        let s = GrantStore::new(Recorder::default());
        let grants: Vec<Grant> = (0..n)
            .flat_map(|i| {
                let addr = format!("10.1.0.{}", i % 200);
                [
                    grant("a.example", &addr, 443, 100),
                    grant("b.example", &addr, 80, 200),
                ]
            })
            .collect();
        s.learn(&grants).unwrap();
        assert_eq!(writes(&s), n, "batch of {n} addresses");
        assert_eq!(s.len(), 2 * n);
        assert_eq!(backend_entries(&s, "10.1.0.1").unwrap().len(), 2);
    }
}

#[test]
fn many_names_on_one_address_are_all_written() {
    let s = GrantStore::new(Recorder::default());
    let n = INLINE_ENTRIES as u16 + 2;
    for k in 1..=n {
        let host = format!("h{k}.example");
        s.learn(&[grant(&host, "192.0.2.7", k, u64::from(k))])
            .unwrap();
        let e = backend_entries(&s, "192.0.2.7").unwrap();
        assert_eq!(e.len(), usize::from(k));
        assert!((1..=k).all(|p| e.contains(&(ports(p), u64::from(p)))));
    }
}

#[test]
fn relearning_with_other_ports_rewrites_them_and_keeps_one_deadline() {
    let s = GrantStore::new(Recorder::default());
    s.learn(&[grant("a.example", "192.0.2.1", 443, 100)])
        .unwrap();
    s.learn(&[grant("a.example", "192.0.2.1", 8443, 50)])
        .unwrap();
    assert_eq!(
        backend_entries(&s, "192.0.2.1").unwrap(),
        vec![(ports(8443), 100)]
    );
    assert_eq!(s.len(), 1);
    assert!(s.expire(99).is_empty());
    assert_eq!(s.expire(100).len(), 1);
}

#[test]
fn learn_many_writes_each_key_once_in_one_call() {
    // Small totals are de-duplicated by a scan, large ones by a set.
    for n in [2, SCAN_DEDUP_MAX] {
        let s = GrantStore::new(Recorder::default());
        // Every batch holds the same n addresses, under its own name.
        let batches: Vec<Vec<Grant>> = (0..3)
            .map(|b| {
                (0..n)
                    .map(|i| grant(&format!("h{b}.example"), &format!("10.2.0.{i}"), 443, 100))
                    .collect()
            })
            .collect();
        let refs: Vec<&[Grant]> = batches.iter().map(Vec::as_slice).collect();
        let results = s.learn_many(&refs);
        assert_eq!(results.len(), 3);
        assert!(results.iter().all(Result::is_ok));
        assert_eq!(writes(&s), n, "{n} addresses");
        assert_eq!(
            s.backend()
                .write_manys
                .load(std::sync::atomic::Ordering::Relaxed),
            1
        );
        assert_eq!(s.len(), 3 * n);
        // Each address is written with every batch's grant.
        assert_eq!(backend_entries(&s, "10.2.0.1").unwrap().len(), 3);
    }
}

#[test]
fn learn_many_fails_exactly_the_batches_with_a_failing_key() {
    let s = GrantStore::new(Recorder {
        fail: Some("192.0.2.66".parse().unwrap()),
        ..Recorder::default()
    });
    let ok1 = [grant("a.example", "192.0.2.1", 443, 100)];
    let bad1 = [
        grant("b.example", "192.0.2.2", 443, 100),
        grant("b.example", "192.0.2.66", 443, 100),
    ];
    let ok2 = [grant("c.example", "192.0.2.3", 443, 100)];
    let bad2 = [grant("d.example", "192.0.2.66", 443, 100)];
    let empty: [Grant; 0] = [];
    let results = s.learn_many(&[&ok1, &bad1, &ok2, &bad2, &empty]);
    let failed: Vec<bool> = results.iter().map(Result::is_err).collect();
    assert_eq!(failed, [false, true, false, true, false]);
    for r in [&results[1], &results[3]] {
        assert!(
            matches!(r, Err(GrantError::Backend { addr, .. }) if addr.to_string() == "192.0.2.66")
        );
    }
    // The other keys, the failing batch's included, were written; every
    // grant is held.
    for a in ["192.0.2.1", "192.0.2.2", "192.0.2.3"] {
        assert!(backend_entries(&s, a).is_some(), "{a}");
    }
    assert!(backend_entries(&s, "192.0.2.66").is_none());
    assert_eq!(s.len(), 5);
    assert!(s.learn_many(&[]).is_empty());
}

/// Kernel entries that lag the store (REFRESH_MARGIN_NS).
#[path = "store_lag_tests.rs"]
mod lag;

#[test]
fn adopted_grants_are_held_and_expire_without_being_written() {
    let s = GrantStore::new(Recorder::default());
    s.adopt(&[
        grant("a.example.com", "192.0.2.1", 443, 100),
        grant("b.example.com", "192.0.2.1", 80, 300),
    ]);
    assert_eq!(s.len(), 2);
    assert_eq!(
        s.backend()
            .writes
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    assert!(s.allows("clients", "192.0.2.1".parse().unwrap(), 6, 443, 50));
    let gone = s.expire(150);
    assert_eq!(gone.len(), 1);
    assert_eq!(&*gone[0].hostname, "a.example.com");
    // What is left of the address is written: the kernel must drop 443.
    assert_eq!(
        backend_entries(&s, "192.0.2.1"),
        Some(vec![(ports(80), 300)])
    );
}
