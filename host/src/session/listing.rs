//! A principal's own sessions: `user.list_sessions` (read from the store, so it works after a
//! restart and from any host; from memory when there is no store) and `user.delete_session`.

use super::event::{ErrorCode, ServerEvent, SessionEntry};
use super::{Client, Sessions};
use crate::store::{Access, Cursor, Listed};

impl Sessions {
    /// `user.list_sessions`: the principal's sessions, newest activity first, `limit` a page.
    pub async fn list(&self, client: &Client, limit: usize, before: Option<&str>) {
        let Some(user) = client.user().cloned() else {
            return unauthenticated(client, None, "Listing sessions");
        };
        let before = match before.map(Cursor::parse) {
            None => None,
            Some(Some(c)) => Some(c),
            Some(None) => {
                return client.error(None, ErrorCode::InvalidField,
                    "Field `before` of `user.list_sessions` must be the `next_before` of an earlier `agent.sessions`")
            }
        };
        let mut listed = match &self.store {
            Some(store) => match store.list(&user, before, limit + 1).await {
                Ok(l) => l,
                Err(e) => {
                    tracing::error!(error = %e, "listing sessions failed");
                    return client.error(
                        None,
                        ErrorCode::StoreUnavailable,
                        &format!("Cannot list sessions: {e}"),
                    );
                }
            },
            None => self.listed_in_memory(&user, before.as_ref(), limit + 1),
        };
        // Sessions this host holds: what runs now and the newest totals over what was written
        // (the order stays the store's, so that the cursor follows it).
        for l in &mut listed {
            if let Some(s) = self
                .registry
                .get(&l.id)
                .filter(|s| s.user == Some(user.clone()))
            {
                let live = s.listed();
                l.running = live.running;
                l.usage = live.usage;
                l.listing.turns = l.listing.turns.max(live.listing.turns);
                if l.listing.title.is_empty() {
                    l.listing.title = live.listing.title;
                }
            }
        }
        let next_before = (listed.len() > limit).then(|| {
            listed.truncate(limit);
            listed.last().map(|l| Cursor::after(l).encode())
        });
        let sessions = listed.into_iter().map(SessionEntry::of).collect();
        client.send_about(
            None,
            &ServerEvent::Sessions {
                sessions,
                next_before: next_before.flatten(),
            },
        );
    }

    /// `user.delete_session`: ends one of the principal's sessions wherever it is — held here,
    /// or only in the store — and deletes it and its events from the store.
    pub async fn delete(&self, client: &mut Client, session_id: &str) {
        let Some(user) = client.user().cloned() else {
            return unauthenticated(client, Some(session_id), "Deleting a session by id");
        };
        let not_found = |client: &Client| {
            client.error(
                Some(session_id),
                ErrorCode::SessionNotFound,
                "Session not found",
            )
        };
        match self.registry.get(session_id) {
            Some(s) if s.user.as_ref() != Some(&user) => return not_found(client),
            Some(s) => {
                s.unstore();
                s.cancel();
                self.remove(session_id);
            }
            None => {
                let Some(store) = &self.store else {
                    return not_found(client);
                };
                let mine = Access {
                    token_hash: None,
                    owner: Some(user.to_string()),
                };
                match store.load(session_id, Some(mine)).await {
                    Ok(Some(_)) => {}
                    Ok(None) => return not_found(client),
                    Err(e) => {
                        return client.error(
                            Some(session_id),
                            ErrorCode::StoreUnavailable,
                            &format!("Cannot delete the session: {e}"),
                        )
                    }
                }
                // A turn of it running on another host stops there.
                if let Some(shared) = store.shared() {
                    let _ = shared.publish_cancel(session_id).await;
                }
            }
        }
        if let Some(store) = &self.store {
            store.delete(session_id, Some(&user));
            if let Err(e) = store.commit().await {
                tracing::warn!(session_id, error = %e, "session deletion acknowledged before the store confirmed it");
            }
        }
        client.sessions.remove(session_id);
        client.send_about(Some(session_id), &ServerEvent::SessionDeleted);
    }

    /// `user`'s sessions this process holds, in a list's order (no store to read).
    fn listed_in_memory(&self, user: &str, before: Option<&Cursor>, limit: usize) -> Vec<Listed> {
        let mut mine: Vec<Listed> = self
            .registry
            .all()
            .iter()
            .filter(|s| s.user.as_deref() == Some(user))
            .map(|s| s.listed())
            .filter(|l| before.is_none_or(|b| b.precedes(l.updated, &l.id)))
            .collect();
        mine.sort_by(|a, b| (b.updated, &b.id).cmp(&(a.updated, &a.id)));
        mine.truncate(limit);
        mine
    }
}

fn unauthenticated(client: &Client, session_id: Option<&str>, what: &str) {
    client.error(
        session_id,
        ErrorCode::Unauthenticated,
        &format!("{what} needs a principal: this host takes no tokens, so a session is reached only by its id and resume token"),
    );
}
