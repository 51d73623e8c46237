//! Bearer tokens mapped to roles.
//!
//! Each service needs a role: `reader` calls `Membership`, `activity` calls `Activities`, `loader`
//! calls `Ingest`, and `admin` calls everything (`Segments` and `Admin` only admin, except
//! `Admin.GetSchema`, which every role may call: it names the attributes and their types that
//! loads, rules and customers use, and no customer's data). A call carries
//! `authorization: Bearer <token>` (the scheme in any case). Tokens come from a file
//! (`--tokens-file`) or the environment (`SEGMENTD_TOKENS`), one `role token` pair a line (or
//! comma-separated); `#` starts a comment to the end of the line; a token may be given as
//! `sha256:<64 hex digits>` so the file holds no secret. Tokens are kept only as SHA-256 digests
//! and a presented token is compared with every one in constant time. The file is read again on
//! SIGHUP; a file that cannot be read, does not parse or holds no token keeps the tokens in force
//! (a reload never opens a server). Missing or wrong token: UNAUTHENTICATED; right token, wrong
//! role: PERMISSION_DENIED; neither says which tokens exist. Health and reflection stay open.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tonic::{Request, Status};

use crate::error::{Error, Result};

/// What a token may call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Reader,
    Activity,
    Loader,
    Admin,
}

impl Role {
    pub fn parse(s: &str) -> Option<Role> {
        Some(match s {
            "reader" => Role::Reader,
            "activity" => Role::Activity,
            "loader" => Role::Loader,
            "admin" => Role::Admin,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Role::Reader => "reader",
            Role::Activity => "activity",
            Role::Loader => "loader",
            Role::Admin => "admin",
        }
    }
}

/// The role each service needs besides `admin`, by service name.
pub fn role_for(service: &str) -> Option<Role> {
    match service {
        "segmentd.v1.Membership" | "segmentd.v1.Replication" => Some(Role::Reader),
        "segmentd.v1.Activities" => Some(Role::Activity),
        "segmentd.v1.Ingest" => Some(Role::Loader),
        _ => None, // Segments, Admin: admin only
    }
}

/// The role a call was authenticated with (`None`: the server checks no tokens), put in the
/// call's extensions for a service whose methods need different roles (`Admin`), which then
/// checks each call with [`Caller::require_admin`].
#[derive(Debug, Clone, Copy)]
pub struct Caller(pub Option<Role>);

impl Caller {
    /// Refuses a call that is not an admin's (or that no authentication step marked).
    pub fn require_admin<T>(request: &Request<T>, method: &str) -> Result<(), Status> {
        match request.extensions().get::<Caller>() {
            Some(Caller(None | Some(Role::Admin))) => Ok(()),
            Some(Caller(Some(role))) => Err(denied(*role, method)),
            None => Err(Status::internal(format!(
                "{method}: the call was not authenticated"
            ))),
        }
    }
}

/// PERMISSION_DENIED for `role` calling `what` (a service or a method).
fn denied(role: Role, what: &str) -> Status {
    Status::permission_denied(format!("the `{}` role may not call {what}", role.name()))
}

/// The accepted tokens, as SHA-256 digests with their roles.
#[derive(Debug, Default, Clone)]
pub struct Tokens {
    entries: Vec<([u8; 32], Role)>,
}

/// A token's SHA-256 digest, the form tokens are kept and compared in.
pub fn digest(token: &[u8]) -> [u8; 32] {
    Sha256::digest(token).into()
}

impl Tokens {
    /// Parses `role token` (or `role sha256:<hex>`) entries, one a line or several on a line
    /// separated by commas; `#` starts a comment that runs to the end of its line (commas in it
    /// included). `source` names where they come from in errors, which give the line and never
    /// repeat a token.
    pub fn parse(text: &str, source: &str) -> Result<Tokens> {
        let mut entries = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("");
            let several = line.contains(',');
            for (k, entry) in line.split(',').enumerate() {
                let entry = entry.trim();
                if entry.is_empty() {
                    continue;
                }
                let bad = |why: &str| {
                    let at = if several {
                        format!("{source}:{} (entry {} of the line)", n + 1, k + 1)
                    } else {
                        format!("{source}:{}", n + 1)
                    };
                    Error::invalid(at, why)
                };
                let mut words = entry.split_whitespace();
                let (Some(role), Some(token), None) = (words.next(), words.next(), words.next()) else {
                    return Err(bad("expected `role token`"));
                };
                let role =
                    Role::parse(role).ok_or_else(|| bad("the role is reader, activity, loader or admin"))?;
                let hash = match token.strip_prefix("sha256:") {
                    Some(hex) => decode_hex(hex).ok_or_else(|| bad("sha256: needs 64 hex digits"))?,
                    None if token.len() < 16 => return Err(bad("a token needs at least 16 characters")),
                    None => digest(token.as_bytes()),
                };
                entries.push((hash, role));
            }
        }
        Ok(Tokens { entries })
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// The role of `token`, comparing its digest with every entry in constant time (no early
    /// exit, so the time tells nothing of which digest bytes matched).
    pub fn role(&self, token: &str) -> Option<Role> {
        self.role_of_digest(&digest(token.as_bytes()))
    }

