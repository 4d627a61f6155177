//! The names log: which network and which queried name each id in the
//! pinned maps stands for, kept beside them in a pinned map of pages
//! (`nw_names`), so that a restarted daemon can rebuild its grant store
//! (network, address, hostname, ports, deadline) from the grant map.
//!
//! Why pages: a hash entry per name with room for the longest name would
//! cost 512 bytes of kernel memory each (the allocator's size class for
//! a 256-byte value and its entry); in a page a name costs its length and
//! a 6-byte header. New names are appended to the page being filled and
//! that page is rewritten whole at the end of the batch: one syscall per
//! batch of answers that brought new names, none for names already known.
//!
//! Ids are never reused, so a record never changes meaning: a crash in the
//! middle of compaction leaves duplicates, never a wrong name.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use aya::maps::{HashMap as BpfHash, MapData};
use foldhash::fast::RandomState;
use neuwerk_abi as abi;

use crate::error::DataplaneError;

/// Bytes in front of each record's name: kind, length, id.
const HEADER: usize = 6;

/// A queried name's id and the compaction epoch in which it was last used.
#[derive(Debug, Clone, Copy)]
struct HostId {
    id: u32,
    used: u32,
}

/// What the log held when it was opened.
#[derive(Debug, Default)]
pub(crate) struct Restored {
    /// Network id -> name.
    pub networks: HashMap<u32, Arc<str>>,
    /// Hostname id -> name.
    pub hosts: HashMap<u32, Arc<str>, RandomState>,
}

/// The log, and the hostname ids it hands out.
pub(crate) struct NameLog {
    map: BpfHash<MapData, u32, abi::NamePage>,
    /// The page being filled, as it is (or will be) in the map.
    page: Box<abi::NamePage>,
    page_no: u32,
    /// Whether `page` holds records the map does not have yet.
    dirty: bool,
    /// Pages from this number on are the current generation of the log;
    /// those before it are deleted by the compaction that moved past them.
    first_page: u32,
    hosts: HashMap<Arc<str>, HostId, RandomState>,
    next_host: u32,
    /// Records appended since the last compaction.
    appended: u64,
    /// Hostnames the log held after the last compaction (or at open).
    kept: u64,
    /// Bumped by each compaction, see [`NameLog::begin_compaction`].
    epoch: u32,
    /// Whether a failed page write was already reported.
    warned: bool,
}

impl NameLog {
    /// Opens the log in `map`, reading every record it holds.
    pub(crate) fn open(
        map: BpfHash<MapData, u32, abi::NamePage>,
    ) -> Result<(NameLog, Restored), DataplaneError> {
        let mut restored = Restored::default();
        let mut pages: Vec<u32> = map.keys().filter_map(Result::ok).collect();
        pages.sort_unstable();
        let mut hosts = HashMap::default();
        let mut next_host = 1;
        for &no in &pages {
            let Ok(page) = map.get(&no, 0) else { continue };
            for (kind, id, name) in records(&page) {
                let name: Arc<str> = Arc::from(name);
                match kind {
                    abi::NAME_KIND_NETWORK => {
                        restored.networks.insert(id, name);
                    }
                    abi::NAME_KIND_HOSTNAME => {
                        next_host = next_host.max(id.saturating_add(1));
                        hosts.insert(name.clone(), HostId { id, used: 0 });
                        restored.hosts.insert(id, name);
                    }
                    _ => {}
                }
            }
        }
        let (first_page, last) = match (pages.first(), pages.last()) {
            (Some(&f), Some(&l)) => (f, l),
            _ => (0, 0),
        };
        // Appends go to a fresh page: the last one is never rewritten, so a
        // crash cannot tear a page that records in force live in.
        let kept = hosts.len() as u64;
        let log = NameLog {
            map,
            page: Box::default(),
            page_no: if pages.is_empty() { 0 } else { last + 1 },
            dirty: false,
            first_page,
            hosts,
            next_host,
            appended: 0,
            kept,
            epoch: 0,
            warned: false,
        };
        Ok((log, restored))
    }

    /// Records network `id`'s name (at its first use).
    pub(crate) fn network(&mut self, id: u32, name: &str) {
        self.append(abi::NAME_KIND_NETWORK, id, name);
    }

    /// The id of hostname `name`, handing out and recording a new one at
    /// its first use. A name the log cannot hold (over 255 bytes, which no
    /// DNS name is) gets id 0: unknown after a restart.
    pub(crate) fn host_id(&mut self, name: &str) -> u32 {
        let epoch = self.epoch;
        if let Some(h) = self.hosts.get_mut(name) {
            h.used = epoch;
            return h.id;
        }
        if name.len() > usize::from(u8::MAX) {
            return 0;
        }
        let id = self.next_host;
        // Wrapping after 4 billion names: ids of grants that old are long
        // gone, and an unknown id only costs a hostname after a restart.
        self.next_host = self.next_host.checked_add(1).unwrap_or(1);
        self.hosts
            .insert(Arc::from(name), HostId { id, used: epoch });
        self.append(abi::NAME_KIND_HOSTNAME, id, name);
        id
    }

