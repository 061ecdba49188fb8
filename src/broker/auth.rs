//! Password file in mosquitto's format, read as-is and written by `mqflux passwd`.
//!
//! One entry per line, `username:hash`, where `hash` is one of
//! - `$7$ITERATIONS$SALT_B64$HASH_B64`: PBKDF2-HMAC-SHA512 over the password with the salt,
//!   64-byte derived key (mosquitto >= 2.0 default, 101 iterations, 12-byte salt);
//! - `$6$SALT_B64$HASH_B64`: SHA-512 of `password || salt` (mosquitto <= 1.6 default).
//!
//! Line handling follows mosquitto 2.0 (`src/security_default.c`, `pwfile__parse` and
//! `unpwd__decode_passwords`): a line starting with `#` is a comment, a line without `:` is
//! ignored, username and hash are trimmed of surrounding whitespace (so CRLF files work), and an
//! entry whose hash cannot be decoded is logged and dropped while the rest of the file still
//! loads. We do the same, so a file that mosquitto starts with also starts mqflux, and one bad
//! entry locks out one user rather than all of them. Every skipped line is logged with
//! `file:line` (never with the hash) and kept in [`PasswordFile::skipped_lines`].
//!
//! Where mosquitto 2.0.11 is stricter than needed we accept more: any salt length (mosquitto
//! wants exactly 12 bytes; its newer `password_mosq.c` also takes 64) and padded or unpadded
//! base64.

use std::collections::HashMap;
use std::fs;
use std::io::{self, BufRead, Write};
use std::path::{Path, PathBuf};

use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine;
use sha2::{Digest, Sha512};
use subtle::ConstantTimeEq;

/// mosquitto_passwd's default PBKDF2 iteration count (`PW_DEFAULT_ITERATIONS`).
pub const DEFAULT_ITERATIONS: u32 = 101;
/// mosquitto_passwd's salt length in bytes.
pub const SALT_LEN: usize = 12;
/// Both hash types store a 64-byte SHA-512-sized digest.
const HASH_LEN: usize = 64;

/// Standard base64 alphabet (what OpenSSL's BIO base64 writes in mosquitto); decoding accepts
/// the `=` padding present or absent.
const B64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_encode_padding(true)
        .with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("invalid username {0:?}: {1}")]
    InvalidUsername(String, &'static str),
    #[error("invalid password: {0}")]
    InvalidPassword(&'static str),
    #[error("no password given: pass --password or write it as one line on stdin")]
    NoPassword,
    #[error("random salt: {0}")]
    Random(String),
}

fn io_err(path: &Path, source: io::Error) -> AuthError {
    AuthError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A decoded password hash from one entry.
#[derive(Clone, PartialEq, Eq)]
pub enum PasswordHash {
    /// `$6$`: SHA-512(password || salt).
    Sha512 { salt: Vec<u8>, hash: [u8; HASH_LEN] },
    /// `$7$`: PBKDF2-HMAC-SHA512(password, salt, iterations), 64-byte output.
    Pbkdf2Sha512 {
        iterations: u32,
        salt: Vec<u8>,
        hash: [u8; HASH_LEN],
    },
}

// Hand-written so that a stray `{:?}` in a log line never prints hash material.
impl std::fmt::Debug for PasswordHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PasswordHash::Sha512 { .. } => f.write_str("PasswordHash::Sha512(..)"),
            PasswordHash::Pbkdf2Sha512 { iterations, .. } => {
                write!(f, "PasswordHash::Pbkdf2Sha512(iterations={iterations}, ..)")
            }
        }
    }
}

impl PasswordHash {
    /// Hash `password` the way `mosquitto_passwd` does by default: `$7$`, 101 iterations,
    /// 12 random bytes of salt from the OS.
    pub fn new_pbkdf2(password: &[u8]) -> Result<PasswordHash, AuthError> {
        let mut salt = vec![0u8; SALT_LEN];
        getrandom::getrandom(&mut salt).map_err(|e| AuthError::Random(e.to_string()))?;
        Ok(PasswordHash::pbkdf2_with(
            password,
            salt,
            DEFAULT_ITERATIONS,
        ))
    }