    /// [`Tokens::role`] of a token given by its [`digest`] (a connection that authenticated
    /// once keeps the digest, not the token, to check it again after a reload).
    pub fn role_of_digest(&self, hash: &[u8; 32]) -> Option<Role> {
        let mut found = None;
        for (h, role) in &self.entries {
            if bool::from(h.ct_eq(hash)) && found.is_none() {
                found = Some(*role);
            }
        }
        found
    }
}

fn reload_failures_counter() -> prometheus::IntCounter {
    prometheus::IntCounter::new(
        "segmentd_tokens_reload_failures_total",
        "Token reloads (SIGHUP) refused; the tokens in force stayed.",
    )
    .expect("a valid counter name")
}

/// The token of an `authorization` value whose scheme is `Bearer`, in any case (RFC 9110 §11.1).
fn bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim_start().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

fn decode_hex(hex: &str) -> Option<[u8; 32]> {
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// The tokens in force, replaced whole on reload.
#[derive(Debug)]
pub struct Auth {
    tokens: ArcSwap<Tokens>,
    file: Option<PathBuf>,
    env: Option<String>,
    /// Reloads refused (`segmentd_tokens_reload_failures_total`).
    reload_failures: prometheus::IntCounter,
}

impl Auth {
    /// Tokens from `file` and the `env` text; both may be absent (then every call is open).
    pub fn load(file: Option<&Path>, env: Option<String>) -> Result<Auth> {
        let auth = Auth {
            tokens: ArcSwap::from_pointee(Tokens::default()),
            file: file.map(Path::to_path_buf),
            env,
            reload_failures: reload_failures_counter(),
        };
        auth.tokens.store(Arc::new(auth.read()?));
        Ok(auth)
    }

    /// Reads the file (and the environment) again and puts the new tokens in force. A file that
    /// cannot be read or parsed, or that would leave a server started with tokens without any,
    /// is refused: the tokens in force stay and the failure is counted. A reload never opens a
    /// server; only a restart without tokens does.
    pub fn reload(&self) -> Result<usize> {
        let result = self.read().and_then(|tokens| {
            if tokens.is_empty() && self.enabled() {
                let source = match &self.file {
                    Some(path) => path.display().to_string(),
                    None => "SEGMENTD_TOKENS".to_string(),
                };
                return Err(Error::invalid(
                    source,
                    "holds no token: a reload never opens the server (restart it without tokens to do so)",
                ));
            }
            Ok(tokens)
        });
        match result {
            Ok(tokens) => {
                let n = tokens.len();
                self.tokens.store(Arc::new(tokens));
                Ok(n)
            }
            Err(e) => {
                self.reload_failures.inc();
                Err(e)
            }
        }
    }

    /// Reloads refused since start, for `/metrics`.
    pub fn reload_failures(&self) -> &prometheus::IntCounter {
        &self.reload_failures
    }

    /// The tokens of the environment and the file, as they read now.
    fn read(&self) -> Result<Tokens> {
        let mut tokens = match &self.env {
            Some(text) => Tokens::parse(text, "SEGMENTD_TOKENS")?,
            None => Tokens::default(),
        };
        if let Some(path) = &self.file {
            let text = std::fs::read_to_string(path)
                .map_err(|e| Error::invalid(path.display().to_string(), e.to_string()))?;
            tokens
                .entries
                .extend(Tokens::parse(&text, &path.display().to_string())?.entries);
        }
        Ok(tokens)
    }

    /// The tokens in force now (a reload replaces the whole set, so a caller that kept an
    /// earlier one can tell by pointer whether anything changed).
    pub fn in_force(&self) -> arc_swap::Guard<Arc<Tokens>> {
        self.tokens.load()
    }

    /// Whether any token is configured (calls are checked).
    pub fn enabled(&self) -> bool {
        !self.tokens.load().is_empty()
    }

    /// The role of the call's bearer token; `None` when the server checks no tokens.
    pub fn authenticate<T>(&self, request: &Request<T>) -> Result<Option<Role>, Status> {
        let tokens = self.tokens.load();
        if tokens.is_empty() {
            return Ok(None);
        }
        let presented = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(bearer);
        match presented.and_then(|t| tokens.role(t)) {
            Some(role) => Ok(Some(role)),
            None => Err(Status::unauthenticated(
                "missing or invalid bearer token (authorization: Bearer <token>)",
            )),
        }
    }

    /// Checks the call's bearer token against what `service` needs.
    pub fn check<T>(&self, service: &str, request: &Request<T>) -> Result<(), Status> {
        match self.authenticate(request)? {
            None | Some(Role::Admin) => Ok(()),
            Some(role) if role_for(service) == Some(role) => Ok(()),
            Some(role) => Err(denied(role, service)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plain_and_hashed_tokens_and_refuses_bad_lines() {
        let hashed = format!("{:x}", Sha256::digest(b"reader-token-0123456789"));
        let t = Tokens::parse(
            &format!("# roles\nadmin admin-token-0123456789\nreader sha256:{hashed}  # hashed\n\n"),
            "test",
        )
        .unwrap();
        assert_eq!(t.role("admin-token-0123456789"), Some(Role::Admin));
        assert_eq!(t.role("reader-token-0123456789"), Some(Role::Reader));
        assert_eq!(t.role("admin-token-012345678"), None);
        let both = Tokens::parse(
            "loader l-token-0123456789abc, activity a-token-0123456789abc",
            "env",
        )
        .unwrap();
        assert_eq!(both.len(), 2);
        for bad in [
            "root x-token-0123456789",
            "admin",
            "admin short",
            "reader sha256:abc",
            "a b c",
        ] {
            let e = Tokens::parse(&format!("# first line\n{bad}"), "f")
                .unwrap_err()
                .to_string();
            assert!(e.starts_with("f:2: "), "{bad}: {e}");
            assert!(!e.contains("0123456789"), "never repeats the token: {e}");
        }
    }

    #[test]
    fn comments_run_to_the_end_of_the_line_commas_included() {
        let t = Tokens::parse(
            "reader reader-token-0123456789   # shared laptop, old key\n# admin, loader\n",
            "f",
        )
        .unwrap();
        assert_eq!(t.len(), 1);
        assert_eq!(t.role("reader-token-0123456789"), Some(Role::Reader));
        let e = Tokens::parse("reader r-token-0123456789, admin short # c", "f")
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "f:1 (entry 2 of the line): a token needs at least 16 characters"
        );
    }

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer abc"), Some("abc"));
        assert_eq!(bearer("BEARER  abc "), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearerabc"), None);
    }

    #[test]
    fn roles_reach_their_services_only() {
        let auth = Auth {
            tokens: ArcSwap::from_pointee(
                Tokens::parse(
                    "reader r-token-0123456789ab\nadmin a-token-0123456789ab\nloader l-token-0123456789ab",
                    "t",
                )
                .unwrap(),
            ),
            file: None,
            env: None,
            reload_failures: reload_failures_counter(),
        };
        let call = |token: Option<&str>| {
            let mut r = Request::new(());
            if let Some(t) = token {
                r.metadata_mut()
                    .insert("authorization", format!("Bearer {t}").parse().unwrap());
            }
            r
        };
        let code =
            |service: &str, token: Option<&str>| auth.check(service, &call(token)).map_err(|s| s.code());
        assert_eq!(
            code("segmentd.v1.Membership", Some("r-token-0123456789ab")),
            Ok(())
        );
        assert_eq!(
            code("segmentd.v1.Ingest", Some("r-token-0123456789ab")),
            Err(tonic::Code::PermissionDenied)
        );
        assert_eq!(code("segmentd.v1.Segments", Some("a-token-0123456789ab")), Ok(()));
        assert_eq!(
            code("segmentd.v1.Segments", Some("l-token-0123456789ab")),
            Err(tonic::Code::PermissionDenied)
        );
        assert_eq!(
            code("segmentd.v1.Ingest", Some("wrong")),
            Err(tonic::Code::Unauthenticated)
        );
        assert_eq!(
            code("segmentd.v1.Membership", None),
            Err(tonic::Code::Unauthenticated)
        );
    }
}
