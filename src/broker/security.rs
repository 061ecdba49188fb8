//! The loaded password and ACL files, shared by all connections and replaced on SIGHUP.
//!
//! Connections take a snapshot ([`SecurityFiles::current`]) and keep using it; a reload swaps
//! in a new snapshot without touching existing connections. A connection that caches a
//! [`ClientAcl`] compares [`SecurityFiles::generation`] (one atomic load) before each check and
//! rebuilds the cache when it changed, so new ACL rules apply to connected clients at once.
//!
//! A reload that fails (unreadable file, ACL syntax error) keeps the previous snapshot and
//! returns the error for the log: a typo in the ACL must not open or close the broker.
//!
//! Credentials are the exception to "connections keep their snapshot": after a reload the
//! broker closes the connections whose password file entry is gone or changed
//! (`Snapshot::still_holds`, `Broker::reload_security`); the others stay connected.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use super::acl::{AclError, AclFile, ClientAcl};
use super::auth::{AuthError, PasswordFile, PasswordHash};

#[derive(Debug, thiserror::Error)]
pub enum SecurityError {
    #[error("password file: {0}")]
    Password(#[from] AuthError),
    #[error("ACL file: {0}")]
    Acl(#[from] AclError),
}

/// One consistent set of loaded files.
#[derive(Debug)]
pub struct Snapshot {
    /// `None` when no password file is configured.
    pub passwords: Option<PasswordFile>,
    /// `None` when no ACL file is configured: everything is allowed.
    pub acl: Option<AclFile>,
    pub generation: u64,
}

impl Snapshot {
    /// The ACL view for one client; `None` means no ACL file (allow all).
    pub fn client_acl(&self, client_id: &str, username: Option<&str>) -> Option<ClientAcl> {
        self.acl.as_ref().map(|a| a.for_client(client_id, username))
    }

    /// Does the password file still hold `entry` for `user`, the one a client authenticated
    /// against? A user removed, or given a new entry (a new password, or the same one hashed
    /// again: the password itself is not kept to tell), no longer does.
    pub fn still_holds(&self, user: &str, entry: &PasswordHash) -> bool {
        self.passwords
            .as_ref()
            .and_then(|p| p.entry(user))
            .is_some_and(|e| e == entry)
    }
}

#[derive(Debug)]
pub struct SecurityFiles {
    password_file: Option<PathBuf>,
    acl_file: Option<PathBuf>,
    current: RwLock<Arc<Snapshot>>,
    generation: AtomicU64,
}

fn load_files(
    password_file: Option<&Path>,
    acl_file: Option<&Path>,
    generation: u64,
) -> Result<Snapshot, SecurityError> {
    let passwords = password_file.map(PasswordFile::load).transpose()?;
    let acl = acl_file.map(AclFile::load).transpose()?;
    Ok(Snapshot {
        passwords,
        acl,
        generation,
    })
}

impl SecurityFiles {
    /// Load at startup; any error is fatal to the caller (as in mosquitto).
    pub fn load(
        password_file: Option<&Path>,
        acl_file: Option<&Path>,
    ) -> Result<SecurityFiles, SecurityError> {
        let snapshot = load_files(password_file, acl_file, 1)?;
        if let Some(p) = &snapshot.passwords {
            log::info!("{}: {} user(s) loaded", p.path().display(), p.len());
        }
        Ok(SecurityFiles {
            password_file: password_file.map(Path::to_path_buf),
            acl_file: acl_file.map(Path::to_path_buf),
            current: RwLock::new(Arc::new(snapshot)),
            generation: AtomicU64::new(1),
        })
    }

    pub fn current(&self) -> Arc<Snapshot> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Changes on every successful reload.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Re-read both files (SIGHUP). On error nothing changes and the error is returned.
    pub fn reload(&self) -> Result<u64, SecurityError> {
        // Read the files before taking the lock, so connections are never blocked on disk I/O.
        let mut snapshot = load_files(self.password_file.as_deref(), self.acl_file.as_deref(), 0)?;
        let mut current = self.current.write().unwrap_or_else(|e| e.into_inner());
        let next = current.generation + 1;
        snapshot.generation = next;
        *current = Arc::new(snapshot);
        self.generation.store(next, Ordering::Release);
        drop(current);
        log::info!("password/ACL files reloaded (generation {next})");
        Ok(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::auth::{set_entry, PasswordHash};
    use std::fs;

    fn hash(pw: &str) -> PasswordHash {
        PasswordHash::pbkdf2_with(pw.as_bytes(), b"0123456789ab".to_vec(), 101)
    }

    #[test]
    fn reload_applies_new_files_and_bumps_generation() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pw = dir.path().join("pw");
        let acl = dir.path().join("acl");
        set_entry(&pw, "alice", &hash("one")).expect("set");
        fs::write(&acl, "user alice\ntopic read a/#\n").expect("write");
        let files = SecurityFiles::load(Some(&pw), Some(&acl)).expect("load");
        let before = files.current();
        assert_eq!(files.generation(), 1);

        set_entry(&pw, "alice", &hash("two")).expect("set");
        fs::write(&acl, "user alice\ntopic write a/#\n").expect("write");
        assert_eq!(files.reload().expect("reload"), 2);
        assert_eq!(files.generation(), 2);

        let after = files.current();
        let p = after.passwords.as_ref().expect("passwords");
        assert!(p.check("alice", b"two") && !p.check("alice", b"one"));
        let c = after.client_acl("c", Some("alice")).expect("acl");
        assert!(c.can_publish("a/b") && !c.can_receive("a/b"));
        // A snapshot taken before the reload is unchanged (connections keep working).
        let old = before.client_acl("c", Some("alice")).expect("acl");
        assert!(old.can_receive("a/b") && !old.can_publish("a/b"));
    }

    #[test]
    fn credentials_hold_only_while_the_entry_is_unchanged() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pw = dir.path().join("pw");
        set_entry(&pw, "alice", &hash("one")).expect("set");
        set_entry(&pw, "bob", &hash("b")).expect("set");
        let files = SecurityFiles::load(Some(&pw), None).expect("load");
        let before = files.current();
        let alice = before.passwords.as_ref().unwrap().entry("alice").unwrap();
        let bob = before.passwords.as_ref().unwrap().entry("bob").unwrap();
        assert!(before.still_holds("alice", alice));

        // A new password for alice, bob untouched.
        set_entry(&pw, "alice", &hash("two")).expect("set");
        files.reload().expect("reload");
        let after = files.current();
        assert!(!after.still_holds("alice", alice));
        assert!(after.still_holds("bob", bob));

        // bob removed.
        fs::write(&pw, "").expect("empty file");
        files.reload().expect("reload");
        assert!(!files.current().still_holds("bob", bob));
    }

    #[test]
    fn failed_reload_keeps_previous_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let acl = dir.path().join("acl");
        fs::write(&acl, "topic read a/#\n").expect("write");
        let files = SecurityFiles::load(None, Some(&acl)).expect("load");
        fs::write(&acl, "topic read a/#\ntopic raed b\n").expect("write");
        let err = files.reload().expect_err("syntax error");
        assert!(
            err.to_string().contains("acl:2: invalid access type"),
            "{err}"
        );
        assert_eq!(files.generation(), 1);
        let c = files.current().client_acl("c", None).expect("acl");
        assert!(c.can_receive("a/x"));
    }

    #[test]
    fn no_files_configured_means_no_checks() {
        let files = SecurityFiles::load(None, None).expect("load");
        let s = files.current();
        assert!(s.passwords.is_none());
        assert!(s.client_acl("c", None).is_none());
    }

    #[test]
    fn startup_with_broken_acl_is_an_error_naming_the_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let acl = dir.path().join("acl");
        fs::write(&acl, "\nbogus line\n").expect("write");
        let err = SecurityFiles::load(None, Some(&acl)).expect_err("bad acl");
        assert!(
            err.to_string().contains("acl:2: unknown keyword \"bogus\""),
            "{err}"
        );
    }
}
