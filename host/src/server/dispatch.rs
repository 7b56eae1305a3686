//! The WebSocket door's requests, each turned into one call on the session engine.

use std::sync::Arc;

use super::protocol::ClientMessage;
use crate::agent::Decision;
use crate::session::{Client, Sessions};

/// Acts on one parsed client message.
pub(crate) async fn dispatch(sessions: &Arc<Sessions>, client: &mut Client, msg: ClientMessage) {
    match msg {
        ClientMessage::CreateSession {
            agent,
            agent_config,
            approves,
        } => {
            client.approves = approves;
            sessions
                .create(client, agent.as_deref(), agent_config)
                .await
        }
        ClientMessage::Message {
            session_id,
            content,
            on_busy,
            trace,
        } => {
            sessions
                .message(client, &session_id, content, (on_busy, trace))
                .await
        }
        ClientMessage::Cancel { session_id } => sessions.cancel(client, &session_id),
        ClientMessage::GetHistory { session_id } => sessions.history(client, &session_id),
        ClientMessage::CloseSession { session_id } => sessions.close(client, &session_id),
        ClientMessage::Resume {
            session_id,
            resume_token,
            last_seq,
            approves,
        } => {
            client.approves = approves;
            sessions
                .resume_session(client, &session_id, resume_token.as_deref(), last_seq)
                .await
        }
        ClientMessage::ListSessions { limit, before } => {
            sessions.list(client, limit, before.as_deref()).await
        }
        ClientMessage::DeleteSession { session_id } => sessions.delete(client, &session_id).await,
        ClientMessage::ToolApproval {
            session_id,
            step_id,
            approved,
            reason,
        } => sessions.approve(client, &session_id, &step_id, Decision { approved, reason }),
        ClientMessage::Custom { session_id, event } => sessions.custom(client, &session_id, event),
    }
}
