//! Console logins: one-time login tokens and the sessions they open.
//!
//! An operator asks the node for a login token over mTLS (`rpc/console.rs`,
//! `ConsoleService.CreateLoginToken`, admin only); the web console (`console/`) redeems it
//! once for a session. Tokens and session ids are 256 random bits, kept only as SHA-256
//! hashes, in memory (a restart logs everyone out). A token lives [`LOGIN_TOKEN_TTL`] and is
//! single use; a session is bound to the device that asked for the token, ends after
//! [`SESSION_IDLE`] without a request or [`SESSION_LIFETIME`] in all, and carries its own CSRF
//! token. Whether the device is still active is the console's check on every request
//! (through the peer resolver), so a revoked operator loses its sessions at once.
//!
//! No HTTP and no clock reads here: `now` is passed in.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use ring::digest;
use ring::rand::{SecureRandom, SystemRandom};
use zeroize::Zeroizing;

use crate::identity::DeviceId;

/// How long a login token may be redeemed.
pub const LOGIN_TOKEN_TTL: Duration = Duration::from_secs(60);
/// A session ends after this long without a request.
pub const SESSION_IDLE: Duration = Duration::from_secs(30 * 60);
/// A session ends this long after login, busy or not.
pub const SESSION_LIFETIME: Duration = Duration::from_secs(12 * 60 * 60);
/// Outstanding login tokens at most (older ones are dropped first).
const MAX_TOKENS: usize = 64;
/// Open sessions at most (the oldest is ended first).
const MAX_SESSIONS: usize = 256;

/// A bearer secret (login token or session id): 64 lowercase hex digits. Zeroized on drop;
/// `Debug` prints `[redacted]`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Zeroizing<String>);

impl Secret {
    fn generate() -> Result<Self, LoginError> {
        let mut bytes = Zeroizing::new([0u8; 32]);
        SystemRandom::new().fill(bytes.as_mut()).map_err(|_| LoginError::Random)?;
        Ok(Secret(Zeroizing::new(hex::encode(bytes.as_ref()))))
    }

    /// The text to hand over (a URL parameter, a cookie value).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

type Hash = [u8; 32];

fn hash(text: &str) -> Hash {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest::digest(&digest::SHA256, text.as_bytes()).as_ref());
    out
}

/// Why a login failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LoginError {
    /// Unknown, used or expired: the three are not told apart.
    #[error("the login link is invalid, used or expired: run `palyra console` for a new one")]
    InvalidToken,
    /// The console is not serving, so a token could not be used.
    #[error("the console is disabled on this node (console.enabled = false or --no-console)")]
    ConsoleDisabled,
    /// The system random generator failed.
    #[error("the system random generator failed")]
    Random,
}

/// A session as the console sees it.
#[derive(Clone, PartialEq, Eq)]
pub struct Session {
    /// The operator device it acts as.
    pub device: DeviceId,
    /// The token every state-changing request must carry.
    pub csrf: Secret,
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session").field("device", &self.device).finish_non_exhaustive()
    }
}

#[derive(Debug)]
struct Open {
    session: Session,
    created: SystemTime,
    last_seen: SystemTime,
}

#[derive(Debug, Default)]
struct State {
    tokens: HashMap<Hash, (DeviceId, SystemTime)>,
    sessions: HashMap<Hash, Open>,
}

/// Login tokens, sessions, and where the console listens. Cheap to clone (shared).
#[derive(Debug, Clone, Default)]
pub struct Logins {
    state: Arc<Mutex<State>>,
    console_url: Arc<RwLock<Option<String>>>,
}

impl Logins {
    /// Records the console's base URL (`http://127.0.0.1:7445`), or `None` when it is off.
    pub fn set_console_url(&self, url: Option<String>) {
        if let Ok(mut slot) = self.console_url.write() {
            *slot = url;
        }
    }

