//! Who may see and do what on the dashboard.
//!
//! - Users are the password file's (`security.password_file`), sent with HTTP Basic and
//!   checked with the broker's own hashing (`PasswordFile::check`). A check costs a PBKDF2
//!   run, and a browser sends the header with every request, so a verified user/password pair
//!   is remembered (as a keyed hash, never the password) for `VERIFIED_FOR`, and only while
//!   the password file is the same generation (a SIGHUP reload forgets every pair).
//! - Read-only pages and API: open, or any user with `dashboard.require_login`.
//! - Actions (kick, discard, delete): users named in `dashboard.admins` only, and every
//!   mutating request must carry the CSRF token (`X-CSRF-Token`, from `GET /api/v1/csrf`):
//!   a keyed hash of the user name with a secret made at start, which another site cannot
//!   read. A request whose `Origin` header names another site is refused too.
//! - Off loopback, the server only speaks TLS (`config::DashboardConfig`), so Basic
//!   credentials never cross the network in clear.

use crate::broker::Broker;
use crate::ops::http::Request;
use base64::Engine;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use subtle::ConstantTimeEq;

/// How long a verified user/password pair is trusted without hashing it again.
const VERIFIED_FOR: Duration = Duration::from_secs(300);
/// Pairs remembered at most (forgotten all at once beyond that).
const VERIFIED_MAX: usize = 256;

/// Why a request is refused: 401 asks the browser for credentials, 403 does not.
#[derive(Debug)]
pub enum Refusal {
    Unauthorized(&'static str),
    Forbidden(String),
}

pub struct Gate {
    admins: Vec<String>,
    require_login: bool,
    secret: [u8; 32],
    /// keyed hash of "user:password" -> (user, password file generation, verified at).
    verified: Mutex<HashMap<[u8; 32], (String, u64, Instant)>>,
}

impl Gate {
    pub fn new(admins: Vec<String>, require_login: bool) -> Gate {
        let mut secret = [0u8; 32];
        if getrandom::getrandom(&mut secret).is_err() {
            // No OS randomness: fall back to what differs per start (tokens only need to be
            // unguessable to other sites, which cannot read them anyway).
            let nanos = crate::broker::message::now_ns().to_le_bytes();
            secret =
                Sha256::digest([&nanos[..], &std::process::id().to_le_bytes()].concat()).into();
        }
        Gate {
            admins,
            require_login,
            secret,
            verified: Mutex::new(HashMap::new()),
        }
    }

    fn keyed(&self, parts: &[&[u8]]) -> [u8; 32] {
        let mut inner = Sha256::new();
        inner.update(self.secret);
        for p in parts {
            inner.update((p.len() as u64).to_le_bytes());
            inner.update(p);
        }
        let mut outer = Sha256::new();
        outer.update(self.secret);
        outer.update(inner.finalize());
        outer.finalize().into()
    }

    /// The CSRF token of `user`.
    pub fn csrf_token(&self, user: &str) -> String {
        let mac = self.keyed(&[b"csrf", user.as_bytes()]);
        mac.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The user the request authenticates as: Ok(None) without an Authorization header,
    /// Err(401) for a wrong user or password.
    pub fn user(&self, request: &Request, broker: &Broker) -> Result<Option<String>, Refusal> {
        let Some(header) = request.header("authorization") else {
            return Ok(None);
        };
        let encoded = header
            .strip_prefix("Basic ")
            .or_else(|| header.strip_prefix("basic "))
            .ok_or(Refusal::Unauthorized("expected HTTP Basic credentials"))?;
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .map_err(|_| Refusal::Unauthorized("malformed Basic credentials"))?;
        let text = String::from_utf8(decoded).map_err(|_| wrong_refusal())?;
        let (user, password) = text.split_once(':').ok_or_else(wrong_refusal)?;
        let snapshot = broker.security.current();
        let key = self.keyed(&[b"login", user.as_bytes(), password.as_bytes()]);
        {
            let verified = self.verified.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((u, generation, at)) = verified.get(&key) {
                if *generation == snapshot.generation && at.elapsed() < VERIFIED_FOR {
                    return Ok(Some(u.clone()));
                }
            }
        }
        let Some(passwords) = snapshot.passwords.as_ref() else {
            return Err(Refusal::Unauthorized("no password file is configured"));
        };
        if !passwords.check(user, password.as_bytes()) {
            return Err(wrong_refusal());
        }
        let mut verified = self.verified.lock().unwrap_or_else(|e| e.into_inner());
        if verified.len() >= VERIFIED_MAX {
            verified.clear();
        }
        verified.insert(key, (user.to_string(), snapshot.generation, Instant::now()));
        Ok(Some(user.to_string()))
    }

    /// May this request read? Returns the user, if any.
    pub fn read(&self, request: &Request, broker: &Broker) -> Result<Option<String>, Refusal> {
        match self.user(request, broker)? {
            None if self.require_login => Err(Refusal::Unauthorized("log in to see the dashboard")),
            user => Ok(user),
        }
    }

    /// May this request act? The user must be an admin; `mutating` requests also need the
    /// CSRF token and, if the browser says where it comes from, this site as the origin.
    pub fn admin(
        &self,
        request: &Request,
        broker: &Broker,
        mutating: bool,
    ) -> Result<String, Refusal> {
        let user = self
            .user(request, broker)?
            .ok_or(Refusal::Unauthorized("log in as a dashboard admin"))?;
        if !self.admins.contains(&user) {
            return Err(Refusal::Forbidden(format!(
                "user {user:?} is not in dashboard.admins"
            )));
        }
        if !mutating {
            return Ok(user);
        }
        if let Some(origin) = request.header("origin") {
            let scheme = if request.tls { "https" } else { "http" };
            let host = request.header("host").unwrap_or("");
            if origin != format!("{scheme}://{host}") {
                return Err(Refusal::Forbidden(format!(
                    "cross-site request refused (Origin {origin:?})"
                )));
            }
        }
        if request.header("sec-fetch-site") == Some("cross-site") {
            return Err(Refusal::Forbidden("cross-site request refused".into()));
        }
        let expected = self.csrf_token(&user);
        let given = request.header("x-csrf-token").unwrap_or("");
        if !bool::from(given.as_bytes().ct_eq(expected.as_bytes())) {
            return Err(Refusal::Forbidden(
                "missing or wrong X-CSRF-Token header (GET /api/v1/csrf gives it)".into(),
            ));
        }
        Ok(user)
    }
}

fn wrong_refusal() -> Refusal {
    Refusal::Unauthorized("wrong user name or password")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csrf_tokens_are_per_user_and_per_start() {
        let gate = Gate::new(vec!["admin".into()], false);
        let token = gate.csrf_token("admin");
        assert_eq!(token.len(), 64);
        assert_eq!(token, gate.csrf_token("admin"));
        assert_ne!(token, gate.csrf_token("viewer"));
        // Another start has another secret: an old token is no longer good.
        assert_ne!(
            token,
            Gate::new(vec!["admin".into()], false).csrf_token("admin")
        );
        // Length-prefixed parts: ("ab", "c") and ("a", "bc") are different keys.
        assert_ne!(gate.keyed(&[b"ab", b"c"]), gate.keyed(&[b"a", b"bc"]));
    }
}
