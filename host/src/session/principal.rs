//! Who is asking: the principals a host knows (`--auth-tokens-file`, TOML; `--auth-token` is
//! one principal, `default`) and the tiers their quotas come from. Tokens are kept as SHA-256
//! digests only, compared in constant time, never logged. The table is replaced whole when
//! its file changes ([`Principals::replace`]); a connection keeps the principal it
//! authenticated as, and its tier's limits are looked up at each message (a changed tier
//! applies at once).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use serde::Deserialize;
use sha2::{Digest, Sha256};

/// The principal every `--auth-token` token (and `MYAGENT_AUTH_TOKENS`) stands for.
pub const DEFAULT_USER: &str = "default";

/// An authenticated caller: sessions belong to its `user`; its `tier` names its quotas.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub user: Arc<str>,
    pub tier: Option<Arc<str>>,
}

/// A tier's limits, each optional (absent: no limit of that kind).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tier {
    /// Input + output tokens of the principal's model calls per UTC day.
    pub tokens_per_day: Option<u64>,
    /// The same per clock hour.
    pub tokens_per_hour: Option<u64>,
    /// Messages (each can start a model call) per minute, over all the principal's sessions.
    pub messages_per_minute: Option<u64>,
    /// Runs of the principal's sessions running at once.
    pub concurrent_runs: Option<u64>,
}

/// The tokens file as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    principal: Vec<Entry>,
    #[serde(default)]
    tier: HashMap<String, Tier>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    user: String,
    token: Option<String>,
    token_sha256: Option<String>,
    tier: Option<String>,
}

/// A parsed table: every accepted token's digest and whose it is, and the tiers.
#[derive(Debug, Default, Clone)]
pub struct Table {
    tokens: Vec<([u8; 32], Principal)>,
    tiers: HashMap<String, Tier>,
}

impl Table {
    /// The `--auth-token` tokens: one principal, [`DEFAULT_USER`], without a tier.
    pub fn from_tokens<S: AsRef<str>>(tokens: &[S]) -> Table {
        let default = Principal {
            user: Arc::from(DEFAULT_USER),
            tier: None,
        };
        Table {
            tokens: tokens
                .iter()
                .map(|t| (digest(t.as_ref()), default.clone()))
                .collect(),
            tiers: HashMap::new(),
        }
    }

    /// Parses a tokens file (TOML: `[[principal]]` entries and `[tier.NAME]` tables). Every
    /// mistake is an error naming the entry: an unknown key, a token given twice or both ways,
    /// an unknown tier, a digest that is not 64 hex digits, a user with two tiers.
    pub fn parse(text: &str) -> Result<Table, String> {
        let file: File = toml::from_str(text).map_err(|e| e.to_string())?;
        let mut table = Table {
            tokens: Vec::new(),
            tiers: file.tier,
        };
        let mut tiers_of: HashMap<String, Option<String>> = HashMap::new();
        for (i, e) in file.principal.into_iter().enumerate() {
            let at = format!("principal {} (user {:?})", i + 1, e.user);
            if e.user.trim().is_empty() || e.user.len() > 128 {
                return Err(format!("{at}: `user` must be 1 to 128 characters"));
            }
            let digest = match (&e.token, &e.token_sha256) {
                (Some(t), None) if !t.is_empty() => digest(t),
                (None, Some(h)) => parse_hex(h)
                    .ok_or_else(|| format!("{at}: `token_sha256` is not 64 hex digits"))?,
                _ => {
                    return Err(format!(
                        "{at}: give exactly one of `token` and `token_sha256`"
                    ))
                }
            };
            if let Some(t) = &e.tier {
                if !table.tiers.contains_key(t) {
                    return Err(format!("{at}: no [tier.{t}] is defined"));
                }
            }
            if let Some(earlier) = tiers_of.insert(e.user.clone(), e.tier.clone()) {
                if earlier != e.tier {
                    return Err(format!("{at}: the same user is given another tier earlier"));
                }
            }
            if table.tokens.iter().any(|(d, _)| *d == digest) {
                return Err(format!("{at}: this token is already another entry's"));
            }
            let principal = Principal {
                user: Arc::from(e.user.as_str()),
                tier: e.tier.as_deref().map(Arc::from),
            };
            table.tokens.push((digest, principal));
        }
        Ok(table)
    }

