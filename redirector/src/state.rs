//! What the daemon keeps across restarts, in one JSON file under
//! `[control] state_dir`, written atomically (temporary file, fsync, rename,
//! fsync of the directory): a crash leaves the old file or the new one.
//!
//! - **Service ids.** A service's index into the maps is allocated by name
//!   and kept here, so reordering the file, adding or removing services never
//!   moves a live flow or switch state onto another service. A removed
//!   service's id is only handed out again after its map entries were cleared
//!   (the caller does that before [`State::assign`] returns the id to anyone).
//! - **Operator intent** (overrides, drains), per service name, so a
//!   restart keeps them.
use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    io::Write as _,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::{
    control::proto::EventRecord,
    policy::{Intent, Nanos},
};

/// File name inside the state directory.
pub const STATE_FILE: &str = "state.json";
/// Bumped when the file's meaning changes.
const FORMAT: u32 = 1;

/// Errors reading or writing the state file.
#[derive(Debug, Error)]
pub enum StateError {
    /// Reading or writing failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The system's answer.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a state file of this version.
    #[error("{}: not a redirector state file of format {FORMAT}: {reason}; move it away to start afresh", path.display())]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// More services than ids.
    #[error("{count} services do not fit in max_services = {max}")]
    Full {
        /// Services asked for.
        count: usize,
        /// Ids available.
        max: u32,
    },
}

/// The persisted state.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    format: u32,
    /// Service name → map id.
    pub ids: BTreeMap<String, u32>,
    /// Service name → operator intent (only services with one).
    #[serde(default)]
    pub intents: BTreeMap<String, Intent>,
    /// Service name → its last transition (what `status` shows with the daemon down).
    #[serde(default)]
    pub last: BTreeMap<String, EventRecord>,
    /// Service name → each backend's flap history (`Up` → `Down` times,
    /// CLOCK_MONOTONIC: meaningful while the pins survive, i.e. until a
    /// reboot), so a restart does not reset flap damping.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub flaps: BTreeMap<String, [Vec<Nanos>; 2]>,
    /// When the daemon last stopped cleanly (ms since the Unix epoch).
    #[serde(default)]
    pub stopped_unix_ms: Option<u64>,
    /// An operator withdrew every VIP from the routing daemon
    /// (`redirector withdraw`): kept across restarts until `announce`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub withdrawn: Option<Withdrawal>,
    /// The `[announce]` the daemon last ran with: a restart without it (or
    /// with another device or table) removes the device a clean stop left.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub announced: Option<Announced>,
    /// `[announce] track_file` the daemon last ran with: `detach` writes
    /// FAULT there, a restart with another (or none) too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub track_file: Option<PathBuf>,
}

/// `[announce]` as the state file remembers it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Announced {
    /// The TUN device.
    pub device: String,
    /// The kernel table.
    pub table: u32,
}

/// Who withdrew the VIPs, when and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Withdrawal {
    /// The operator.
    pub who: String,
    /// Their reason.
    pub why: Option<String>,
    /// When (ms since the Unix epoch).
    pub unix_ms: u64,
}

/// What [`State::assign`] changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Assignment {
    /// Services that got a new id.
    pub added: Vec<(String, u32)>,
    /// Services that are gone, with the id they had (clear its map entries).
    pub removed: Vec<(String, u32)>,
}

