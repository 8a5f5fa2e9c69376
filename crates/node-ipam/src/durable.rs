//! Files ferry writes as root in directories it owns: private modes whatever the umask,
//! never through a symbolic link, and replaced so that a crash at any instant leaves the
//! old or the new content.

use std::fs::{self, DirBuilder, File, OpenOptions, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Mode of every directory ferry keeps state in.
pub const DIR_MODE: u32 = 0o700;
/// Mode of every file ferry writes there.
pub const FILE_MODE: u32 = 0o600;

/// Creates `dir` (and missing parents) private to this user, or checks an existing one:
/// a symbolic link, a non-directory or a directory owned by another user is refused (such
/// a directory lets that user plant links or files the next write follows); an own
/// directory open to others is made private.
pub fn ensure_private_dir(dir: &Path) -> io::Result<()> {
    DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)?;
    let meta = fs::symlink_metadata(dir)?;
    if meta.file_type().is_symlink() {
        return Err(io::Error::other(
            "is a symbolic link; ferry keeps state only in a real directory",
        ));
    }
    if !meta.is_dir() {
        return Err(io::Error::other("is not a directory"));
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if meta.uid() != me {
        return Err(io::Error::other(format!(
            "is owned by uid {}, not by uid {me} that runs ferry; refusing to keep state there",
            meta.uid()
        )));
    }
    if meta.mode() & 0o777 != DIR_MODE {
        fs::set_permissions(dir, Permissions::from_mode(DIR_MODE))?;
    }
    Ok(())
}

/// Opens `path` for reading without following a symbolic link in its last component.
pub fn open_nofollow(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(explain_loop)
}

/// Opens (creating) a file for locking: never through a link, mode 0600.
pub fn open_lock_file(path: &Path) -> io::Result<File> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(FILE_MODE)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(explain_loop)?;
    private(&f)?;
    Ok(f)
}

/// ELOOP from O_NOFOLLOW says "too many levels of symbolic links": say what it means here.
fn explain_loop(e: io::Error) -> io::Error {
    if e.raw_os_error() == Some(libc::ELOOP) {
        io::Error::other("is a symbolic link; refusing to follow it")
    } else {
        e
    }
}

/// Mode 0600 whatever the umask was when the file was made (or an older ferry made it).
fn private(f: &File) -> io::Result<()> {
    if f.metadata()?.mode() & 0o777 != FILE_MODE {
        f.set_permissions(Permissions::from_mode(FILE_MODE))?;
    }
    Ok(())
}

/// The prefix of `path`'s temporaries: `.<name>.`, so that they sort beside it.
fn temp_prefix(path: &Path) -> String {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    format!(".{name}.")
}

/// Whether a replacement is synced to disk before it is renamed into place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// The new content is on disk before the rename: after a power loss the file holds
    /// a whole version.
    Synced,
    /// No sync: for changes that need not survive a power loss (a release: every pod of
    /// the node is gone after one, and GC frees what a lost release leaves). A file a
    /// power loss left empty or zero-filled reads as an empty store.
    Unsynced,
}

/// Writes `bytes` to a new temporary file beside `path` (a unique name, created with
/// O_EXCL and O_NOFOLLOW, mode 0600), syncs it (`Durability::Synced`), and renames it
/// over `path` (a rename replaces a link at `path`, it never writes through one).
///
/// A process killed at any instant leaves the old or the new document (the rename is
/// atomic). The directory is not synced: a power loss ends every pod of the node, so the
/// old version is as correct afterwards as the new one (an allocation or release it lacks
/// belongs to a pod that no longer exists, and GC frees it), while each sync is a journal
/// commit that costs milliseconds on a node busy writing (image pulls; 8 ms measured on
/// the benchmark machine while other builds ran).
pub fn write_atomic(path: &Path, bytes: &[u8], durability: Durability) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let tmp = dir.join(format!(
        "{}{}-{nanos:08x}.tmp",
        temp_prefix(path),
        std::process::id()
    ));
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(FILE_MODE)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&tmp)?;
    let result = (|| {
        private(&f)?;
        f.write_all(bytes)?;
        if durability == Durability::Synced {
            f.sync_all()?;
        }
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Removes the temporaries a writer killed mid-write left beside `path`. Only for a
/// caller that excludes every other writer of `path` (the store's lock; the daemon as
/// node.json's only writer). Removing a link removes the link, never its target.
pub fn remove_stale_temps(path: &Path) {
    let dir = path.parent().unwrap_or(Path::new("."));
    let prefix = temp_prefix(path);
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        if name.starts_with(&prefix) && name.ends_with(".tmp") {
            let _ = fs::remove_file(e.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_whatever_the_umask() {
        let d = tempfile::tempdir().unwrap();
        let old = nix::sys::stat::umask(nix::sys::stat::Mode::empty());
        let dir = d.path().join("a/b");
        ensure_private_dir(&dir).unwrap();
        let path = dir.join("f.json");
        write_atomic(&path, b"{}", Durability::Synced).unwrap();
        nix::sys::stat::umask(old);
        assert_eq!(fs::metadata(&dir).unwrap().mode() & 0o777, 0o700);
        assert_eq!(fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 1);
    }

    #[test]
    fn links_are_refused_or_replaced_never_followed() {
        let d = tempfile::tempdir().unwrap();
        let victim = d.path().join("victim");
        fs::write(&victim, b"keep").unwrap();
        let link = d.path().join("link");
        std::os::unix::fs::symlink(&victim, &link).unwrap();
        assert!(open_nofollow(&link).is_err());
        assert!(open_lock_file(&link).is_err());
        std::os::unix::fs::symlink(d.path(), d.path().join("dirlink")).unwrap();
        assert!(ensure_private_dir(&d.path().join("dirlink")).is_err());
        write_atomic(&link, b"new", Durability::Unsynced).unwrap();
        assert_eq!(fs::read(&victim).unwrap(), b"keep");
        assert_eq!(fs::read(&link).unwrap(), b"new");
    }

    #[test]
    fn stale_temps_are_swept() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("s.json");
        fs::write(d.path().join(".s.json.1-0.tmp"), b"x").unwrap();
        fs::write(d.path().join("other"), b"x").unwrap();
        remove_stale_temps(&path);
        assert_eq!(fs::read_dir(d.path()).unwrap().count(), 1);
    }
}
