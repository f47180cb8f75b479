//! The standalone source: every `*.yaml`, `*.yml` and `*.json` file in one directory, watched.
//!
//! What keeps serving when something is wrong:
//! - a file with a syntax error keeps its last good objects;
//! - an invalid object keeps its last good version (if it ever had one);
//! - everything else in the directory is applied as usual.
//!
//! Watching polls file metadata every [`POLL_INTERVAL`] and re-reads only changed files. Polling
//! works on every filesystem (bind mounts, ConfigMap volumes' symlink swaps, network mounts)
//! where inotify is unreliable, and a directory of configuration is small.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::objects::{Object, ObjectKey};
use super::store::{self, ConfigError, Format, ObjectStore, ParsedFile};

/// How often the directory is checked for changes (edits apply within about this long).
pub const POLL_INTERVAL: Duration = Duration::from_millis(200);

#[derive(Debug, Clone, PartialEq, Eq)]
struct FileStamp {
    modified: Option<SystemTime>,
    len: u64,
}

#[derive(Debug, Default)]
struct FileState {
    stamp: Option<FileStamp>,
    /// The text last parsed, to skip re-parsing when only the timestamp changed.
    text: String,
    /// The last parse of this file that had no syntax error.
    good: ParsedFile,
    /// The current parse (may be a syntax error).
    current: ParsedFile,
}

/// Reads and re-reads one directory into an [`ObjectStore`].
#[derive(Debug)]
pub struct DirSource {
    dir: PathBuf,
    files: BTreeMap<PathBuf, FileState>,
    /// Last valid version of every object ever seen, for objects that later turn invalid.
    last_good_objects: BTreeMap<ObjectKey, Object>,
    /// Whether a store was produced yet (the first poll always produces one).
    loaded: bool,
    /// The last directory-level error, reported once rather than on every poll.
    dir_error: Option<String>,
}

impl DirSource {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            files: BTreeMap::new(),
            last_good_objects: BTreeMap::new(),
            loaded: false,
            dir_error: None,
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Re-reads changed files. Returns the new store when anything changed, `None` otherwise.
    /// An unreadable directory is an error in the store, not a panic: the old objects stay.
    pub fn poll(&mut self) -> Option<ObjectStore> {
        let mut changed = false;
        let mut dir_error = None;
        let mut present = BTreeSet::new();
        match std::fs::read_dir(&self.dir) {
            Ok(entries) => {
                for entry in entries.flatten() {
                    let path = entry.path();
                    if format_of(&path).is_none() || !path.is_file() {
                        continue;
                    }
                    present.insert(path.clone());
                    changed |= self.refresh(&path);
                }
            }
            Err(e) => {
                dir_error = Some(ConfigError::Read {
                    file: self.dir.display().to_string(),
                    message: e.to_string(),
                });
                present.extend(self.files.keys().cloned());
            }
        }
        let before = self.files.len();
        self.files.retain(|path, _| present.contains(path));
        changed |= self.files.len() != before;
        let dir_error_text = dir_error.as_ref().map(|e| e.to_string());
        changed |= dir_error_text != self.dir_error;
        self.dir_error = dir_error_text;
        if !changed && self.loaded {
            return None;
        }
        self.loaded = true;
        let mut store = self.build_store();
        store.errors.extend(dir_error);
        Some(store)
    }

