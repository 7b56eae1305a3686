//! The OpenAI streaming format's shapes as providers send them, read without building a
//! `Value` tree: strings borrow from the line unless they hold escapes; unknown fields are
//! ignored; `null` reads as absent. Where providers differ (content as parts, reasoning in
//! three places, usage under `x_groq`, reasoning tokens outside the output count), the
//! difference is read here and reconciled in `sse.rs`.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::Value;

use super::Usage;

mod plain;
pub(super) use plain::plain_text;

#[derive(Deserialize)]
pub(super) struct Chunk<'a> {
    #[serde(default, borrow)]
    pub(super) choices: Option<Vec<Choice<'a>>>,
    #[serde(default)]
    pub(super) usage: Option<UsageIn>,
    /// Groq (2025) reports usage only here.
    #[serde(default)]
    pub(super) x_groq: Option<XGroq>,
    #[serde(default)]
    pub(super) error: Option<Value>,
}

#[derive(Deserialize)]
pub(super) struct XGroq {
    #[serde(default)]
    pub(super) usage: Option<UsageIn>,
}

#[derive(Deserialize)]
pub(super) struct Choice<'a> {
    #[serde(default)]
    pub(super) index: Option<u64>,
    #[serde(default, borrow)]
    pub(super) delta: Option<MessageIn<'a>>,
    /// Non-streamed responses carry `message` instead of `delta`.
    #[serde(default, borrow)]
    pub(super) message: Option<MessageIn<'a>>,
    #[serde(default, borrow)]
    pub(super) finish_reason: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
pub(super) struct MessageIn<'a> {
    /// A string, or (Mistral's Magistral) a list of `thinking` and `text` parts.
    #[serde(default, borrow)]
    pub(super) content: ContentIn<'a>,
    #[serde(default, borrow)]
    pub(super) reasoning_content: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    pub(super) reasoning: Option<Cow<'a, str>>,
    /// OpenRouter and Snowflake Cortex (Claude): `[{type: "reasoning.text", text}]`.
    #[serde(default, borrow)]
    pub(super) reasoning_details: Option<Vec<ReasoningDetail<'a>>>,
    #[serde(default, borrow)]
    pub(super) tool_calls: Option<Vec<ToolCallIn<'a>>>,
}

#[derive(Deserialize)]
pub(super) struct ReasoningDetail<'a> {
    #[serde(default, borrow)]
    pub(super) text: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    pub(super) summary: Option<Cow<'a, str>>,
}

/// `delta.content`: absent, a string (every provider), or content parts (Mistral).
#[derive(Default)]
pub(super) enum ContentIn<'a> {
    #[default]
    None,
    Text(Cow<'a, str>),
    Parts(Vec<PartIn<'a>>),
}

/// A content part: `{"type": "text", "text"}` or `{"type": "thinking", "thinking": [parts] or
/// "text"}`.
#[derive(Deserialize)]
pub(super) struct PartIn<'a> {
    #[serde(default, rename = "type", borrow)]
    pub(super) kind: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    pub(super) text: Option<Cow<'a, str>>,
    #[serde(default)]
    pub(super) thinking: Option<Value>,
}

impl<'de: 'a, 'a> Deserialize<'de> for ContentIn<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for V<'a> {
            type Value = ContentIn<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string or a list of content parts")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(ContentIn::Text(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(ContentIn::Text(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
                Ok(ContentIn::Text(Cow::Owned(v)))
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(ContentIn::None)
            }
            fn visit_none<E>(self) -> Result<Self::Value, E> {
                Ok(ContentIn::None)
            }
            fn visit_some<D2: serde::Deserializer<'de>>(
                self,
                d: D2,
            ) -> Result<Self::Value, D2::Error> {
                d.deserialize_any(self)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Self::Value, A::Error> {
                let mut parts = Vec::new();
                while let Some(p) = seq.next_element::<PartIn<'a>>()? {
                    parts.push(p);
                }
                Ok(ContentIn::Parts(parts))
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

/// The text of a `thinking` part: a string, or parts whose `text` fields are joined.
pub(super) fn thinking_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect(),
        _ => String::new(),
    }
}

#[derive(Deserialize)]
pub(super) struct ToolCallIn<'a> {
    #[serde(default)]
    pub(super) index: Option<u64>,
    #[serde(default, borrow)]
    pub(super) id: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    pub(super) function: Option<FunctionIn<'a>>,
    /// Provider fields the provider needs back (Gemini: `{"google": {"thought_signature"}}`).
    #[serde(default)]
    pub(super) extra_content: Option<Value>,
}

#[derive(Deserialize)]
pub(super) struct FunctionIn<'a> {
    #[serde(default, borrow)]
    pub(super) name: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    pub(super) arguments: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
pub(super) struct UsageIn {
    #[serde(default)]
    pub(super) prompt_tokens: Option<u64>,
    #[serde(default)]
    pub(super) completion_tokens: Option<u64>,
    #[serde(default)]
    pub(super) total_tokens: Option<u64>,
    #[serde(default)]
    pub(super) prompt_tokens_details: Option<TokenDetails>,
    #[serde(default)]
    pub(super) completion_tokens_details: Option<TokenDetails>,
}

#[derive(Deserialize)]
pub(super) struct TokenDetails {
    #[serde(default)]
    pub(super) cached_tokens: Option<u64>,
    #[serde(default)]
    pub(super) reasoning_tokens: Option<u64>,
}

impl UsageIn {
    /// Usage as the host counts it: reasoning tokens are output tokens. OpenAI counts them
    /// inside `completion_tokens`; xAI outside it (then `total_tokens` says so) — added then.
    pub(super) fn counted(&self) -> Usage {
        let prompt = self.prompt_tokens.unwrap_or(0);
        let mut completion = self.completion_tokens.unwrap_or(0);
        let reasoning = self
            .completion_tokens_details
            .as_ref()
            .and_then(|d| d.reasoning_tokens)
            .unwrap_or(0);
        if reasoning > 0 && self.total_tokens == Some(prompt + completion + reasoning) {
            completion += reasoning;
        }
        Usage {
            prompt_tokens: prompt,
            completion_tokens: completion,
            cached_tokens: self
                .prompt_tokens_details
                .as_ref()
                .and_then(|d| d.cached_tokens)
                .unwrap_or(0),
            reasoning_tokens: reasoning,
        }
    }
}
