//! Bearer-token authentication for the gRPC API and `lift serve`: each token belongs to a
//! tenant, and a tenant sees only its own jobs.
//!
//! Tokens come from a file (`LIFT_AUTH_TOKENS_FILE`) and/or the environment
//! (`LIFT_AUTH_TOKENS`), one `tenant:token` per line (the variable also takes commas). Only
//! SHA-256 digests of the tokens are kept, and a presented token is compared with every one
//! of them in constant time, so neither timing nor a memory dump gives a token away. With no
//! tokens configured authentication is off and every caller is the open tenant.

use std::fmt;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::LiftError;

/// Shortest accepted token: anything guessable is refused at startup.
pub const MIN_TOKEN_CHARS: usize = 16;

/// Who is calling. `Open` when authentication is off: it may see every job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tenant {
    Open,
    Named(String),
}

impl Tenant {
    /// The name stored with a job this tenant submits (empty for the open tenant).
    pub fn name(&self) -> &str {
        match self {
            Tenant::Open => "",
            Tenant::Named(name) => name,
        }
    }

    /// Whether this caller may read, watch, cancel or ask the job `job` owned by `owner`.
    pub fn check_owns(&self, job: &impl fmt::Display, owner: &str) -> Result<(), LiftError> {
        if self.owns(owner) {
            Ok(())
        } else {
            Err(LiftError::PermissionDenied(format!(
                "job {job} belongs to another tenant"
            )))
        }
    }

    pub fn owns(&self, owner: &str) -> bool {
        match self {
            Tenant::Open => true,
            Tenant::Named(name) => name == owner,
        }
    }
}

/// The configured tokens, as digests.
#[derive(Clone)]
pub struct TokenTable {
    entries: Vec<(String, [u8; 32])>,
}

impl fmt::Debug for TokenTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tenants: Vec<&str> = self.entries.iter().map(|(t, _)| t.as_str()).collect();
        f.debug_struct("TokenTable")
            .field("tenants", &tenants)
            .finish()
    }
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl TokenTable {
    /// Parses `tenant:token` entries, one per line or comma-separated; `#` starts a comment.
    /// `source` names where the text came from, for error messages (never the token).
    pub fn parse(text: &str, source: &str) -> Result<Self, LiftError> {
        let mut entries = Vec::new();
        for (number, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or_default();
            for entry in line.split(',').map(str::trim).filter(|e| !e.is_empty()) {
                let invalid = |why: &str| {
                    LiftError::InvalidArgument(format!(
                        "{source}, line {}: {why} (expected tenant:token)",
                        number + 1
                    ))
                };
                let (tenant, token) = entry
                    .split_once(':')
                    .ok_or_else(|| invalid("an entry has no ':'"))?;
                let (tenant, token) = (tenant.trim(), token.trim());
                let tenant_ok = !tenant.is_empty()
                    && tenant.len() <= 64
                    && tenant
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
                if !tenant_ok {
                    return Err(invalid(
                        "a tenant name must be 1 to 64 characters of A-Z a-z 0-9 . _ -",
                    ));
                }
                if token.chars().count() < MIN_TOKEN_CHARS || token.chars().any(char::is_whitespace)
                {
                    return Err(invalid(&format!(
                        "a token must be at least {MIN_TOKEN_CHARS} characters without spaces"
                    )));
                }
                entries.push((tenant.to_string(), digest(token)));
            }
        }
        Ok(Self { entries })
    }

    /// The tokens of `LIFT_AUTH_TOKENS_FILE` (`tokens_file`) and `LIFT_AUTH_TOKENS`
    /// (`inline`); None when both are empty (authentication off).
    pub fn load(tokens_file: &str, inline: Option<&str>) -> Result<Option<Self>, LiftError> {
        let mut entries = Vec::new();
        if !tokens_file.trim().is_empty() {
            let text = std::fs::read_to_string(tokens_file).map_err(|e| {
                LiftError::InvalidArgument(format!(
                    "cannot read the tokens file {tokens_file}: {e}"
                ))
            })?;
            entries.extend(Self::parse(&text, tokens_file)?.entries);
        }
        if let Some(inline) = inline.filter(|t| !t.trim().is_empty()) {
            entries.extend(Self::parse(inline, "LIFT_AUTH_TOKENS")?.entries);
        }
        if entries.is_empty() {
            return Ok(None);
        }
        Ok(Some(Self { entries }))
    }

    /// The tenant whose token is `token`, comparing against every entry (no early exit).
    pub fn tenant_of(&self, token: &str) -> Option<&str> {
        let presented = digest(token);
        let mut found = None;
        for (tenant, expected) in &self.entries {
            if bool::from(presented.ct_eq(expected)) {
                found = Some(tenant.as_str());
            }
        }
        found
    }

    /// The tenant of an `Authorization` header value (`Bearer <token>`).
    pub fn authenticate(&self, authorization: Option<&str>) -> Result<Tenant, LiftError> {
        let header = authorization.ok_or_else(|| {
            LiftError::Unauthenticated(
                "missing bearer token (authorization: Bearer <token>)".into(),
            )
        })?;
        let token = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .ok_or_else(|| {
                LiftError::Unauthenticated("the authorization header is not a bearer token".into())
            })?;
        self.tenant_of(token.trim())
            .map(|tenant| Tenant::Named(tenant.to_string()))
            .ok_or_else(|| LiftError::Unauthenticated("invalid bearer token".into()))
    }
}