    /// Re-reads one file if its metadata changed. Returns whether its contents changed.
    fn refresh(&mut self, path: &Path) -> bool {
        let stamp = std::fs::metadata(path).ok().map(|m| FileStamp {
            modified: m.modified().ok(),
            len: m.len(),
        });
        let state = self.files.entry(path.to_path_buf()).or_default();
        if stamp.is_some() && state.stamp == stamp {
            return false;
        }
        state.stamp = stamp;
        let name = path.display().to_string();
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) => {
                state.current = ParsedFile {
                    errors: vec![ConfigError::Read {
                        file: name,
                        message: e.to_string(),
                    }],
                    syntax_error: true,
                    ..Default::default()
                };
                return true;
            }
        };
        if text == state.text
            && state.stamp.is_some()
            && !state
                .current
                .errors
                .iter()
                .any(|e| matches!(e, ConfigError::Read { .. }))
        {
            return false;
        }
        let format = format_of(path).unwrap_or(Format::Yaml);
        let parsed = store::parse_file(&name, &text, format);
        if !parsed.syntax_error {
            state.good = parsed.clone();
        }
        state.current = parsed;
        state.text = text;
        true
    }

    fn build_store(&mut self) -> ObjectStore {
        let mut store = ObjectStore::default();
        let mut origin: BTreeMap<ObjectKey, String> = BTreeMap::new();
        for (path, state) in &self.files {
            let file = path.display().to_string();
            store.errors.extend(state.current.errors.iter().cloned());
            for ignored in &state.current.ignored {
                tracing::debug!(%file, object = %ignored, "ignoring a kind tidegate does not act on");
            }
            // A syntax error keeps the file's last good objects.
            let source = if state.current.syntax_error {
                &state.good
            } else {
                &state.current
            };
            let kept = source
                .invalid
                .iter()
                .filter_map(|key| self.last_good_objects.get(key).cloned());
            for object in source.objects.iter().cloned().chain(kept) {
                let key = object.key();
                if let Some(first) = origin.get(&key) {
                    store.errors.push(ConfigError::Duplicate {
                        object: key.to_string(),
                        first: first.clone(),
                        second: file.clone(),
                    });
                    continue;
                }
                origin.insert(key.clone(), file.clone());
                store.objects.insert(key, object);
            }
        }
        for (key, object) in &store.objects {
            self.last_good_objects.insert(key.clone(), object.clone());
        }
        // Forget last-good versions of objects that were deleted, so a re-created invalid
        // object does not resurrect an old one.
        let mentioned: BTreeSet<ObjectKey> = self
            .files
            .values()
            .flat_map(|s| s.current.invalid.iter().chain(s.good.invalid.iter()).cloned())
            .chain(store.objects.keys().cloned())
            .collect();
        self.last_good_objects.retain(|k, _| mentioned.contains(k));
        store
    }
}

fn format_of(path: &Path) -> Option<Format> {
    match path.extension()?.to_str()? {
        "yaml" | "yml" => Some(Format::Yaml),
        "json" => Some(Format::Json),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) {
        std::fs::write(dir.join(name), text).expect("write test file");
    }

    const NS: &str = "apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n";
    const SVC: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: s, namespace: a}\nspec: {ports: [{port: 80}]}\n";

    #[test]
    fn syntax_error_keeps_last_good_file() {
        let tmp = tempfile::tempdir().expect("tempdir");
        write(tmp.path(), "ns.yaml", NS);
        write(tmp.path(), "svc.yaml", SVC);
        let mut source = DirSource::new(tmp.path());
        let store = source.poll().expect("first poll loads");
        assert_eq!(store.objects.len(), 2);
        assert!(source.poll().is_none(), "nothing changed");

        write(tmp.path(), "svc.yaml", "apiVersion: v1\nkind: [\n");
        let store = source.poll().expect("change noticed");
        assert_eq!(store.objects.len(), 2, "last good Service kept");
        assert!(matches!(store.errors[0], ConfigError::Parse { .. }));
    }

    #[test]
    fn invalid_object_keeps_last_good_version_and_deletion_removes_it() {
        let tmp = tempfile::tempdir().expect("tempdir");
        write(tmp.path(), "svc.yaml", SVC);
        let mut source = DirSource::new(tmp.path());
        source.poll().expect("loads");
        write(tmp.path(), "svc.yaml", &SVC.replace("port: 80", "port: x"));
        let store = source.poll().expect("change noticed");
        assert_eq!(store.objects.len(), 1, "last good Service kept");
        assert_eq!(store.errors.len(), 1);

        std::fs::remove_file(tmp.path().join("svc.yaml")).expect("remove");
        let store = source.poll().expect("deletion noticed");
        assert!(store.objects.is_empty());
    }

    #[test]
    fn duplicates_are_reported_and_first_wins() {
        let tmp = tempfile::tempdir().expect("tempdir");
        write(tmp.path(), "a.yaml", SVC);
        write(tmp.path(), "b.yml", &SVC.replace("port: 80", "port: 81"));
        let mut source = DirSource::new(tmp.path());
        let store = source.poll().expect("loads");
        assert_eq!(store.objects.len(), 1);
        assert!(matches!(store.errors[0], ConfigError::Duplicate { .. }));
    }
}
