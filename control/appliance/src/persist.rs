//! The state file: every rule the API accepted, saved so that a restart (or a crash) loses
//! nothing that was answered with success, and read back at start.
//!
//! The file is JSON, `{"version":1,"loadbalancers":[...],"cistate":[...]}`, each item of
//! `loadbalancers` a loxilb `LoadbalanceEntry` exactly as `GET /netlox/v1/config/loadbalancer/all`
//! lists it, and each item of `cistate` a loxilb `CIStatusEntry`, so an operator can read it,
//! and any item can be replayed with `POST /config/loadbalancer` or `POST /config/cistate`.
//! `cistate` is left out while there is no HA state, so such a file is the same as before
//! HA state existed and an older oxlb still reads it. Likewise `bgp`, `{"global": ...,
//! "neighbors": [...]}` with loxilb's `BGPGlobalConfig` and `BGPNeigh` bodies, is left out
//! while there is no BGP configuration.
//!
//! A save replaces the file atomically: the new content goes to a temporary file in the same
//! directory, which is flushed to disk, renamed over the old file, and the directory is flushed
//! so the rename itself is durable. A crash at any point leaves either the old file or the new
//! one, never a mix. Loading never guesses: a file that does not parse or holds a rule the API
//! would refuse stops the start with a message naming the file, for the operator to decide.

use crate::state::DesiredState;
use oxlb_api::{
    to_cistatus_entry, to_entry, validate, validate_cistate, CiStatusEntry, LoadBalancerEntry,
};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// The name of the state file inside the state directory.
pub const FILE_NAME: &str = "state.json";
/// The format version this build writes and reads.
pub const VERSION: u32 = 1;
/// Where a save writes before the rename; a crash may leave it behind, loading ignores it.
const TEMP_NAME: &str = "state.json.tmp";
/// Locked while an oxlb uses the directory: two appliances saving into one file would each
/// overwrite what the other acknowledged. The kernel drops the lock when the process dies.
const LOCK_NAME: &str = "lock";

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StateFile {
    version: u32,
    loadbalancers: Vec<LoadBalancerEntry>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    cistate: Vec<CiStatusEntry>,
    /// Left out while there is no BGP configuration (see `crate::bgp::FileSection`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    bgp: Option<crate::bgp::FileSection>,
}

/// Read first, so a file of another version is refused for its version, not for a field this
/// build does not know.
#[derive(Deserialize)]
struct Header {
    version: u32,
}

/// Why the state could not be read or saved.
#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    /// The state directory does not exist and cannot be made.
    #[error("cannot create the state directory {path}: {source}")]
    CreateDir { path: String, source: io::Error },
    /// The state file exists but cannot be read.
    #[error("cannot read the state file {path}: {source}")]
    Read { path: String, source: io::Error },
    /// Another process holds the state directory's lock.
    #[error(
        "the state directory {path} is in use by another oxlb; give each oxlb its own \
         --state-dir"
    )]
    InUse { path: String },
    /// The state file's content is not a state oxlb can run.
    #[error(
        "the state file {path} is unusable: {problem}. Nothing was started: repair the file, or \
         move it away to start with no services"
    )]
    Invalid { path: String, problem: String },
    /// Writing, flushing or renaming the new file failed; the previous file is intact.
    #[error("cannot write the state file {path}: {source}")]
    Write { path: String, source: io::Error },
    /// The new file is in place but the directory entry could not be flushed: after a power
    /// loss either file may be found.
    #[error("cannot flush the state directory {path} after replacing the state file: {source}")]
    SyncDir { path: String, source: io::Error },
}

/// The state file of one appliance, which holds its directory's lock while it lives.
#[derive(Debug)]
pub struct StateStore {
    dir: PathBuf,
    path: PathBuf,
    temp: PathBuf,
    _lock: File,
}