    /// The console's base URL, when it serves.
    pub fn console_url(&self) -> Option<String> {
        self.console_url.read().ok().and_then(|u| u.clone())
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock leaves maps that are still consistent.
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A login token for `device`, valid until the returned time; refused when the console
    /// is not serving.
    pub fn issue_token(&self, device: DeviceId, now: SystemTime) -> Result<(Secret, SystemTime), LoginError> {
        if self.console_url().is_none() {
            return Err(LoginError::ConsoleDisabled);
        }
        let token = Secret::generate()?;
        let expires = now + LOGIN_TOKEN_TTL;
        let mut state = self.state();
        state.tokens.retain(|_, (_, e)| *e > now);
        while state.tokens.len() >= MAX_TOKENS {
            let Some(oldest) = state.tokens.iter().min_by_key(|(_, (_, e))| *e).map(|(h, _)| *h) else {
                break;
            };
            state.tokens.remove(&oldest);
        }
        state.tokens.insert(hash(token.expose()), (device, expires));
        Ok((token, expires))
    }

    /// Redeems `token` (single use, whatever the outcome) for a new session: its id (the
    /// cookie) and the session.
    pub fn redeem(&self, token: &str, now: SystemTime) -> Result<(Secret, Session), LoginError> {
        let mut state = self.state();
        let Some((device, expires)) = state.tokens.remove(&hash(token)) else {
            return Err(LoginError::InvalidToken);
        };
        if expires <= now {
            return Err(LoginError::InvalidToken);
        }
        let id = Secret::generate()?;
        let session = Session { device, csrf: Secret::generate()? };
        state.sessions.retain(|_, o| alive(o, now));
        while state.sessions.len() >= MAX_SESSIONS {
            let Some(oldest) = state.sessions.iter().min_by_key(|(_, o)| o.created).map(|(h, _)| *h) else {
                break;
            };
            state.sessions.remove(&oldest);
        }
        state
            .sessions
            .insert(hash(id.expose()), Open { session: session.clone(), created: now, last_seen: now });
        Ok((id, session))
    }

    /// The live session with cookie value `id`, which counts as activity; an expired one is
    /// ended.
    pub fn session(&self, id: &str, now: SystemTime) -> Option<Session> {
        let key = hash(id);
        let mut state = self.state();
        let open = state.sessions.get_mut(&key)?;
        if !alive(open, now) {
            state.sessions.remove(&key);
            return None;
        }
        open.last_seen = now;
        Some(open.session.clone())
    }

    /// Whether the session with cookie value `id` is still open, without counting as
    /// activity (an open event stream does not keep a session alive).
    pub fn is_open(&self, id: &str, now: SystemTime) -> bool {
        self.state().sessions.get(&hash(id)).is_some_and(|o| alive(o, now))
    }

    /// Ends the session with cookie value `id` (logout).
    pub fn end_session(&self, id: &str) {
        self.state().sessions.remove(&hash(id));
    }

    /// Ends every session of `device` and forgets its tokens (after its revocation).
    pub fn end_sessions_of(&self, device: DeviceId) {
        let mut state = self.state();
        state.sessions.retain(|_, o| o.session.device != device);
        state.tokens.retain(|_, (d, _)| *d != device);
    }
}

fn alive(open: &Open, now: SystemTime) -> bool {
    let since = |t: SystemTime| now.duration_since(t).unwrap_or_default();
    since(open.last_seen) < SESSION_IDLE && since(open.created) < SESSION_LIFETIME
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]
mod tests {
    use super::*;

    fn logins() -> Logins {
        let l = Logins::default();
        l.set_console_url(Some("http://127.0.0.1:7445".into()));
        l
    }

    #[test]
    fn a_token_opens_one_session_once() {
        let l = logins();
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let device = DeviceId::generate();
        let (token, expires) = l.issue_token(device, t0).unwrap();
        assert_eq!(expires, t0 + LOGIN_TOKEN_TTL);
        let (id, session) = l.redeem(token.expose(), t0).unwrap();
        assert_eq!(session.device, device);
        assert_eq!(l.redeem(token.expose(), t0), Err(LoginError::InvalidToken), "single use");
        assert_eq!(l.session(id.expose(), t0 + Duration::from_secs(60)).map(|s| s.device), Some(device));
        assert!(l.session("nope", t0).is_none());
        l.end_session(id.expose());
        assert!(l.session(id.expose(), t0).is_none());
    }

    #[test]
    fn tokens_and_sessions_expire() {
        let l = logins();
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let device = DeviceId::generate();
        let (token, _) = l.issue_token(device, t0).unwrap();
        assert_eq!(l.redeem(token.expose(), t0 + LOGIN_TOKEN_TTL).err(), Some(LoginError::InvalidToken));

        let (token, _) = l.issue_token(device, t0).unwrap();
        let (id, _) = l.redeem(token.expose(), t0).unwrap();
        assert!(l.session(id.expose(), t0 + SESSION_IDLE).is_none(), "idle");

        let (token, _) = l.issue_token(device, t0).unwrap();
        let (id, _) = l.redeem(token.expose(), t0).unwrap();
        let mut t = t0;
        while t < t0 + SESSION_LIFETIME - SESSION_IDLE {
            t += SESSION_IDLE / 2;
            assert!(l.session(id.expose(), t).is_some());
        }
        assert!(l.session(id.expose(), t0 + SESSION_LIFETIME).is_none(), "absolute");
    }

    #[test]
    fn revocation_ends_sessions_and_a_disabled_console_issues_nothing() {
        let l = logins();
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let device = DeviceId::generate();
        let (token, _) = l.issue_token(device, t0).unwrap();
        let (id, _) = l.redeem(token.expose(), t0).unwrap();
        let (pending, _) = l.issue_token(device, t0).unwrap();
        l.end_sessions_of(device);
        assert!(l.session(id.expose(), t0).is_none());
        assert!(l.redeem(pending.expose(), t0).is_err());
        assert_eq!(format!("{:?}", pending), "Secret([redacted])");
        assert_eq!(Logins::default().issue_token(device, t0).err(), Some(LoginError::ConsoleDisabled));
    }
}
