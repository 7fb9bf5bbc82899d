//! What another layout's pins hold that this daemon cannot deliver.
//!
//! A daemon that takes over from pins of another map layout builds maps of
//! its own. The previous layout's ring buffer may still hold records its
//! kernel side took while no daemon read, and its per-trajectory drop
//! counters what it could not take. This build cannot decode the former
//! (the record format may differ between layouts), but it counts both, per
//! trajectory, so the restart `gap` says what was lost instead of losing it
//! silently: the ring's records by the head every record starts with in
//! every layout ([`event::STABLE_PREFIX_LEN`]).

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

use aya::maps::{Map, MapData, PerCpuHashMap, RingBuf};
use monitor_common::{event, names};

/// Counts taken from the previous layouts' maps.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Leftover {
    /// Per trajectory cgroup: records left in a previous layout's ring
    /// buffer that no program of this daemon recorded as well.
    pub queued: HashMap<u64, u64>,
    /// Per trajectory cgroup: a previous layout's kernel drop counter
    /// (summed over CPUs), as it stands.
    pub dropped: HashMap<u64, u64>,
    /// Records too short to carry the stable head.
    pub unattributed: u64,
}

impl Leftover {
    /// Reads `<dir>/maps/` of each previous layout directory. Call it once
    /// this daemon's bindings are in place and before the previous
    /// programs are detached: from its binding on, a trajectory's
    /// operations are recorded by this daemon's programs too, so a record
    /// of the previous ring taken at or after `bound_at[cgroup]` (boot
    /// time) duplicates one of this daemon's and is not counted. A cgroup
    /// without an entry (not bound by this daemon) has all its records
    /// counted.
    pub fn read(dirs: &[PathBuf], bound_at: &HashMap<u64, u64>) -> Leftover {
        let mut out = Leftover::default();
        for dir in dirs {
            let maps = dir.join("maps");
            let ring = maps.join(names::MAP_EVENTS);
            if ring.exists() {
                match open_ring(&ring) {
                    Ok((mut ring, bytes)) => {
                        // Bounded by what the ring can hold: the previous
                        // programs still run and may keep adding records,
                        // all of them duplicates by now.
                        let max = bytes / (8 + event::STABLE_PREFIX_LEN) + 1;
                        let mut n = 0;
                        while n < max {
                            let Some(item) = ring.next() else { break };
                            n += 1;
                            out.count(&item, bound_at);
                        }
                    }
                    Err(e) => {
                        tracing::warn!(map = %ring.display(), "cannot count the previous layout's queued records: {e}")
                    }
                }
            }
            let losses = maps.join(names::MAP_TRAJECTORY_LOSSES);
            if losses.exists() {
                match open_losses(&losses) {
                    Ok(map) => {
                        for (cgroup, per_cpu) in map.iter().flatten() {
                            *out.dropped.entry(cgroup).or_default() += per_cpu.iter().sum::<u64>();
                        }
                    }
                    Err(e) => {
                        tracing::warn!(map = %losses.display(), "cannot read the previous layout's drop counters: {e}")
                    }
                }
            }
        }
        out
    }

    fn count(&mut self, record: &[u8], bound_at: &HashMap<u64, u64>) {
        match stable_head(record) {
            Some((ts, cgroup)) => {
                if bound_at.get(&cgroup).is_none_or(|&bound| ts < bound) {
                    *self.queued.entry(cgroup).or_default() += 1;
                }
            }
            None => self.unattributed += 1,
        }
    }

    /// Records counted in [`Leftover::queued`] and [`Leftover::unattributed`].
    pub fn queued_total(&self) -> u64 {
        self.queued.values().sum::<u64>() + self.unattributed
    }
}

/// `(ts_boot_ns, trajectory_cgroup)` of a record of any layout.
fn stable_head(record: &[u8]) -> Option<(u64, u64)> {
    let head = record.get(..event::STABLE_PREFIX_LEN)?;
    let u64_at = |at: usize| u64::from_ne_bytes(head[at..at + 8].try_into().expect("8 bytes"));
    Some((u64_at(8), u64_at(16)))
}

/// The ring buffer and its size in bytes.
fn open_ring(path: &Path) -> Result<(RingBuf<MapData>, usize), aya::maps::MapError> {
    let data = MapData::from_pin(path)?;
    let bytes = data.info()?.max_entries() as usize;
    Ok((RingBuf::try_from(Map::from_map_data(data)?)?, bytes))
}

fn open_losses(path: &Path) -> Result<PerCpuHashMap<MapData, u64, u64>, aya::maps::MapError> {
    PerCpuHashMap::try_from(Map::from_map_data(MapData::from_pin(path)?)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(ts: u64, cgroup: u64) -> Vec<u8> {
        let mut r = vec![0u8; 96];
        r[..4].copy_from_slice(&2u32.to_ne_bytes());
        r[8..16].copy_from_slice(&ts.to_ne_bytes());
        r[16..24].copy_from_slice(&cgroup.to_ne_bytes());
        r
    }

    #[test]
    fn records_are_counted_per_trajectory_until_it_is_bound_here() {
        let bound_at = HashMap::from([(7, 1_000)]);
        let mut l = Leftover::default();
        for (ts, cgroup) in [(10, 7), (999, 7), (1_000, 7), (5_000, 7), (10, 9), (99_999, 9)] {
            l.count(&record(ts, cgroup), &bound_at);
        }
        l.count(&[0u8; 23], &bound_at);
        // cgroup 7: the two before its binding; cgroup 9 (never bound
        // here): both; the short record: unattributed.
        assert_eq!(l.queued, HashMap::from([(7, 2), (9, 2)]));
        assert_eq!(l.unattributed, 1);
        assert_eq!(l.queued_total(), 5);
    }
}