    /// Adds `other`'s tokens (the file's and `--auth-token`'s together).
    pub fn merge(mut self, other: Table) -> Result<Table, String> {
        for (d, p) in other.tokens {
            if self.tokens.iter().any(|(mine, _)| *mine == d) {
                return Err("a token is given both in the tokens file and by --auth-token".into());
            }
            self.tokens.push((d, p));
        }
        self.tiers.extend(other.tiers);
        Ok(self)
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// Principals (users) and tokens, for the start-up line.
    pub fn counts(&self) -> (usize, usize) {
        let mut users: Vec<&str> = self.tokens.iter().map(|(_, p)| &*p.user).collect();
        users.sort_unstable();
        users.dedup();
        (users.len(), self.tokens.len())
    }
}

/// The host's principals, replaced whole on reload.
#[derive(Debug, Default)]
pub struct Principals {
    table: RwLock<Arc<Table>>,
}

impl Principals {
    pub fn new(table: Table) -> Principals {
        Principals {
            table: RwLock::new(Arc::new(table)),
        }
    }

    fn current(&self) -> Arc<Table> {
        self.table.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Puts a reloaded table in place: new authentications and every quota check use it.
    pub fn replace(&self, table: Table) {
        *self.table.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(table);
    }

    /// Whether a token is required (any principal is configured).
    pub fn required(&self) -> bool {
        !self.current().is_empty()
    }

    /// The principal `token` belongs to. Every entry is compared (in constant time, digest
    /// against digest), so how long this takes says nothing about which entry nearly matched.
    pub fn authenticate(&self, token: &str) -> Option<Principal> {
        let d = digest(token);
        let table = self.current();
        let mut found = None;
        for (k, p) in &table.tokens {
            if crate::secret::constant_time_eq_bytes(k, &d) && found.is_none() {
                found = Some(p.clone());
            }
        }
        found
    }

    /// The limits of tier `name` as the table has them now (a removed tier: none).
    pub fn tier(&self, name: &str) -> Option<Tier> {
        self.current().tiers.get(name).cloned()
    }

    pub fn token_count(&self) -> usize {
        self.current().tokens.len()
    }
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

fn parse_hex(h: &str) -> Option<[u8; 32]> {
    let h = h.trim();
    if h.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(h.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"
        [[principal]]
        user = "alice"
        token = "alice-secret"
        tier = "free"

        [[principal]]
        user = "bob"
        token_sha256 = "81b637d8fcd2c6da6359e6963113a1170de795e4b725b84d1e0b4cfd9ec58ce9"

        [tier.free]
        tokens_per_day = 200000
        messages_per_minute = 30
        concurrent_runs = 2
    "#;

    #[test]
    fn a_file_names_principals_and_tiers() {
        let p = Principals::new(Table::parse(FILE).unwrap());
        let alice = p.authenticate("alice-secret").unwrap();
        assert_eq!(&*alice.user, "alice");
        assert_eq!(alice.tier.as_deref(), Some("free"));
        // sha256("bob") is the digest given for bob.
        assert_eq!(&*p.authenticate("bob").unwrap().user, "bob");
        assert!(p.authenticate("alice-secre").is_none());
        assert!(p.authenticate("").is_none());
        let free = p.tier("free").unwrap();
        assert_eq!(free.tokens_per_day, Some(200_000));
        assert_eq!(free.concurrent_runs, Some(2));
        assert_eq!(free.tokens_per_hour, None);
    }

    #[test]
    fn mistakes_are_named() {
        for (bad, says) in [
            ("[[principal]]\nuser = \"a\"\n", "exactly one"),
            ("[[principal]]\nuser = \"a\"\ntoken = \"x\"\ntier = \"gold\"\n", "no [tier.gold]"),
            ("[[principal]]\nuser = \"a\"\ntoken_sha256 = \"zz\"\n", "64 hex"),
            ("[[principal]]\nuser = \"a\"\ntoken = \"x\"\n[[principal]]\nuser = \"b\"\ntoken = \"x\"\n", "already"),
            ("[[principal]]\nuser = \"a\"\ntoken = \"x\"\nrole = \"admin\"\n", "unknown field"),
            ("[tier.free]\ntokens_per_week = 1\n", "unknown field"),
        ] {
            let e = Table::parse(bad).unwrap_err();
            assert!(e.contains(says), "{bad:?}: {e}");
        }
    }

    #[test]
    fn flat_tokens_are_one_principal() {
        let p = Principals::new(Table::from_tokens(&["a", "b"]));
        assert_eq!(p.authenticate("a"), p.authenticate("b"));
        assert_eq!(&*p.authenticate("a").unwrap().user, DEFAULT_USER);
        assert!(p.required() && !Principals::default().required());
        p.replace(Table::default());
        assert!(p.authenticate("a").is_none());
    }
}
