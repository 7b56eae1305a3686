//! Sessions as a principal's list shows them, and who may read a stored session: the types the
//! store's readers share, and [`Store::list`].

use std::net::IpAddr;

use super::{blocking, Reads, Store, StoreError};
use crate::secret::constant_time_eq;

/// A new session as the store is told of it.
#[derive(Debug, Clone)]
pub struct NewSession {
    pub id: String,
    /// Its resume token's hash ([`super::hash_token`]).
    pub token_hash: String,
    /// `SessionSettings` as JSON.
    pub settings: String,
    /// The address of the client that made it.
    pub client: IpAddr,
    /// The principal it belongs to; None: made anonymously.
    pub owner: Option<String>,
    /// The agent's name.
    pub agent: String,
}

/// Who asks to read a stored session: the hash of the resume token it gave (required when
/// anonymous; optional for the owner, a person on a second device) and its principal.
#[derive(Debug, Clone, Default)]
pub struct Access {
    pub token_hash: Option<String>,
    pub owner: Option<String>,
}

impl Access {
    /// Whether this client may have a session stored with `token_hash` and `owner`: the same
    /// principal (or both anonymous), and the token, when one is given (or needed), matches.
    pub fn admits(&self, token_hash: &str, owner: Option<&str>) -> bool {
        if self.owner.as_deref() != owner {
            return false;
        }
        match &self.token_hash {
            Some(h) => constant_time_eq(h, token_hash),
            None => self.owner.is_some(),
        }
    }
}

/// What a session's list entry says besides its activity, kept with the session.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Listing {
    /// The first user message, at most [`TITLE_CHARS`] characters; empty before it.
    pub title: String,
    /// The agent the session talks to: the one it was made with, or the last one a handoff
    /// moved it to (stored with each turn's end).
    pub agent: String,
    /// Unix milliseconds.
    pub created: i64,
    /// Turns finished.
    pub turns: u64,
}

/// A title's length at most, in characters.
pub const TITLE_CHARS: usize = 80;

impl Listing {
    /// The title a first message gives: its text, whitespace folded, cut to [`TITLE_CHARS`].
    pub fn title_of(text: &str) -> String {
        let folded = text.split_whitespace().collect::<Vec<_>>().join(" ");
        match folded.char_indices().nth(TITLE_CHARS) {
            Some((at, _)) => format!("{}…", folded[..at].trim_end()),
            None => folded,
        }
    }
}

/// One session of a principal's list.
#[derive(Debug, Clone, PartialEq)]
pub struct Listed {
    pub id: String,
    pub listing: Listing,
    /// Unix milliseconds of the last turn's start or end.
    pub updated: i64,
    /// A turn was running when last written (its end not stored yet).
    pub running: bool,
    /// The usage totals (JSON as stored; empty before the first turn's end).
    pub usage: String,
}

/// Where a page of a list goes on: after the entry (`updated`, `id`), newest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub updated: i64,
    pub id: String,
}

impl Cursor {
    /// The cursor after `last`.
    pub fn after(last: &Listed) -> Cursor {
        Cursor {
            updated: last.updated,
            id: last.id.clone(),
        }
    }

    /// As the client gets it (`next_before`) and gives it back (`before`).
    pub fn encode(&self) -> String {
        format!("{}:{}", self.updated, self.id)
    }

    pub fn parse(s: &str) -> Option<Cursor> {
        let (updated, id) = s.split_once(':')?;
        let updated = updated.parse().ok()?;
        (!id.is_empty() && id.len() <= 64).then(|| Cursor {
            updated,
            id: id.to_owned(),
        })
    }

    /// Whether an entry (`updated`, `id`) comes after this cursor, newest first.
    pub fn precedes(&self, updated: i64, id: &str) -> bool {
        (updated, id) < (self.updated, self.id.as_str())
    }
}

impl Store {
    /// `owner`'s sessions, newest activity first, at most `limit`, after `before`. Sessions
    /// past `--session-ttl` are not listed.
    pub async fn list(
        &self,
        owner: &str,
        before: Option<Cursor>,
        limit: usize,
    ) -> Result<Vec<Listed>, StoreError> {
        let owner = owner.to_owned();
        match &self.reads {
            Reads::Sqlite { path, ttl, .. } => {
                let (path, ttl) = (path.clone(), *ttl);
                blocking(move || super::sqlite::list(&path, ttl, &owner, before.as_ref(), limit))
                    .await
            }
            Reads::Redis => match &self.shared {
                Some(shared) => shared.list(&owner, before, limit).await,
                None => Ok(Vec::new()),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn titles_are_the_first_message_cut() {
        assert_eq!(
            Listing::title_of("  What is\nthe  weather? "),
            "What is the weather?"
        );
        let long = "a".repeat(200);
        assert_eq!(Listing::title_of(&long).chars().count(), TITLE_CHARS + 1);
        assert_eq!(Listing::title_of("查询上海天气"), "查询上海天气");
    }

    #[test]
    fn access_needs_the_owner_and_the_token_when_given() {
        let owned = |owner: &str, token: Option<&str>| Access {
            token_hash: token.map(str::to_owned),
            owner: Some(owner.to_owned()),
        };
        assert!(owned("alice", None).admits("h", Some("alice")));
        assert!(owned("alice", Some("h")).admits("h", Some("alice")));
        assert!(!owned("alice", Some("x")).admits("h", Some("alice")));
        assert!(!owned("bob", Some("h")).admits("h", Some("alice")));
        assert!(!owned("alice", None).admits("h", None));
        let anonymous = |token: Option<&str>| Access {
            token_hash: token.map(str::to_owned),
            owner: None,
        };
        assert!(anonymous(Some("h")).admits("h", None));
        assert!(!anonymous(None).admits("h", None));
        assert!(!anonymous(Some("h")).admits("h", Some("alice")));
    }

    #[test]
    fn cursors_round_trip_and_order() {
        let c = Cursor {
            updated: 100,
            id: "b".into(),
        };
        assert_eq!(Cursor::parse(&c.encode()), Some(c.clone()));
        assert!(c.precedes(100, "a") && c.precedes(99, "z"));
        assert!(!c.precedes(100, "b") && !c.precedes(101, "a"));
        assert_eq!(Cursor::parse("x:y"), None);
        assert_eq!(Cursor::parse("1:"), None);
    }
}