impl State {
    /// Reads `dir/state.json`; a missing file is an empty state.
    pub fn load(dir: &Path) -> Result<State, StateError> {
        let path = dir.join(STATE_FILE);
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(State {
                    format: FORMAT,
                    ..State::default()
                });
            }
            Err(source) => return Err(StateError::Io { path, source }),
        };
        let state: State = serde_json::from_str(&text).map_err(|e| StateError::Format {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        if state.format != FORMAT {
            return Err(StateError::Format {
                path,
                reason: format!("format {}", state.format),
            });
        }
        let mut seen = BTreeSet::new();
        if let Some((name, id)) = state.ids.iter().find(|(_, id)| !seen.insert(**id)) {
            return Err(StateError::Format {
                path,
                reason: format!("id {id} of service {name:?} is given twice"),
            });
        }
        Ok(state)
    }

    /// Writes the state atomically into `dir` (created if missing, mode 0700).
    pub fn save(&self, dir: &Path) -> Result<(), StateError> {
        use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| StateError::Io { path, source }
        };
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io(dir))?;
        let path = dir.join(STATE_FILE);
        // One temporary file per write: concurrent writers never share one.
        static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = dir.join(format!(".{STATE_FILE}.{}.{n}.tmp", std::process::id()));
        let mut body = serde_json::to_vec_pretty(&State {
            format: FORMAT,
            ..self.clone()
        })
        .map_err(|e| io(&path)(std::io::Error::other(e)))?;
        body.push(b'\n');
        let written = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .and_then(|mut f| {
                f.write_all(&body)?;
                f.sync_all()
            })
            .map_err(io(&tmp))
            .and_then(|()| fs::rename(&tmp, &path).map_err(io(&path)));
        if written.is_err() {
            // A full or read-only disk must not fill up with temporary files.
            let _ = fs::remove_file(&tmp);
        }
        written?;
        fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))?;
        Ok(())
    }

    /// Gives every name in `names` an id below `max`: names already known
    /// keep theirs, new names get the lowest free id; names no longer listed
    /// are dropped (with their intent) and reported in `removed`.
    pub fn assign<'a>(
        &mut self,
        names: impl IntoIterator<Item = &'a str>,
        max: u32,
    ) -> Result<Assignment, StateError> {
        self.assign_avoiding(names, max, &BTreeSet::new())
    }

    /// [`State::assign`], never handing out an id in `avoid` (ids whose map
    /// entries are still being cleared).
    pub fn assign_avoiding<'a>(
        &mut self,
        names: impl IntoIterator<Item = &'a str>,
        max: u32,
        avoid: &BTreeSet<u32>,
    ) -> Result<Assignment, StateError> {
        // File order for new names: a fresh start numbers services as listed.
        let mut wanted: Vec<&str> = Vec::new();
        for n in names {
            if !wanted.contains(&n) {
                wanted.push(n);
            }
        }
        if !u32::try_from(wanted.len() + avoid.len()).is_ok_and(|n| n <= max) {
            return Err(StateError::Full {
                count: wanted.len() + avoid.len(),
                max,
            });
        }
        let mut out = Assignment::default();
        let gone: Vec<String> = self
            .ids
            .keys()
            .filter(|n| !wanted.contains(&n.as_str()))
            .cloned()
            .collect();
        for name in gone {
            if let Some(id) = self.ids.remove(&name) {
                out.removed.push((name.clone(), id));
            }
            self.intents.remove(&name);
            self.last.remove(&name);
        }
        // An id that was beyond a smaller max_services is reallocated.
        let too_high: Vec<String> = self
            .ids
            .iter()
            .filter(|(_, id)| **id >= max)
            .map(|(n, _)| n.clone())
            .collect();
        for name in too_high {
            if let Some(id) = self.ids.remove(&name) {
                out.removed.push((name, id));
            }
        }
        // Ids freed by this call are not handed out by it: their map entries
        // are cleared by the caller after it returns.
        let mut used: BTreeSet<u32> = self
            .ids
            .values()
            .copied()
            .chain(avoid.iter().copied())
            .chain(out.removed.iter().map(|(_, id)| *id))
            .collect();
        let mut next = 0u32;
        for name in wanted {
            if self.ids.contains_key(name) {
                continue;
            }
            while used.contains(&next) {
                next += 1;
            }
            used.insert(next);
            self.ids.insert(name.to_owned(), next);
            out.added.push((name.to_owned(), next));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    #![expect(clippy::unwrap_used, reason = "tests")]
    use super::*;

    #[test]
    fn ids_are_stable_across_reorder_add_and_remove() {
        let mut s = State::default();
        let a = s.assign(["web", "dns", "api"], 1024).unwrap();
        assert_eq!(a.added.len(), 3);
        let before = s.ids.clone();
        // Reordered: nothing changes.
        let a = s.assign(["api", "web", "dns"], 1024).unwrap();
        assert_eq!(a, Assignment::default());
        assert_eq!(s.ids, before);
        // dns removed, mail added: not with dns's id (its entries are still
        // being cleared); a later allocation may reuse it.
        let a = s.assign(["api", "web", "mail"], 1024).unwrap();
        assert_eq!(a.removed, vec![("dns".to_owned(), before["dns"])]);
        assert_eq!(a.added, vec![("mail".to_owned(), 3)]);
        assert_eq!(s.ids["web"], before["web"]);
        assert_eq!(s.ids["api"], before["api"]);
        let a = s.assign(["api", "web", "mail", "ntp"], 1024).unwrap();
        assert_eq!(a.added, vec![("ntp".to_owned(), before["dns"])]);
    }

    #[test]
    fn too_many_services_is_refused_and_changes_nothing() {
        let mut s = State::default();
        s.assign(["a"], 1).unwrap();
        let before = s.clone();
        assert!(matches!(
            s.assign(["a", "b"], 1),
            Err(StateError::Full { count: 2, max: 1 })
        ));
        assert_eq!(s, before);
    }

    #[test]
    fn saves_atomically_and_loads_back() {
        let dir = std::env::temp_dir().join(format!("redirector-state-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        assert_eq!(State::load(&dir).unwrap().ids.len(), 0);
        let mut s = State::default();
        s.assign(["web", "dns"], 1024).unwrap();
        s.save(&dir).unwrap();
        let back = State::load(&dir).unwrap();
        assert_eq!(back.ids, s.ids);
        fs::write(dir.join(STATE_FILE), "{ not json").unwrap();
        let e = State::load(&dir).unwrap_err().to_string();
        assert!(e.contains("state.json") && e.contains("move it away"), "{e}");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_failed_write_leaves_no_temporary_file_and_the_old_state() {
        let dir = std::env::temp_dir().join(format!("redirector-state-fail-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        // state.json is a directory: the rename over it fails.
        fs::create_dir_all(dir.join(STATE_FILE)).unwrap();
        let mut s = State::default();
        s.assign(["web"], 8).unwrap();
        assert!(s.save(&dir).is_err());
        let left: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(left, vec![std::ffi::OsString::from(STATE_FILE)]);
        fs::remove_dir_all(&dir).unwrap();
    }
}