    /// `$7$` with a caller-chosen salt and iteration count (deterministic; for tests and tools).
    pub fn pbkdf2_with(password: &[u8], salt: Vec<u8>, iterations: u32) -> PasswordHash {
        let hash = pbkdf2_sha512(password, &salt, iterations);
        PasswordHash::Pbkdf2Sha512 {
            iterations,
            salt,
            hash,
        }
    }

    /// Parse the part after `username:`. The error says which field is wrong, never its value.
    pub fn parse(encoded: &str) -> Result<PasswordHash, String> {
        if let Some(rest) = encoded.strip_prefix("$7$") {
            let mut fields = rest.split('$');
            let (Some(iter_s), Some(salt_s), Some(hash_s), None) =
                (fields.next(), fields.next(), fields.next(), fields.next())
            else {
                return Err("expected $7$ITERATIONS$SALT$HASH".into());
            };
            let iterations: u32 = iter_s
                .parse()
                .ok()
                .filter(|&n| n >= 1)
                .ok_or_else(|| "iteration count is not a positive integer".to_string())?;
            let salt = decode_salt(salt_s)?;
            let hash = decode_hash(hash_s)?;
            Ok(PasswordHash::Pbkdf2Sha512 {
                iterations,
                salt,
                hash,
            })
        } else if let Some(rest) = encoded.strip_prefix("$6$") {
            let mut fields = rest.split('$');
            let (Some(salt_s), Some(hash_s), None) = (fields.next(), fields.next(), fields.next())
            else {
                return Err("expected $6$SALT$HASH".into());
            };
            Ok(PasswordHash::Sha512 {
                salt: decode_salt(salt_s)?,
                hash: decode_hash(hash_s)?,
            })
        } else if encoded.is_empty() {
            Err("missing password hash".into())
        } else {
            Err(
                "unknown hash type (expected $6$ or $7$; plain-text passwords are not supported)"
                    .into(),
            )
        }
    }

    /// The encoded form as written after `username:` in the file.
    pub fn encode(&self) -> String {
        match self {
            PasswordHash::Sha512 { salt, hash } => {
                format!("$6${}${}", B64.encode(salt), B64.encode(hash))
            }
            PasswordHash::Pbkdf2Sha512 {
                iterations,
                salt,
                hash,
            } => format!("$7${iterations}${}${}", B64.encode(salt), B64.encode(hash)),
        }
    }

    /// Constant-time comparison of the derived hash (`subtle`), as mosquitto's
    /// `mosquitto__memcmp_const`, so response timing does not reveal how many bytes matched.
    pub fn verify(&self, password: &[u8]) -> bool {
        let (computed, stored) = match self {
            PasswordHash::Sha512 { salt, hash } => {
                let mut h = Sha512::new();
                h.update(password);
                h.update(salt);
                let out: [u8; HASH_LEN] = h.finalize().into();
                (out, hash)
            }
            PasswordHash::Pbkdf2Sha512 {
                iterations,
                salt,
                hash,
            } => (pbkdf2_sha512(password, salt, *iterations), hash),
        };
        computed.ct_eq(stored).into()
    }
}

fn pbkdf2_sha512(password: &[u8], salt: &[u8], iterations: u32) -> [u8; HASH_LEN] {
    pbkdf2::pbkdf2_hmac_array::<Sha512, HASH_LEN>(password, salt, iterations)
}

fn decode_salt(s: &str) -> Result<Vec<u8>, String> {
    let salt = B64
        .decode(s)
        .map_err(|_| "salt is not valid base64".to_string())?;
    if salt.is_empty() {
        return Err("salt is empty".into());
    }
    Ok(salt)
}

fn decode_hash(s: &str) -> Result<[u8; HASH_LEN], String> {
    let bytes = B64
        .decode(s)
        .map_err(|_| "hash is not valid base64".to_string())?;
    <[u8; HASH_LEN]>::try_from(bytes.as_slice())
        .map_err(|_| format!("hash is {} bytes, expected {HASH_LEN}", bytes.len()))
}

/// A line of the password file that was not loaded, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedLine {
    /// 1-based line number.
    pub line: usize,
    pub reason: String,
}

/// The loaded password file: username -> hash.
#[derive(Debug, Clone)]
pub struct PasswordFile {
    path: PathBuf,
    users: HashMap<String, PasswordHash>,
    skipped: Vec<SkippedLine>,
}

