//! The inode table (inode numbers <-> paths under the mount) and the listing cache: what the
//! kernel is told about names, kept as long as the metadata TTL allows.
//!
//! Keys are the object keys under the bucket; a directory's key is the prefix of its children,
//! ending in `/` (the root's is the mount's prefix, `""` for a whole bucket). Directories made
//! with `mkdir` and files being written exist only here until something is written under them,
//! so every listing merges them in.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

/// The root inode (FUSE's fixed number).
pub(crate) const ROOT: u64 = 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    File,
    Dir,
}

/// What a name in a directory is.
#[derive(Clone, Debug)]
pub(crate) struct Entry {
    pub kind: Kind,
    pub size: u64,
    pub mtime: SystemTime,
}

impl Entry {
    pub fn dir() -> Self {
        Self { kind: Kind::Dir, size: 0, mtime: SystemTime::UNIX_EPOCH }
    }

    pub fn file(size: u64, mtime: SystemTime) -> Self {
        Self { kind: Kind::File, size, mtime }
    }
}

pub(crate) struct Inode {
    pub parent: u64,
    pub name: String,
    pub key: String,
    pub entry: Entry,
    /// When `entry` was last confirmed by the pool.
    pub checked: Instant,
    /// The kernel's references (lookups not yet forgotten).
    lookups: u64,
    /// The version the last open read, so the next open of the same version keeps the page cache.
    pub opened_version: Option<String>,
}

/// One directory's children as last listed.
pub(crate) struct Listed {
    pub at: Instant,
    pub entries: Arc<BTreeMap<String, Entry>>,
}

pub(crate) struct Table {
    inodes: HashMap<u64, Inode>,
    names: HashMap<(u64, String), u64>,
    next: u64,
    /// Listings by directory key.
    dirs: HashMap<String, Listed>,
    /// Directories made with `mkdir`, by key: they are listed until the mount ends.
    virtual_dirs: BTreeSet<String>,
    /// Files being written (key -> bytes so far): listed, though not in the pool yet.
    writing: HashMap<String, u64>,
}

/// The directory a key is in and its name there (`a/b/` -> (`a/`, `b`); `a/b` -> (`a/`, `b`)).
pub(crate) fn split_key(key: &str) -> (&str, &str) {
    let trimmed = key.strip_suffix('/').unwrap_or(key);
    match trimmed.rfind('/') {
        Some(i) => (&key[..=i], &trimmed[i + 1..]),
        None => ("", trimmed),
    }
}

pub(crate) fn child_key(dir_key: &str, name: &str, kind: Kind) -> String {
    match kind {
        Kind::Dir => format!("{dir_key}{name}/"),
        Kind::File => format!("{dir_key}{name}"),
    }
}

impl Table {
    pub fn new(root_key: &str) -> Self {
        let root = Inode {
            parent: ROOT,
            name: String::new(),
            key: root_key.to_owned(),
            entry: Entry::dir(),
            checked: Instant::now(),
            lookups: 1,
            opened_version: None,
        };
        Self {
            inodes: HashMap::from([(ROOT, root)]),
            names: HashMap::new(),
            next: ROOT + 1,
            dirs: HashMap::new(),
            virtual_dirs: BTreeSet::new(),
            writing: HashMap::new(),
        }
    }

    pub fn get(&self, ino: u64) -> Option<&Inode> {
        self.inodes.get(&ino)
    }

    pub fn get_mut(&mut self, ino: u64) -> Option<&mut Inode> {
        self.inodes.get_mut(&ino)
    }

    /// The inode of `name` in `parent` if the kernel holds one.
    pub fn peek(&self, parent: u64, name: &str) -> Option<u64> {
        self.names.get(&(parent, name.to_owned())).copied()
    }

    /// The inode for `name` in `parent` (made if new), with one more kernel reference.
    pub fn intern(&mut self, parent: u64, name: &str, entry: Entry) -> u64 {
        let Some(dir_key) = self.inodes.get(&parent).map(|p| p.key.clone()) else {
            return 0;
        };
        let key = child_key(&dir_key, name, entry.kind);
        if let Some(&ino) = self.names.get(&(parent, name.to_owned()))
            && let Some(node) = self.inodes.get_mut(&ino)
            && node.entry.kind == entry.kind
        {
            node.entry = entry;
            node.checked = Instant::now();
            node.lookups += 1;
            return ino;
        }
        let ino = self.next;
        self.next += 1;
        let node = Inode {
            parent,
            name: name.to_owned(),
            key,
            entry,
            checked: Instant::now(),
            lookups: 1,
            opened_version: None,
        };
        self.inodes.insert(ino, node);
        self.names.insert((parent, name.to_owned()), ino);
        ino
    }

    /// The kernel dropped `n` references to `ino`.
    pub fn forget(&mut self, ino: u64, n: u64) {
        if ino == ROOT {
            return;
        }
        let Some(node) = self.inodes.get_mut(&ino) else { return };
        node.lookups = node.lookups.saturating_sub(n);
        if node.lookups > 0 {
            return;
        }
        let key = (node.parent, node.name.clone());
        self.inodes.remove(&ino);
        if self.names.get(&key) == Some(&ino) {
            self.names.remove(&key);
        }
    }

    /// A name that no longer exists (unlinked, removed, failed to upload): later lookups miss.
    pub fn detach(&mut self, parent: u64, name: &str) {
        self.names.remove(&(parent, name.to_owned()));
        let dir_key = self.inodes.get(&parent).map(|p| p.key.clone());
        if let Some(dir_key) = dir_key
            && let Some(l) = self.dirs.get_mut(&dir_key)
        {
            Arc::make_mut(&mut l.entries).remove(name);
        }
    }