/// How a server (the coordinator's gRPC, `lift serve`) lets clients in: bearer tokens and TLS,
/// each optional.
#[derive(Clone, Default)]
pub struct ServerSecurity {
    pub tokens: Option<std::sync::Arc<TokenTable>>,
    pub tls: Option<crate::tls::ServerTls>,
}

impl ServerSecurity {
    /// From the configuration (the tokens file and `LIFT_AUTH_TOKENS`); fails on unreadable
    /// or invalid files.
    pub fn from_config(config: &crate::config::Config) -> Result<Self, LiftError> {
        Ok(Self {
            tokens: TokenTable::load(&config.auth_tokens_file, config.auth_tokens.expose())?
                .map(std::sync::Arc::new),
            tls: crate::tls::ServerTls::from_config(config)?,
        })
    }

    /// No tokens, no TLS: embedded mode's loopback server.
    pub fn open() -> Self {
        Self::default()
    }
}

/// The server side of the authentication: a table, or nothing (open).
pub fn authenticate(
    tokens: Option<&TokenTable>,
    authorization: Option<&str>,
) -> Result<Tenant, LiftError> {
    match tokens {
        None => Ok(Tenant::Open),
        Some(tokens) => tokens.authenticate(authorization),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "tenant-a-token-0123456789";
    const B: &str = "tenant-b-token-9876543210";

    fn table() -> TokenTable {
        TokenTable::parse(
            &format!("# tenants\nalpha:{A}\n\nbeta : {B}  # the second\n"),
            "test",
        )
        .unwrap()
    }

    #[test]
    fn tokens_map_to_their_tenants() {
        let table = table();
        assert_eq!(table.tenant_of(A), Some("alpha"));
        assert_eq!(table.tenant_of(B), Some("beta"));
        assert_eq!(table.tenant_of("tenant-a-token-012345678"), None);
        assert_eq!(
            table.authenticate(Some(&format!("Bearer {B}"))).unwrap(),
            Tenant::Named("beta".into())
        );
    }

    #[test]
    fn missing_or_wrong_credentials_are_unauthenticated() {
        let table = table();
        for header in [None, Some("Basic abc"), Some("Bearer nope-nope-nope-nope")] {
            let error = table.authenticate(header).unwrap_err();
            assert!(matches!(error, LiftError::Unauthenticated(_)), "{header:?}");
        }
    }

    #[test]
    fn debug_output_names_tenants_not_tokens() {
        let text = format!("{:?}", table());
        assert!(text.contains("alpha") && !text.contains(A), "{text}");
    }

    #[test]
    fn bad_entries_are_refused_with_the_line_and_without_the_token() {
        for (text, why) in [
            ("alpha", "no ':'"),
            ("alpha:short", "at least 16"),
            ("al pha:tenant-a-token-0123456789", "tenant name"),
        ] {
            let error = TokenTable::parse(&format!("\n{text}"), "tokens.txt").unwrap_err();
            let message = error.to_string();
            assert!(
                message.contains("tokens.txt, line 2") && message.contains(why),
                "{message}"
            );
            assert!(!message.contains("0123456789"), "{message}");
        }
    }

    #[test]
    fn inline_tokens_take_commas_and_nothing_configured_means_open() {
        let table = TokenTable::load("", Some(&format!("alpha:{A}, beta:{B}")))
            .unwrap()
            .unwrap();
        assert_eq!(table.tenant_of(B), Some("beta"));
        assert!(TokenTable::load("", None).unwrap().is_none());
        assert_eq!(authenticate(None, None).unwrap(), Tenant::Open);
    }

    #[test]
    fn tenants_own_only_their_jobs() {
        let alpha = Tenant::Named("alpha".into());
        assert!(alpha.check_owns(&"j1", "alpha").is_ok());
        assert!(matches!(
            alpha.check_owns(&"j1", "beta"),
            Err(LiftError::PermissionDenied(_))
        ));
        assert!(Tenant::Open.check_owns(&"j1", "beta").is_ok());
    }
}