impl PasswordFile {
    /// Read and parse `path`. Only an unreadable file is an error; bad entries are logged with
    /// `file:line` and skipped (see the module comment for why).
    pub fn load(path: &Path) -> Result<PasswordFile, AuthError> {
        let bytes = fs::read(path).map_err(|e| io_err(path, e))?;
        // Usernames in MQTT are UTF-8 [MQTT-3.1.3-11]; an invalid sequence in the file can only
        // belong to an entry nobody can log in as, so replace it rather than refuse the file.
        let text = String::from_utf8_lossy(&bytes);
        Ok(PasswordFile::parse(&text, path))
    }

    /// Parse file contents; `path` is used in log messages only.
    pub fn parse(text: &str, path: &Path) -> PasswordFile {
        let mut users = HashMap::new();
        let mut skipped = Vec::new();
        let mut skip = |line: usize, reason: String| {
            log::warn!(
                "{}:{line}: password entry skipped: {reason}",
                path.display()
            );
            skipped.push(SkippedLine { line, reason });
        };
        for (idx, raw) in text.lines().enumerate() {
            let line_no = idx + 1;
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((user, hash)) = line.split_once(':') else {
                skip(line_no, "no ':' between username and hash".into());
                continue;
            };
            let user = user.trim();
            let hash = hash.trim();
            if user.is_empty() {
                skip(line_no, "empty username".into());
                continue;
            }
            // [MQTT-1.5.3-1] strings are at most 65535 bytes; mosquitto skips longer ones too.
            if user.len() > 65535 {
                skip(line_no, "username longer than 65535 bytes".into());
                continue;
            }
            match PasswordHash::parse(hash) {
                Ok(h) => {
                    // mosquitto keeps duplicates in a hash table whose lookup finds the entry
                    // added last; keep the same "last one wins" and say so.
                    if users.insert(user.to_string(), h).is_some() {
                        log::warn!(
                            "{}:{line_no}: user {user:?} appears more than once; this later entry is used",
                            path.display()
                        );
                    }
                }
                Err(reason) => skip(line_no, format!("user {user:?}: {reason}")),
            }
        }
        PasswordFile {
            path: path.to_path_buf(),
            users,
            skipped,
        }
    }

    /// True if `user` has an entry and `password` matches it. An unknown user costs the same
    /// default PBKDF2 work as a known one, so timing does not reveal which usernames exist.
    pub fn check(&self, user: &str, password: &[u8]) -> bool {
        match self.users.get(user) {
            Some(hash) => hash.verify(password),
            None => {
                let _ = pbkdf2_sha512(password, &[0u8; SALT_LEN], DEFAULT_ITERATIONS);
                false
            }
        }
    }

    pub fn contains_user(&self, user: &str) -> bool {
        self.users.contains_key(user)
    }

    /// `user`'s entry: a connection keeps the one it authenticated against, so that a reload
    /// can tell whether its credentials still hold (see `Broker::reload_security`).
    pub fn entry(&self, user: &str) -> Option<&PasswordHash> {
        self.users.get(user)
    }

    pub fn len(&self) -> usize {
        self.users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Lines that were not loaded, with reasons (also logged at load time).
    pub fn skipped_lines(&self) -> &[SkippedLine] {
        &self.skipped
    }
}

/// Why a CONNECT was refused. `Display` is meant for the broker log and never includes the
/// password.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthRefusal {
    /// No username, and the listener does not accept anonymous clients.
    AnonymousNotAllowed,
    /// The listener does not accept anonymous clients and there is no password file to check
    /// a username against.
    NoPasswordFile,
    /// The username has no entry in the password file.
    UnknownUser,
    /// The user exists but the CONNECT carried no password.
    MissingPassword,
    WrongPassword,
}

impl AuthRefusal {
    /// CONNACK return code for MQTT 3.1.1: 0x05 "not authorized", as mosquitto 2.0 sends for
    /// every authentication failure.
    pub const CONNACK_V3: u8 = 0x05;
    /// CONNACK reason code for MQTT 5: 0x87 "Not authorized", as mosquitto 2.0 sends (0x86 is
    /// for user name/password data that is malformed, which the decoder catches).
    pub const CONNACK_V5: u8 = 0x87;
}