impl StateStore {
    /// The store in `dir`, creating the directory if it is missing; refused while another
    /// store (in this or another process) has the directory.
    pub fn open(dir: &Path) -> Result<StateStore, PersistError> {
        let shown = || dir.display().to_string();
        fs::create_dir_all(dir).map_err(|source| PersistError::CreateDir {
            path: shown(),
            source,
        })?;
        let lock_err = |source| PersistError::Read {
            path: dir.join(LOCK_NAME).display().to_string(),
            source,
        };
        let lock = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(dir.join(LOCK_NAME))
            .map_err(lock_err)?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => return Err(PersistError::InUse { path: shown() }),
            Err(fs::TryLockError::Error(e)) => return Err(lock_err(e)),
        }
        Ok(StateStore {
            dir: dir.to_path_buf(),
            path: dir.join(FILE_NAME),
            temp: dir.join(TEMP_NAME),
            _lock: lock,
        })
    }

    /// The state file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The saved state; `None` if there is no state file yet.
    pub fn load(&self) -> Result<Option<DesiredState>, PersistError> {
        let bytes = match fs::read(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(PersistError::Read {
                    path: self.path.display().to_string(),
                    source,
                })
            }
        };
        decode(&bytes)
            .map(Some)
            .map_err(|problem| PersistError::Invalid {
                path: self.path.display().to_string(),
                problem,
            })
    }

    /// Replaces the state file with `state`, durably, before returning.
    pub fn save(&self, state: &DesiredState) -> Result<(), PersistError> {
        let write_err = |source| PersistError::Write {
            path: self.path.display().to_string(),
            source,
        };
        let bytes = encode(state);
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&self.temp)
            .map_err(write_err)?;
        file.write_all(&bytes).map_err(write_err)?;
        file.sync_all().map_err(write_err)?;
        drop(file);
        fs::rename(&self.temp, &self.path).map_err(write_err)?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|source| PersistError::SyncDir {
                path: self.dir.display().to_string(),
                source,
            })
    }
}

/// The file's bytes for `state`: pretty-printed, so an operator can read and diff it.
pub fn encode(state: &DesiredState) -> Vec<u8> {
    let file = StateFile {
        version: VERSION,
        loadbalancers: state.services().map(to_entry).collect(),
        cistate: state.ha().map(to_cistatus_entry).collect(),
        bgp: crate::bgp::to_file(state.bgp()),
    };
    let mut bytes =
        serde_json::to_vec_pretty(&file).expect("a state file always serializes to JSON");
    bytes.push(b'\n');
    bytes
}

/// The state in `bytes`, or what is wrong with it. Every rule is validated as the API
/// validates a request, and a key may appear only once.
pub fn decode(bytes: &[u8]) -> Result<DesiredState, String> {
    let header: Header =
        serde_json::from_slice(bytes).map_err(|e| format!("not a JSON state file: {e}"))?;
    if header.version != VERSION {
        return Err(format!(
            "version {} is not supported by this oxlb, which reads version {VERSION}",
            header.version
        ));
    }
    let file: StateFile =
        serde_json::from_slice(bytes).map_err(|e| format!("not a state file: {e}"))?;
    let mut state = DesiredState::default();
    let mut seen = BTreeSet::new();
    for (i, entry) in file.loadbalancers.iter().enumerate() {
        let spec = validate(entry).map_err(|e| format!("loadbalancers[{i}].{}: {e}", e.field()))?;
        if !seen.insert(spec.key) {
            return Err(format!(
                "loadbalancers[{i}] repeats the service {}",
                spec.key
            ));
        }
        state.upsert(spec);
    }
    for (i, entry) in file.cistate.iter().enumerate() {
        let ha = validate_cistate(entry).map_err(|e| format!("cistate[{i}].{}: {e}", e.field()))?;
        if let Some(first) = state.set_ha(ha) {
            return Err(format!(
                "cistate[{i}] repeats the instance {}",
                first.instance
            ));
        }
    }
    if let Some(section) = &file.bgp {
        *state.bgp_mut() = crate::bgp::from_file(section)?;
    }
    Ok(state)
}

