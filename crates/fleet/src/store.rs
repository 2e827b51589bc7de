//! Persistence of applied Services and their revisions under the state directory.
//!
//! One JSON file per service (`services/<namespace>.<name>.json`), written atomically (temporary
//! file, fsync, rename). At start every file is read; one that cannot be read or is not ours is
//! reported with its path and reason and left untouched — never silently dropped or overwritten.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use ikukantai_api::revision::Revision;
use ikukantai_api::service::Service;
use serde::{Deserialize, Serialize};

/// Marks files written by this store.
const FORMAT: &str = "ikukantai.dev/state/v1";

/// What is kept of one service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredService {
    /// File format marker.
    pub format: String,
    /// The Service as last applied (metadata.generation set).
    pub service: Service,
    /// Its revisions, oldest first.
    pub revisions: Vec<Revision>,
    /// What the fleet learnt of each revision, by name (absent in files of earlier versions).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub status: BTreeMap<String, RevisionRecordStatus>,
}

/// What is kept of a revision's life, so that a restart routes as before: a revision that was
/// ready stays the one traffic falls back to, and one that failed is not tried again unasked.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevisionRecordStatus {
    /// It has had a ready instance.
    #[serde(default)]
    pub ever_ready: bool,
    /// Why it could not start, if it failed before it was ever ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
}

/// A state file that could not be loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreProblem {
    /// The file.
    pub path: PathBuf,
    /// Why.
    pub reason: String,
}

/// The on-disk store.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

/// Store IO failed. Its message does not repeat its source's: print the chain.
#[derive(Debug, thiserror::Error)]
#[error("state store {path}")]
pub struct StoreError {
    /// The path involved.
    pub path: PathBuf,
    /// The IO error.
    pub source: std::io::Error,
}

impl Store {
    /// A store under `state_dir` (created if missing).
    pub fn open(state_dir: &Path) -> Result<Self, StoreError> {
        let dir = state_dir.join("services");
        fs::create_dir_all(&dir).map_err(|source| StoreError { path: dir.clone(), source })?;
        Ok(Self { dir })
    }

    fn path(&self, namespace: &str, name: &str) -> PathBuf {
        self.dir.join(format!("{namespace}.{name}.json"))
    }

    /// Every stored service, and every file that could not be read.
    pub fn load(&self) -> (Vec<StoredService>, Vec<StoreProblem>) {
        let mut ok = Vec::new();
        let mut problems = Vec::new();
        let entries = match fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) => {
                problems.push(StoreProblem { path: self.dir.clone(), reason: e.to_string() });
                return (ok, problems);
            }
        };
        let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        paths.sort();
        for path in paths {
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if name.starts_with('.') && name.ends_with(".tmp") {
                // An interrupted write: the real file (if any) is intact.
                continue;
            }
            let problem = |reason: String| StoreProblem { path: path.clone(), reason };
            if !name.ends_with(".json") {
                problems
                    .push(problem("not an ikukantai state file (expected <namespace>.<name>.json)".into()));
                continue;
            }
            match fs::read_to_string(&path) {
                Err(e) => problems.push(problem(e.to_string())),
                Ok(text) => match serde_json::from_str::<StoredService>(&text) {
                    Ok(s) if s.format == FORMAT => ok.push(s),
                    Ok(s) => {
                        problems.push(problem(format!("unknown format {:?} (expected {FORMAT})", s.format)))
                    }
                    Err(e) => problems.push(problem(format!("cannot be read: {e}"))),
                },
            }
        }
        (ok, problems)
    }

    /// Writes a service atomically.
    pub fn save(
        &self,
        service: &Service,
        revisions: &[Revision],
        status: &BTreeMap<String, RevisionRecordStatus>,
    ) -> Result<(), StoreError> {
        let stored = StoredService {
            format: FORMAT.into(),
            service: service.clone(),
            revisions: revisions.to_vec(),
            status: status.clone(),
        };
        let path = self.path(service.metadata.namespace(), service.metadata.name());
        let tmp =
            self.dir.join(format!(".{}.tmp", path.file_name().and_then(|n| n.to_str()).unwrap_or("state")));
        let err = |source| StoreError { path: path.clone(), source };
        let text = serde_json::to_vec_pretty(&stored).map_err(|e| err(std::io::Error::other(e)))?;
        let mut f = fs::File::create(&tmp).map_err(err)?;
        f.write_all(&text).map_err(err)?;
        f.sync_all().map_err(err)?;
        fs::rename(&tmp, &path).map_err(err)?;
        Ok(())
    }

    /// Removes a service's file.
    pub fn delete(&self, namespace: &str, name: &str) -> Result<(), StoreError> {
        let path = self.path(namespace, name);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(StoreError { path, source }),
        }
    }
}