impl std::fmt::Display for AuthRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AuthRefusal::AnonymousNotAllowed => {
                "no username, and this listener refuses anonymous clients \
                 (see security.allow_anonymous)"
            }
            AuthRefusal::NoPasswordFile => {
                "this listener refuses anonymous clients (see security.allow_anonymous) \
                 and no password file is set"
            }
            AuthRefusal::UnknownUser => "unknown username",
            AuthRefusal::MissingPassword => "no password given",
            AuthRefusal::WrongPassword => "wrong password",
        })
    }
}

/// The CONNECT credential decision, as mosquitto 2.0 makes it (`mosquitto_unpwd_check` with
/// the default password-file check):
/// - without a password file, everyone is accepted if `allow_anonymous`, nobody otherwise;
/// - with one, a client without username is accepted only if `allow_anonymous`; a client with
///   a username must match an entry, whatever `allow_anonymous` says.
///
/// `allow_anonymous` is the listener's answer (`SecurityConfig::anonymous_access`), not the
/// raw config key.
pub fn authenticate(
    allow_anonymous: bool,
    passwords: Option<&PasswordFile>,
    username: Option<&str>,
    password: Option<&[u8]>,
) -> Result<(), AuthRefusal> {
    let Some(file) = passwords else {
        return if allow_anonymous {
            Ok(())
        } else {
            Err(AuthRefusal::NoPasswordFile)
        };
    };
    let Some(user) = username else {
        return if allow_anonymous {
            Ok(())
        } else {
            Err(AuthRefusal::AnonymousNotAllowed)
        };
    };
    if !file.contains_user(user) {
        // Same hashing work as a real check, so the answer's timing does not reveal whether
        // the username exists.
        file.check(user, password.unwrap_or_default());
        return Err(AuthRefusal::UnknownUser);
    }
    match password {
        None => Err(AuthRefusal::MissingPassword),
        Some(pw) if file.check(user, pw) => Ok(()),
        Some(_) => Err(AuthRefusal::WrongPassword),
    }
}

/// Reject usernames that mosquitto could never match or that would corrupt the file.
fn validate_username(user: &str) -> Result<(), AuthError> {
    let bad = |why| Err(AuthError::InvalidUsername(user.to_string(), why));
    if user.is_empty() {
        return bad("must not be empty");
    }
    if user.contains(':') {
        return bad("must not contain ':'");
    }
    if user.chars().any(|c| c.is_control()) {
        return bad("must not contain control characters");
    }
    if user.trim() != user {
        return bad("must not start or end with whitespace (mosquitto trims it)");
    }
    if user.starts_with('#') {
        return bad("must not start with '#' (the line would be a comment)");
    }
    if user.len() > 65535 {
        return bad("longer than 65535 bytes");
    }
    Ok(())
}

/// Username of a line in an existing file if it is an entry line (same rules as the reader).
fn entry_user(line: &str) -> Option<&str> {
    let t = line.trim();
    if t.is_empty() || t.starts_with('#') {
        return None;
    }
    t.split_once(':').map(|(u, _)| u.trim())
}