#[cfg(test)]
mod tests {
    use super::*;
    use oxlb_api::ServiceSpec;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// A fresh, empty directory under the system's temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> TempDir {
            static NEXT: AtomicU32 = AtomicU32::new(0);
            let dir = std::env::temp_dir().join(format!(
                "oxlb-persist-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = fs::remove_dir_all(&dir);
            TempDir(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    use crate::state::test_spec as spec;

    fn state(specs: &[ServiceSpec]) -> DesiredState {
        let mut s = DesiredState::default();
        for sp in specs {
            s.upsert(sp.clone());
        }
        s
    }

    #[test]
    fn a_missing_directory_is_created_and_a_missing_file_is_no_state() {
        let tmp = TempDir::new();
        let dir = tmp.0.join("nested");
        let store = StateStore::open(&dir).unwrap();
        assert!(dir.is_dir());
        assert_eq!(store.load().unwrap(), None);
    }

    #[test]
    fn a_directory_in_use_is_refused_until_its_store_is_dropped() {
        let tmp = TempDir::new();
        let first = StateStore::open(&tmp.0).unwrap();
        let err = StateStore::open(&tmp.0).unwrap_err();
        assert!(matches!(err, PersistError::InUse { .. }), "{err}");
        assert!(err.to_string().contains("in use by another oxlb"), "{err}");
        drop(first);
        StateStore::open(&tmp.0).unwrap();
    }

    #[test]
    fn a_saved_state_loads_back_equal() {
        let tmp = TempDir::new();
        let store = StateStore::open(&tmp.0).unwrap();
        let s = state(&[spec(80, &[1, 2]), spec(443, &[3])]);
        store.save(&s).unwrap();
        assert_eq!(store.load().unwrap(), Some(s));
        assert!(!tmp.0.join(TEMP_NAME).exists(), "the temp file was left");
    }

    #[test]
    fn a_file_written_before_ipv6_loads_as_before_and_ipv6_rules_load_back_too() {
        let old = br#"{"version":1,"loadbalancers":[{"serviceArguments":{"externalIP":"198.18.100.1","port":80,"protocol":"tcp","inactiveTimeOut":1800,"name":"svc80"},"endpoints":[{"endpointIP":"198.18.31.1","targetPort":8080,"weight":1}]}]}"#;
        assert_eq!(decode(old).unwrap(), state(&[spec(80, &[1])]));

        let mut v6 = spec(81, &[1]);
        v6.key.external_ip = "fd00:100::1".parse().unwrap();
        v6.mode = oxlb_api::NatMode::FullNat;
        let mut ep6 = v6.endpoints[0];
        ep6.ip = "fd00:31::1".parse().unwrap();
        v6.endpoints.push(ep6);
        let s = state(&[spec(80, &[1]), v6]);
        assert_eq!(decode(&encode(&s)).unwrap(), s);
    }

    #[test]
    fn the_file_lists_services_as_the_api_does_under_a_version() {
        let s = state(&[spec(80, &[1])]);
        let v: serde_json::Value = serde_json::from_slice(&encode(&s)).unwrap();
        assert_eq!(v["version"], 1);
        let expected = serde_json::to_value(to_entry(&spec(80, &[1]))).unwrap();
        assert_eq!(v["loadbalancers"], serde_json::json!([expected]));
    }

    #[test]
    fn saving_again_replaces_the_whole_file() {
        let tmp = TempDir::new();
        let store = StateStore::open(&tmp.0).unwrap();
        store
            .save(&state(&[spec(80, &[1]), spec(81, &[1])]))
            .unwrap();
        let smaller = state(&[spec(82, &[2])]);
        store.save(&smaller).unwrap();
        assert_eq!(store.load().unwrap(), Some(smaller));
    }

    #[test]
    fn a_save_that_cannot_write_leaves_the_previous_file_intact() {
        let tmp = TempDir::new();
        let store = StateStore::open(&tmp.0).unwrap();
        let old = state(&[spec(80, &[1])]);
        store.save(&old).unwrap();
        // A directory where the temp file goes makes the write fail before the rename.
        fs::create_dir(tmp.0.join(TEMP_NAME)).unwrap();
        let err = store.save(&state(&[spec(81, &[2])])).unwrap_err();
        assert!(matches!(err, PersistError::Write { .. }), "{err}");
        assert_eq!(store.load().unwrap(), Some(old));
    }

    #[test]
    fn a_reader_racing_repeated_saves_always_sees_a_whole_old_or_new_file() {
        let tmp = TempDir::new();
        let store = StateStore::open(&tmp.0).unwrap();
        let many: Vec<ServiceSpec> = (1..=300).map(|p| spec(p, &[1, 2, 3])).collect();
        let a = state(&many);
        let b = state(&[spec(9, &[4])]);
        store.save(&a).unwrap();
        let path = store.path().to_path_buf();
        let stop = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|s| {
            let reader = s.spawn(|| {
                let mut reads = 0u32;
                while !stop.load(Ordering::Relaxed) {
                    let bytes = fs::read(&path).expect("the state file is always there");
                    let got = decode(&bytes).unwrap_or_else(|e| panic!("torn read: {e}"));
                    assert!(got == a || got == b, "a state that was never saved");
                    reads += 1;
                }
                reads
            });
            for i in 0..100 {
                store.save(if i % 2 == 0 { &b } else { &a }).unwrap();
            }
            stop.store(true, Ordering::Relaxed);
            assert!(reader.join().unwrap() > 0);
        });
    }

    #[test]
    fn a_crash_mid_save_leaves_a_temp_file_that_loading_ignores() {
        let tmp = TempDir::new();
        let store = StateStore::open(&tmp.0).unwrap();
        let old = state(&[spec(80, &[1])]);
        store.save(&old).unwrap();
        fs::write(tmp.0.join(TEMP_NAME), b"{\"version\":1,\"loadbal").unwrap();
        assert_eq!(store.load().unwrap(), Some(old.clone()));
        // And the next save simply overwrites it.
        store.save(&old).unwrap();
        assert_eq!(store.load().unwrap(), Some(old));
    }

    fn load_error(content: &[u8]) -> String {
        let tmp = TempDir::new();
        let store = StateStore::open(&tmp.0).unwrap();
        fs::write(store.path(), content).unwrap();
        let err = store.load().unwrap_err();
        assert!(matches!(err, PersistError::Invalid { .. }), "{err}");
        let msg = err.to_string();
        assert!(
            msg.contains(&store.path().display().to_string()),
            "the message does not name the file: {msg}"
        );
        msg
    }

    #[test]
    fn a_truncated_file_is_refused_naming_the_file() {
        let msg = load_error(b"{\"version\":1,\"loadbalancers\":[{\"serviceArg");
        assert!(msg.contains("not a JSON state file"), "{msg}");
    }

    #[test]
    fn an_empty_file_is_refused_not_taken_as_no_state() {
        load_error(b"");
    }

    #[test]
    fn another_version_is_refused_by_its_number() {
        let msg = load_error(b"{\"version\":2,\"loadbalancers\":[],\"future\":true}");
        assert!(msg.contains("version 2 is not supported"), "{msg}");
    }

    #[test]
    fn a_rule_the_api_would_refuse_is_refused_naming_its_position_and_field() {
        let mut v: serde_json::Value =
            serde_json::from_slice(&encode(&state(&[spec(80, &[1]), spec(81, &[1])]))).unwrap();
        v["loadbalancers"][1]["serviceArguments"]["port"] = 0.into();
        let msg = load_error(v.to_string().as_bytes());
        assert!(
            msg.contains("loadbalancers[1].serviceArguments.port"),
            "{msg}"
        );
    }

    fn with_ha(mut s: DesiredState) -> DesiredState {
        s.set_ha(oxlb_api::CiState {
            instance: "llb-inst0".to_owned(),
            role: oxlb_api::HaRole::Master,
            vip: Some("198.18.100.1".parse().unwrap()),
        });
        s
    }

    #[test]
    fn ha_state_is_saved_and_loaded_back_with_the_rules() {
        let tmp = TempDir::new();
        let store = StateStore::open(&tmp.0).unwrap();
        let s = with_ha(state(&[spec(80, &[1])]));
        store.save(&s).unwrap();
        assert_eq!(store.load().unwrap(), Some(s.clone()));
        let v: serde_json::Value = serde_json::from_slice(&encode(&s)).unwrap();
        assert_eq!(
            v["cistate"],
            serde_json::json!([{"instance": "llb-inst0", "state": "MASTER", "vip": "198.18.100.1"}])
        );
        // Only HA state, no rule: still saved and restored.
        let only = with_ha(DesiredState::default());
        store.save(&only).unwrap();
        assert_eq!(store.load().unwrap(), Some(only));
    }

    #[test]
    fn a_file_without_ha_state_has_no_cistate_key() {
        let v: serde_json::Value =
            serde_json::from_slice(&encode(&state(&[spec(80, &[1])]))).unwrap();
        assert!(v.get("cistate").is_none(), "{v}");
    }

    #[test]
    fn an_unknown_ha_state_or_a_repeated_instance_is_refused_naming_its_position() {
        let mut v: serde_json::Value =
            serde_json::from_slice(&encode(&with_ha(DesiredState::default()))).unwrap();
        v["cistate"][0]["state"] = "PRIMARY".into();
        let msg = load_error(v.to_string().as_bytes());
        assert!(msg.contains("cistate[0].state"), "{msg}");
        let one = serde_json::json!({"instance": "a", "state": "BACKUP"});
        let v =
            serde_json::json!({"version": 1, "loadbalancers": [], "cistate": [one.clone(), one]});
        let msg = load_error(v.to_string().as_bytes());
        assert!(msg.contains("cistate[1] repeats the instance a"), "{msg}");
    }

    #[test]
    fn a_service_listed_twice_is_refused() {
        let one = serde_json::to_value(to_entry(&spec(80, &[1]))).unwrap();
        let v = serde_json::json!({"version": 1, "loadbalancers": [one.clone(), one]});
        let msg = load_error(v.to_string().as_bytes());
        assert!(msg.contains("loadbalancers[1] repeats"), "{msg}");
    }
}
