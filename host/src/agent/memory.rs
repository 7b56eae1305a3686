//! A session's conversation, trimmed to a budget on turn boundaries.
//!
//! A *turn* starts at a user message and holds everything up to the next one. Trimming drops
//! whole turns from the front, so an assistant message with `tool_calls` is never separated from
//! its `tool` replies (OpenManus trims by message count and gets HTTP 400 for it).

use crate::llm::{ChatMessage, Role};

#[derive(Debug, Clone)]
pub struct Memory {
    messages: Vec<ChatMessage>,
    /// Budget in characters of message text (a cheap proxy for tokens: ~4 chars per token).
    budget_chars: usize,
    /// Turns trimmed away so far.
    dropped_turns: u64,
    /// The session's model usage over its life (stored with the memory).
    pub usage: crate::agent::usage::UsageTotals,
}

impl Memory {
    pub fn new(budget_chars: usize) -> Memory {
        Memory {
            messages: Vec::new(),
            budget_chars,
            dropped_turns: 0,
            usage: Default::default(),
        }
    }

    /// The memory as the session store keeps it — the one definition of that format:
    /// `{"messages": [...], "dropped_turns": N, "usage": {...}}`.
    pub fn to_stored(&self) -> String {
        serde_json::json!({"messages": self.messages, "dropped_turns": self.dropped_turns, "usage": self.usage})
            .to_string()
    }

    /// A memory from [`Memory::to_stored`]'s text (empty or unreadable: an empty memory).
    pub fn from_stored(stored: &str, budget_chars: usize) -> Memory {
        #[derive(serde::Deserialize, Default)]
        struct Saved {
            messages: Vec<ChatMessage>,
            dropped_turns: u64,
            #[serde(default)]
            usage: crate::agent::usage::UsageTotals,
        }
        let saved: Saved = serde_json::from_str(stored).unwrap_or_default();
        Memory {
            messages: saved.messages,
            budget_chars,
            dropped_turns: saved.dropped_turns,
            usage: saved.usage,
        }
    }

    pub fn messages(&self) -> &[ChatMessage] {
        &self.messages
    }

    pub fn push(&mut self, m: ChatMessage) {
        self.messages.push(m);
    }

    /// How many of the oldest turns the budget has dropped.
    pub fn dropped_turns(&self) -> u64 {
        self.dropped_turns
    }

    pub fn len(&self) -> usize {
        self.messages.len()
    }

    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }

    /// Drops messages after `len` (used to roll back an unfinished step).
    pub fn truncate(&mut self, len: usize) {
        self.messages.truncate(len);
    }

    /// Drops the reasoning kept on this turn's messages (from `from`): providers want it back
    /// only within the turn that made it.
    pub fn forget_reasoning(&mut self, from: usize) {
        for m in self.messages.iter_mut().skip(from) {
            m.reasoning_content = None;
        }
    }

    fn weight(&self) -> usize {
        self.messages.iter().map(ChatMessage::weight).sum()
    }

    /// Drops the oldest whole turns until the budget holds; the newest turn is always kept.
    pub fn trim(&mut self) {
        let mut weight = self.weight();
        while weight > self.budget_chars {
            // The second user message starts the second turn; without one, only the current
            // turn is left and it stays.
            let Some(second_turn) = self
                .messages
                .iter()
                .enumerate()
                .skip(1)
                .find(|(_, m)| m.role == Role::User)
                .map(|(i, _)| i)
            else {
                break;
            };
            weight -= self.messages[..second_turn]
                .iter()
                .map(ChatMessage::weight)
                .sum::<usize>();
            self.messages.drain(..second_turn);
            self.dropped_turns += 1;
        }
    }

    /// True when every assistant `tool_calls` message is followed by exactly its replies.
    pub fn pairs_intact(&self) -> bool {
        let mut i = 0;
        while i < self.messages.len() {
            let m = &self.messages[i];
            if m.role == Role::Tool {
                return false; // a reply without its call
            }
            i += 1;
            for call in &m.tool_calls {
                match self.messages.get(i) {
                    Some(r)
                        if r.role == Role::Tool
                            && r.tool_call_id.as_deref() == Some(call.id.as_str()) =>
                    {
                        i += 1
                    }
                    _ => return false,
                }
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::{FunctionCall, ToolCall};

    fn call(id: &str) -> ToolCall {
        ToolCall {
            id: id.into(),
            kind: "function".into(),
            function: FunctionCall {
                name: "t".into(),
                arguments: "{}".into(),
            },
            extra_content: None,
        }
    }

    #[test]
    fn trimming_keeps_tool_pairs_and_the_current_turn() {
        let mut m = Memory::new(400);
        for turn in 0..10 {
            m.push(ChatMessage::user(format!(
                "question {turn} {}",
                "x".repeat(50)
            )));
            m.push(ChatMessage::assistant(
                None,
                vec![call(&format!("a{turn}")), call(&format!("b{turn}"))],
            ));
            m.push(ChatMessage::tool(&format!("a{turn}"), "y".repeat(40)));
            m.push(ChatMessage::tool(&format!("b{turn}"), "y".repeat(40)));
            m.push(ChatMessage::assistant(Some("answer".into()), vec![]));
            m.trim();
            assert!(m.pairs_intact(), "turn {turn}: {:?}", m.messages());
            assert_eq!(m.messages()[0].role, Role::User);
        }
        assert!(m.weight() <= 400);
        assert!(m.messages()[0].text().unwrap().starts_with("question "));
        // An oversized single turn is kept whole.
        let mut m = Memory::new(10);
        m.push(ChatMessage::user("a long question"));
        m.trim();
        assert_eq!(m.len(), 1);
    }
}