/// Set `user`'s entry in the password file at `file` to `hash`: the first existing entry for
/// the user is replaced in place, later duplicates are removed, every other line (other users,
/// comments, blank lines) is kept byte for byte and in order; a new user is appended. A missing
/// file is created (mode 0600 on Unix). The new contents go to a temporary file in the same
/// directory that is then renamed over the old one, so a crash never leaves half a file.
pub fn set_entry(file: &Path, user: &str, hash: &PasswordHash) -> Result<(), AuthError> {
    validate_username(user)?;
    let existing = match fs::read(file) {
        Ok(b) => Some(String::from_utf8_lossy(&b).into_owned()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(io_err(file, e)),
    };
    let new_line = format!("{user}:{}", hash.encode());
    let mut out = String::new();
    let mut replaced = false;
    if let Some(text) = &existing {
        // split_inclusive keeps each line's own terminator (LF or CRLF).
        for line in text.split_inclusive('\n') {
            if entry_user(line) == Some(user) {
                if !replaced {
                    let eol = if line.ends_with("\r\n") {
                        "\r\n"
                    } else if line.ends_with('\n') {
                        "\n"
                    } else {
                        ""
                    };
                    out.push_str(&new_line);
                    out.push_str(eol);
                    replaced = true;
                }
                continue;
            }
            out.push_str(line);
        }
    }
    if !replaced {
        if !out.is_empty() && !out.ends_with('\n') {
            out.push('\n');
        }
        out.push_str(&new_line);
    }
    if !out.ends_with('\n') {
        out.push('\n');
    }
    write_atomically(file, out.as_bytes(), existing.is_some())
}

fn write_atomically(file: &Path, contents: &[u8], existed: bool) -> Result<(), AuthError> {
    let dir = match file.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "passwd".into());
    let tmp = dir.join(format!(".{name}.mqflux-tmp.{}", std::process::id()));
    let result = (|| -> io::Result<()> {
        let mut opts = fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts.open(&tmp)?;
        f.write_all(contents)?;
        if existed {
            // Keep the operator's chosen permissions (e.g. group-readable for the broker user).
            let perms = fs::metadata(file)?.permissions();
            f.set_permissions(perms)?;
        }
        f.sync_all()?;
        fs::rename(&tmp, file)
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(io_err(file, e));
    }
    Ok(())
}

/// `mqflux passwd FILE USER [--password PW]`: create or update USER's entry in FILE in the
/// `$7$` format mosquitto_passwd writes. Without `password`, one line is read from `input`
/// (normally stdin; a trailing CR/LF is removed) so the password stays out of `ps` output and
/// shell history.
pub fn run_passwd(
    file: &Path,
    user: &str,
    password: Option<String>,
    input: &mut dyn BufRead,
) -> Result<(), AuthError> {
    validate_username(user)?;
    let password = match password {
        Some(p) => p,
        None => {
            let mut line = String::new();
            let n = input.read_line(&mut line).map_err(|e| AuthError::Io {
                path: PathBuf::from("<stdin>"),
                source: e,
            })?;
            if n == 0 {
                return Err(AuthError::NoPassword);
            }
            let trimmed = line.strip_suffix('\n').unwrap_or(&line);
            let trimmed = trimmed.strip_suffix('\r').unwrap_or(trimmed);
            trimmed.to_string()
        }
    };
    if password.is_empty() {
        return Err(AuthError::InvalidPassword("must not be empty"));
    }
    // [MQTT-3.1.3-5]-style limit: the CONNECT password field is at most 65535 bytes.
    if password.len() > 65535 {
        return Err(AuthError::InvalidPassword("longer than 65535 bytes"));
    }
    let hash = PasswordHash::new_pbkdf2(password.as_bytes())?;
    set_entry(file, user, &hash)?;
    log::info!("{}: password set for user {user:?}", file.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    // Produced by Debian's mosquitto_passwd 2.0.11: `mosquitto_passwd -c -b f alice s3cret`
    // and `mosquitto_passwd -H sha512 -b f bob hunter2`.
    const ALICE_7: &str = "alice:$7$101$zgERu+WM5ihCWk5P$tEdjgfTUySm/mbx9RbsMvOpORYbzLH2c0Pk2bEKjUf35w1HR+5caCTu8dReG/2ELRYkTW/OGuE/5MHsAdzDKGA==";
    const BOB_6: &str = "bob:$6$0dcjPl8ZwAGnxhkC$jHtvnS3cKSXiiXcL1hbEH0MGTDo9lP0T6EGpSQGD1DwFntWbEglgNZirgAlHiwVichOljlZ3Xy1Xn0PsKEEB8w==";

    fn parse(text: &str) -> PasswordFile {
        PasswordFile::parse(text, Path::new("test.pw"))
    }

    #[test]
    fn mosquitto_passwd_pbkdf2_entry_accepts_right_password_only() {
        let f = parse(ALICE_7);
        assert!(f.check("alice", b"s3cret"));
        assert!(!f.check("alice", b"s3cret "));
        assert!(!f.check("alice", b""));
        assert!(!f.check("Alice", b"s3cret"));
    }

    #[test]
    fn legacy_sha512_entry_accepts_right_password_only() {
        let f = parse(BOB_6);
        assert!(f.check("bob", b"hunter2"));
        assert!(!f.check("bob", b"hunter3"));
    }

    #[test]
    fn pbkdf2_with_other_iterations_and_salt_length_is_accepted() {
        // Independent vector from Python: hashlib.pbkdf2_hmac('sha512', b'pw', salt, 1000)
        // with salt = bytes(range(16)).
        let line = "u:$7$1000$AAECAwQFBgcICQoLDA0ODw==$a09spXPezVeEZW9b6Ta6WbhrzOk1dKuNdFg3k1Haqxi5b2mW53i2msnnQK2CyFYwUCGYdbPh4r4CwICTbfskBg==";
        let f = parse(line);
        assert_eq!(f.skipped_lines(), &[]);
        assert!(f.check("u", b"pw"));
        assert!(!f.check("u", b"pW"));
    }

    #[test]
    fn comments_blank_lines_crlf_and_surrounding_spaces_are_tolerated() {
        let text = format!("# users\r\n\r\n  {ALICE_7}  \r\n\n{BOB_6}\r\n");
        let f = parse(&text);
        assert_eq!(f.len(), 2);
        assert!(f.skipped_lines().is_empty());
        assert!(f.check("alice", b"s3cret"));
        assert!(f.check("bob", b"hunter2"));
    }

    #[test]
    fn malformed_lines_are_skipped_with_line_numbers_and_others_still_load() {
        let text = format!(
            "{ALICE_7}\n\
             no-colon-here\n\
             carol:plaintext\n\
             dave:$7$0$zgERu+WM5ihCWk5P$AAAA\n\
             erin:$7$101$!!!$AAAA\n\
             frank:$6$zgERu+WM5ihCWk5P$AAAA\n\
             :$6$x$y\n\
             gina:\n\
             {BOB_6}\n"
        );
        let f = parse(&text);
        let lines: Vec<usize> = f.skipped_lines().iter().map(|s| s.line).collect();
        assert_eq!(lines, vec![2, 3, 4, 5, 6, 7, 8]);
        assert!(f.skipped_lines()[2].reason.contains("iteration"));
        assert!(f.skipped_lines()[3].reason.contains("salt"));
        assert!(f.skipped_lines()[4].reason.contains("64"));
        assert_eq!(f.len(), 2);
        assert!(f.check("alice", b"s3cret"));
        assert!(f.check("bob", b"hunter2"));
        assert!(!f.check("carol", b"plaintext"));
    }

    #[test]
    fn later_duplicate_entry_wins() {
        let other = PasswordHash::pbkdf2_with(b"new", b"0123456789ab".to_vec(), 101).encode();
        let f = parse(&format!("{ALICE_7}\nalice:{other}\n"));
        assert!(f.check("alice", b"new"));
        assert!(!f.check("alice", b"s3cret"));
    }

    #[test]
    fn unknown_user_is_rejected() {
        assert!(!parse(ALICE_7).check("mallory", b"s3cret"));
    }

    #[test]
    fn encode_then_parse_round_trips() {
        let h = PasswordHash::pbkdf2_with(b"pw", b"saltsaltsalt".to_vec(), 101);
        assert_eq!(PasswordHash::parse(&h.encode()), Ok(h.clone()));
        assert!(h.encode().starts_with("$7$101$c2FsdHNhbHRzYWx0$"));
    }

    #[test]
    fn new_hash_uses_mosquitto_defaults_and_random_salt() {
        let a = PasswordHash::new_pbkdf2(b"pw").expect("hash");
        let b = PasswordHash::new_pbkdf2(b"pw").expect("hash");
        match (&a, &b) {
            (
                PasswordHash::Pbkdf2Sha512 {
                    iterations, salt, ..
                },
                PasswordHash::Pbkdf2Sha512 { salt: salt_b, .. },
            ) => {
                assert_eq!(*iterations, DEFAULT_ITERATIONS);
                assert_eq!(salt.len(), SALT_LEN);
                assert_ne!(salt, salt_b);
            }
            _ => panic!("expected $7$ hashes, got {a:?} / {b:?}"),
        }
        assert!(a.verify(b"pw"));
    }

    #[test]
    fn debug_output_does_not_contain_hash_material() {
        let h = PasswordHash::pbkdf2_with(b"pw", b"saltsaltsalt".to_vec(), 101);
        let s = format!("{h:?}");
        assert!(!s.contains("c2FsdHNhbHRzYWx0"));
        assert_eq!(s, "PasswordHash::Pbkdf2Sha512(iterations=101, ..)");
    }

    #[test]
    fn authenticate_follows_mosquitto_rules() {
        let f = parse(ALICE_7);
        let ok = |anon, file, user, pw| authenticate(anon, file, user, pw);
        // No password file: allow_anonymous decides for everyone.
        assert_eq!(ok(true, None, Some("x"), Some(&b"y"[..])), Ok(()));
        assert_eq!(ok(true, None, None, None), Ok(()));
        assert_eq!(
            ok(false, None, Some("alice"), Some(&b"s3cret"[..])),
            Err(AuthRefusal::NoPasswordFile)
        );
        // With a password file: anonymous only if allowed ...
        assert_eq!(ok(true, Some(&f), None, None), Ok(()));
        assert_eq!(
            ok(false, Some(&f), None, None),
            Err(AuthRefusal::AnonymousNotAllowed)
        );
        // ... and a username must always match, even when anonymous clients are allowed.
        for anon in [true, false] {
            assert_eq!(
                ok(anon, Some(&f), Some("alice"), Some(&b"s3cret"[..])),
                Ok(())
            );
            assert_eq!(
                ok(anon, Some(&f), Some("alice"), Some(&b"nope"[..])),
                Err(AuthRefusal::WrongPassword)
            );
            assert_eq!(
                ok(anon, Some(&f), Some("alice"), None),
                Err(AuthRefusal::MissingPassword)
            );
            assert_eq!(
                ok(anon, Some(&f), Some("bob"), Some(&b"s3cret"[..])),
                Err(AuthRefusal::UnknownUser)
            );
        }
        assert_eq!(AuthRefusal::WrongPassword.to_string(), "wrong password");
    }

    #[test]
    fn set_entry_replaces_in_place_keeps_others_and_drops_duplicates() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("pw");
        let original = format!("# header\r\n{ALICE_7}\r\n\r\n{BOB_6}\r\nalice:$6$x$y\r\n");
        fs::write(&path, &original).expect("write");
        let h = PasswordHash::pbkdf2_with(b"changed", b"saltsaltsalt".to_vec(), 101);
        set_entry(&path, "alice", &h).expect("set");
        let text = fs::read_to_string(&path).expect("read");
        assert_eq!(
            text,
            format!("# header\r\nalice:{}\r\n\r\n{BOB_6}\r\n", h.encode())
        );
        let f = PasswordFile::load(&path).expect("load");
        assert!(f.check("alice", b"changed"));
        assert!(f.check("bob", b"hunter2"));
    }

    #[test]
    fn set_entry_appends_new_user_after_file_without_final_newline() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("pw");
        fs::write(&path, ALICE_7).expect("write");
        let h = PasswordHash::pbkdf2_with(b"x", b"saltsaltsalt".to_vec(), 101);
        set_entry(&path, "zed", &h).expect("set");
        let text = fs::read_to_string(&path).expect("read");
        assert_eq!(text, format!("{ALICE_7}\nzed:{}\n", h.encode()));
    }

    #[cfg(unix)]
    #[test]
    fn run_passwd_creates_missing_file_private_to_owner() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("new.pw");
        run_passwd(&path, "alice", Some("pw1".into()), &mut io::empty()).expect("passwd");
        let mode = fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let f = PasswordFile::load(&path).expect("load");
        assert!(f.check("alice", b"pw1"));
    }

    #[test]
    fn run_passwd_reads_password_line_from_input() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("pw");
        let mut input = io::Cursor::new(b"from stdin\r\nignored\n".to_vec());
        run_passwd(&path, "alice", None, &mut input).expect("passwd");
        assert!(PasswordFile::load(&path)
            .expect("load")
            .check("alice", b"from stdin"));
    }

    #[test]
    fn run_passwd_rejects_bad_usernames_and_missing_password() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("pw");
        for user in ["", "a:b", " a", "#a", "a\nb"] {
            let r = run_passwd(&path, user, Some("pw".into()), &mut io::empty());
            assert!(
                matches!(r, Err(AuthError::InvalidUsername(..))),
                "{user:?}: {r:?}"
            );
        }
        let r = run_passwd(&path, "a", None, &mut io::empty());
        assert!(matches!(r, Err(AuthError::NoPassword)), "{r:?}");
        let r = run_passwd(&path, "a", Some(String::new()), &mut io::empty());
        assert!(matches!(r, Err(AuthError::InvalidPassword(_))), "{r:?}");
        assert!(!path.exists());
    }

    #[test]
    fn load_of_missing_file_names_the_path() {
        let err = PasswordFile::load(Path::new("/nonexistent/mqflux.pw")).expect_err("missing");
        assert!(err.to_string().contains("/nonexistent/mqflux.pw"), "{err}");
    }
}