    /// Writes the page being filled, if it holds records the map lacks.
    /// Called after each batch of appends, before the grants that name
    /// them are written.
    pub(crate) fn flush(&mut self) {
        if !self.dirty {
            return;
        }
        match self.map.insert(self.page_no, *self.page, 0) {
            Ok(()) => self.dirty = false,
            Err(e) => {
                // The grants are written all the same: only their names
                // would be unknown after a restart.
                if !self.warned {
                    self.warned = true;
                    tracing::warn!(
                        "cannot write the names log (nw_names page {}): {e}; \
                         grants learned now will show no hostname after a restart",
                        self.page_no
                    );
                }
            }
        }
    }

    fn append(&mut self, kind: u8, id: u32, name: &str) {
        let Ok(len) = u8::try_from(name.len()) else {
            return;
        };
        let need = HEADER + name.len();
        if self.page.used as usize + need > abi::NAME_PAGE_DATA {
            self.flush();
            self.page_no = self.page_no.wrapping_add(1);
            *self.page = abi::NamePage::default();
        }
        let at = self.page.used as usize;
        let rec = &mut self.page.data[at..at + need];
        rec[0] = kind;
        rec[1] = len;
        rec[2..HEADER].copy_from_slice(&id.to_le_bytes());
        rec[HEADER..].copy_from_slice(name.as_bytes());
        self.page.used += need as u32;
        self.dirty = true;
        self.appended += 1;
    }

    /// Whether the log has grown enough to be worth compacting: at least
    /// as many records appended since the last compaction as it kept then
    /// (the log has doubled), and at least `min` of them.
    pub(crate) fn wants_compaction(&self, min: u64) -> bool {
        self.appended >= min && self.appended >= self.kept
    }

    /// Starts a compaction: names used from now on are kept whatever the
    /// scan of the maps finds. Returns the epoch to pass to
    /// [`NameLog::compact`].
    pub(crate) fn begin_compaction(&mut self) -> u32 {
        self.epoch = self.epoch.wrapping_add(1);
        self.epoch
    }

    /// Drops every hostname that no id in `referenced` (found in the maps
    /// after [`NameLog::begin_compaction`] returned `epoch`) names and
    /// that was not used since; rewrites the log with the rest and the
    /// `networks`, then deletes the older pages. Returns the hostnames kept.
    pub(crate) fn compact(
        &mut self,
        epoch: u32,
        referenced: &HashSet<u32, RandomState>,
        networks: &[(u32, Arc<str>)],
    ) -> usize {
        self.hosts
            .retain(|_, h| h.used == epoch || referenced.contains(&h.id));
        let old_first = self.first_page;
        self.flush();
        self.page_no = self.page_no.wrapping_add(1);
        *self.page = abi::NamePage::default();
        self.first_page = self.page_no;
        for (id, name) in networks {
            self.append(abi::NAME_KIND_NETWORK, *id, name);
        }
        let hosts: Vec<(u32, Arc<str>)> = self
            .hosts
            .iter()
            .map(|(name, h)| (h.id, name.clone()))
            .collect();
        for (id, name) in &hosts {
            self.append(abi::NAME_KIND_HOSTNAME, *id, name);
        }
        self.flush();
        let mut no = old_first;
        while no != self.first_page {
            let _ = self.map.remove(&no);
            no = no.wrapping_add(1);
        }
        self.appended = 0;
        self.kept = hosts.len() as u64;
        hosts.len()
    }
}

/// The names of the hostname ids in `ids` that the log behind `fd` (a
/// second handle on `nw_names`) records: read from the pages, without the
/// interning lock that learning takes, since a record never changes.
pub(crate) fn hostnames_in(
    fd: &std::os::fd::OwnedFd,
    ids: &HashSet<u32, RandomState>,
) -> std::io::Result<HashMap<u32, Arc<str>, RandomState>> {
    let mut out = HashMap::default();
    if ids.is_empty() {
        return Ok(out);
    }
    crate::batch::walk_entries::<u32, abi::NamePage>(fd, |_, pages| {
        for page in pages {
            for (kind, id, name) in records(page) {
                if kind == abi::NAME_KIND_HOSTNAME && ids.contains(&id) {
                    out.entry(id).or_insert_with(|| Arc::from(name));
                }
            }
        }
    })?;
    Ok(out)
}

