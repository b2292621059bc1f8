//! Who may call the server: nobody checked, one shared token (the incumbent's behaviour), or a
//! tokens file mapping each token to a tenant whose scopes are fenced off from the others'.

use std::path::Path;

use subtle::ConstantTimeEq;

/// The server's authentication mode.
#[derive(Clone, Debug)]
pub enum Auth {
    /// No token required (bind to loopback only).
    Open,
    /// One bearer token; every caller sees the same scopes.
    Token(String),
    /// Each token is a tenant; a tenant's scopes are invisible to every other tenant.
    Tenants(Vec<Tenant>),
}

/// One tenant of a multi-tenant server.
#[derive(Clone, Debug)]
pub struct Tenant {
    /// Its bearer token.
    pub token: String,
    /// Its name: `[A-Za-z0-9_.-]+`, so that no tenant's scope prefix is a prefix of another's.
    pub name: String,
}

impl Auth {
    /// Reads a tokens file: one `TOKEN TENANT` pair per line; blank lines and lines starting
    /// with `#` are skipped.
    pub fn from_tokens_file(path: &Path) -> Result<Auth, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read the tokens file {}: {e}", path.display()))?;
        let mut tenants: Vec<Tenant> = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut fields = line.split_whitespace();
            let (Some(token), Some(name), None) = (fields.next(), fields.next(), fields.next())
            else {
                return Err(format!(
                    "{}:{}: expected `TOKEN TENANT`, two fields",
                    path.display(),
                    n + 1
                ));
            };
            if !name
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || b"_.-".contains(&c))
            {
                return Err(format!(
                    "{}:{}: tenant name {name:?} may use only letters, digits, `_`, `.` and `-`",
                    path.display(),
                    n + 1
                ));
            }
            if token.len() < 16 {
                return Err(format!(
                    "{}:{}: token is shorter than 16 characters; use a long random token",
                    path.display(),
                    n + 1
                ));
            }
            if tenants.iter().any(|t| t.token == token) {
                return Err(format!("{}:{}: token listed twice", path.display(), n + 1));
            }
            tenants.push(Tenant {
                token: token.to_string(),
                name: name.to_string(),
            });
        }
        if tenants.is_empty() {
            return Err(format!(
                "the tokens file {} lists no tokens",
                path.display()
            ));
        }
        Ok(Auth::Tenants(tenants))
    }

    /// The scope prefix of the caller presenting `authorization` (the header's value), or
    /// `None` when it may not call. Tokens are compared in constant time, all of them, so the
    /// answer's timing says nothing about which token came close.
    pub fn scope_prefix(&self, authorization: Option<&[u8]>) -> Option<Vec<u8>> {
        let presented = authorization.and_then(|h| h.strip_prefix(b"Bearer "));
        match self {
            Auth::Open => Some(Vec::new()),
            Auth::Token(token) => {
                let ok = presented.is_some_and(|p| bool::from(p.ct_eq(token.as_bytes())));
                ok.then(Vec::new)
            }
            Auth::Tenants(tenants) => {
                let presented = presented?;
                let mut found = None;
                for t in tenants {
                    if bool::from(presented.ct_eq(t.token.as_bytes())) {
                        found = Some(t);
                    }
                }
                found.map(|t| tenant_prefix(&t.name))
            }
        }
    }

    /// True when every caller shares one namespace (so store-wide operations are allowed).
    pub fn is_single_tenant(&self) -> bool {
        !matches!(self, Auth::Tenants(_))
    }
}

/// The scope prefix of a tenant: its name and a NUL, which names cannot contain.
pub fn tenant_prefix(name: &str) -> Vec<u8> {
    let mut p = b"tenant:".to_vec();
    p.extend_from_slice(name.as_bytes());
    p.push(0);
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_checked() {
        let open = Auth::Open;
        assert_eq!(open.scope_prefix(None), Some(vec![]));
        let one = Auth::Token("secret".into());
        assert_eq!(one.scope_prefix(Some(b"Bearer secret")), Some(vec![]));
        assert_eq!(one.scope_prefix(Some(b"Bearer secreT")), None);
        assert_eq!(one.scope_prefix(Some(b"secret")), None);
        assert_eq!(one.scope_prefix(None), None);
    }

    #[test]
    fn tokens_file_maps_tenants() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        std::fs::write(
            &path,
            "# team tokens\naaaaaaaaaaaaaaaa alpha\n\nbbbbbbbbbbbbbbbb beta-2\n",
        )
        .unwrap();
        let auth = Auth::from_tokens_file(&path).unwrap();
        assert_eq!(
            auth.scope_prefix(Some(b"Bearer aaaaaaaaaaaaaaaa")),
            Some(b"tenant:alpha\0".to_vec())
        );
        assert_eq!(
            auth.scope_prefix(Some(b"Bearer bbbbbbbbbbbbbbbb")),
            Some(b"tenant:beta-2\0".to_vec())
        );
        assert_eq!(auth.scope_prefix(Some(b"Bearer cccccccccccccccc")), None);
        for bad in [
            "short alpha\n",
            "aaaaaaaaaaaaaaaa al/pha\n",
            "aaaaaaaaaaaaaaaa\n",
            "",
            "aaaaaaaaaaaaaaaa a\naaaaaaaaaaaaaaaa b\n",
        ] {
            std::fs::write(&path, bad).unwrap();
            assert!(Auth::from_tokens_file(&path).is_err(), "{bad:?}");
        }
    }
}