    /// The listing of `dir_key` if younger than `ttl`.
    pub fn fresh_listing(&self, dir_key: &str, ttl: std::time::Duration) -> Option<Arc<BTreeMap<String, Entry>>> {
        self.dirs.get(dir_key).filter(|l| l.at.elapsed() < ttl).map(|l| l.entries.clone())
    }

    /// Stores a listing fetched from the pool, with this mount's own directories and files
    /// being written merged in; what it now holds.
    pub fn store_listing(
        &mut self,
        dir_key: &str,
        mut entries: BTreeMap<String, Entry>,
    ) -> Arc<BTreeMap<String, Entry>> {
        for v in &self.virtual_dirs {
            let (parent, name) = split_key(v);
            if parent == dir_key && !name.is_empty() {
                entries.insert(name.to_owned(), Entry::dir());
            }
        }
        for (k, size) in &self.writing {
            let (parent, name) = split_key(k);
            if parent == dir_key && !entries.get(name).is_some_and(|e| e.kind == Kind::Dir) {
                entries.insert(name.to_owned(), Entry::file(*size, SystemTime::now()));
            }
        }
        let entries = Arc::new(entries);
        self.dirs.insert(dir_key.to_owned(), Listed { at: Instant::now(), entries: entries.clone() });
        entries
    }

    /// Puts `name` into the cached listing of `dir_key` (a new file or directory of this mount).
    pub fn add_to_listing(&mut self, dir_key: &str, name: &str, entry: Entry) {
        if let Some(l) = self.dirs.get_mut(dir_key) {
            Arc::make_mut(&mut l.entries).insert(name.to_owned(), entry);
        }
    }

    pub fn add_virtual_dir(&mut self, key: &str) {
        self.virtual_dirs.insert(key.to_owned());
    }

    pub fn remove_virtual_dir(&mut self, key: &str) {
        self.virtual_dirs.remove(key);
    }

    /// Whether this mount has directories or files being written under `dir_key`.
    pub fn has_local_children(&self, dir_key: &str) -> bool {
        self.virtual_dirs.iter().any(|v| v != dir_key && v.starts_with(dir_key))
            || self.writing.keys().any(|k| k.starts_with(dir_key))
    }

    pub fn start_write(&mut self, key: &str) {
        self.writing.insert(key.to_owned(), 0);
    }

    pub fn is_writing(&self, key: &str) -> bool {
        self.writing.contains_key(key)
    }

    pub fn written(&self, key: &str) -> Option<u64> {
        self.writing.get(key).copied()
    }

    pub fn set_written(&mut self, key: &str, n: u64) {
        if let Some(w) = self.writing.get_mut(key) {
            *w = n;
        }
    }

    /// A write ended: `Some(entry)` when the object is now in the pool, `None` when it was
    /// given up (then the name is gone).
    pub fn end_write(&mut self, ino: u64, key: &str, done: Option<Entry>) {
        self.writing.remove(key);
        let (dir_key, name) = split_key(key);
        let (dir_key, name) = (dir_key.to_owned(), name.to_owned());
        match done {
            Some(entry) => {
                if let Some(node) = self.inodes.get_mut(&ino) {
                    node.entry = entry.clone();
                    node.checked = Instant::now();
                }
                self.add_to_listing(&dir_key, &name, entry);
            }
            None => {
                // Gone, or (a failed replacement) still the object it was: the pool says which.
                if let Some(parent) = self.inodes.get(&ino).map(|n| n.parent) {
                    self.names.remove(&(parent, name));
                }
                self.dirs.remove(&dir_key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_key_names_the_parent_and_the_child() {
        assert_eq!(split_key("a/b/"), ("a/", "b"));
        assert_eq!(split_key("a/b"), ("a/", "b"));
        assert_eq!(split_key("b"), ("", "b"));
        assert_eq!(split_key("b/"), ("", "b"));
        assert_eq!(child_key("a/", "b", Kind::Dir), "a/b/");
        assert_eq!(child_key("", "b", Kind::File), "b");
    }

    #[test]
    fn listings_merge_local_directories_and_files_being_written() {
        let mut t = Table::new("p/");
        t.add_virtual_dir("p/new/");
        t.start_write("p/f.bin");
        t.start_write("p/other/g.bin");
        let l = t.store_listing("p/", BTreeMap::from([("x".to_owned(), Entry::file(3, SystemTime::now()))]));
        let names: Vec<&str> = l.keys().map(String::as_str).collect();
        assert_eq!(names, ["f.bin", "new", "x"]);
        assert!(t.has_local_children("p/"));
        assert!(!t.has_local_children("p/new/"));
    }

    #[test]
    fn forget_drops_an_inode_at_zero_references_only() {
        let mut t = Table::new("");
        let a = t.intern(ROOT, "a", Entry::dir());
        assert_eq!(t.intern(ROOT, "a", Entry::dir()), a);
        t.forget(a, 1);
        assert!(t.get(a).is_some());
        t.forget(a, 1);
        assert!(t.get(a).is_none());
        assert_eq!(t.peek(ROOT, "a"), None);
        assert_eq!(t.get(a).map(|n| n.key.clone()), None);
        let b = t.intern(ROOT, "b", Entry::file(1, SystemTime::now()));
        assert_eq!(t.get(b).map(|n| n.key.as_str()), Some("b"));
    }
}