/// The (kind, id, name) records of a page; a torn or foreign record ends it.
fn records(page: &abi::NamePage) -> impl Iterator<Item = (u8, u32, &str)> {
    let data = &page.data[..(page.used as usize).min(abi::NAME_PAGE_DATA)];
    let mut at = 0;
    std::iter::from_fn(move || {
        let head = data.get(at..at + HEADER)?;
        let len = usize::from(head[1]);
        let id = u32::from_le_bytes([head[2], head[3], head[4], head[5]]);
        let name = std::str::from_utf8(data.get(at + HEADER..at + HEADER + len)?).ok()?;
        at += HEADER + len;
        Some((head[0], id, name))
    })
}

#[cfg(test)]
mod tests {
    use aya::maps::{IterableMap, Map};

    use super::*;
    use crate::scratch;

    fn log_map() -> BpfHash<MapData, u32, abi::NamePage> {
        let fd = scratch::map::<u32, abi::NamePage>(scratch::HASH, 1, 64);
        BpfHash::try_from(Map::HashMap(MapData::from_fd(fd).unwrap())).unwrap()
    }

    fn reopen(log: NameLog) -> (NameLog, Restored) {
        let fd = log.map.map().fd().as_fd().try_clone_to_owned().unwrap();
        let map = BpfHash::try_from(Map::HashMap(MapData::from_fd(fd).unwrap())).unwrap();
        NameLog::open(map).unwrap()
    }

    use std::os::fd::AsFd;

    #[test]
    fn names_survive_a_reopen_with_their_ids() {
        let (mut log, restored) = NameLog::open(log_map()).unwrap();
        assert!(restored.hosts.is_empty());
        log.network(1, "clients");
        let a = log.host_id("a.example.com");
        let b = log.host_id("b.example.com");
        assert_eq!(log.host_id("a.example.com"), a, "known names keep their id");
        assert_ne!(a, b);
        log.flush();
        let (mut log, restored) = reopen(log);
        assert_eq!(restored.networks[&1].as_ref(), "clients");
        assert_eq!(restored.hosts[&a].as_ref(), "a.example.com");
        assert_eq!(restored.hosts[&b].as_ref(), "b.example.com");
        assert_eq!(log.host_id("b.example.com"), b);
        let c = log.host_id("c.example.com");
        assert!(c > b, "new ids follow the restored ones");
    }

    #[test]
    fn pages_fill_and_follow_each_other() {
        let (mut log, _) = NameLog::open(log_map()).unwrap();
        let names: Vec<String> = (0..300)
            .map(|i| format!("host-{i:04}.example.com"))
            .collect();
        let ids: Vec<u32> = names.iter().map(|n| log.host_id(n)).collect();
        log.flush();
        assert!(log.page_no >= 1, "300 records take more than one page");
        let (_, restored) = reopen(log);
        for (id, name) in ids.iter().zip(&names) {
            assert_eq!(restored.hosts[id].as_ref(), name.as_str());
        }
    }

    #[test]
    fn compaction_keeps_what_is_referenced_or_recent() {
        let (mut log, _) = NameLog::open(log_map()).unwrap();
        log.network(1, "clients");
        let dead = log.host_id("dead.example.com");
        let kept = log.host_id("kept.example.com");
        log.flush();
        let epoch = log.begin_compaction();
        let recent = log.host_id("recent.example.com");
        let referenced: HashSet<u32, RandomState> = [kept].into_iter().collect();
        assert_eq!(log.compact(epoch, &referenced, &[(1, "clients".into())]), 2);
        assert!(!log.wants_compaction(1), "nothing appended since");
        log.host_id("new-1.example.com");
        assert!(!log.wants_compaction(1), "2 kept, 1 appended: not doubled");
        log.host_id("new-2.example.com");
        assert!(log.wants_compaction(1));
        assert!(!log.wants_compaction(3), "below the minimum");
        let fd = log.map.map().fd().as_fd().try_clone_to_owned().unwrap();
        let ids: HashSet<u32, RandomState> = [kept, dead, 999].into_iter().collect();
        let named = hostnames_in(&fd, &ids).unwrap();
        assert_eq!(named.len(), 1, "{named:?}");
        assert_eq!(named[&kept].as_ref(), "kept.example.com");
        let (_, restored) = reopen(log);
        assert!(!restored.hosts.contains_key(&dead));
        assert_eq!(restored.hosts[&kept].as_ref(), "kept.example.com");
        assert_eq!(restored.hosts[&recent].as_ref(), "recent.example.com");
        assert_eq!(restored.networks[&1].as_ref(), "clients");
    }

    #[test]
    fn a_torn_record_ends_its_page() {
        let mut page = abi::NamePage::default();
        page.data[..6].copy_from_slice(&[2, 3, 7, 0, 0, 0]);
        page.data[6..9].copy_from_slice(b"abc");
        page.data[9..15].copy_from_slice(&[2, 200, 8, 0, 0, 0]);
        page.used = 20;
        let got: Vec<_> = records(&page).collect();
        assert_eq!(got, vec![(2, 7, "abc")]);
    }
}
