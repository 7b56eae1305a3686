//! What model calls cost: each call's usage (as the provider reports it, or estimated from the
//! text when it reports none, and marked so), added up per run and per session; prices
//! (`--prices FILE`) that turn tokens into dollars; and the session budget checked before each
//! model call (`--session-token-budget`, `--session-cost-budget`, `agent_config.budget`).

use std::collections::HashMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::llm::{ChatRequest, ChatResponse};

/// Tokens and calls, added up (a run's, or a session's over its life).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct UsageTotals {
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// Input tokens the provider served from its cache (part of `input_tokens`).
    pub cached_input_tokens: u64,
    /// Output tokens spent reasoning (part of `output_tokens`).
    pub reasoning_tokens: u64,
    pub model_calls: u64,
    /// Dollars, when the models used are priced (`--prices`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cost_usd: Option<f64>,
    /// Some calls reported no usage: their tokens are estimated from the text (4 characters a
    /// token).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub estimated: bool,
}

impl UsageTotals {
    /// Input and output tokens: what a token budget counts.
    pub fn tokens(&self) -> u64 {
        self.input_tokens + self.output_tokens
    }

    /// Adds one model call of `model`.
    pub fn add_call(&mut self, call: &CallUsage, model: &str, prices: Option<&Prices>) {
        self.input_tokens += call.input;
        self.output_tokens += call.output;
        self.cached_input_tokens += call.cached_input;
        self.reasoning_tokens += call.reasoning;
        self.model_calls += 1;
        self.estimated |= call.estimated;
        if let Some(cost) = prices.and_then(|p| p.cost(model, call)) {
            self.cost_usd = Some(self.cost_usd.unwrap_or(0.0) + cost);
        }
    }

    /// As the store keeps it beside the session (JSON), for session lists.
    pub fn to_stored(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Adds `other`'s totals (a child run's, to its parent's session).
    pub fn add(&mut self, other: &UsageTotals) {
        self.input_tokens += other.input_tokens;
        self.output_tokens += other.output_tokens;
        self.cached_input_tokens += other.cached_input_tokens;
        self.reasoning_tokens += other.reasoning_tokens;
        self.model_calls += other.model_calls;
        self.estimated |= other.estimated;
        if let Some(cost) = other.cost_usd {
            self.cost_usd = Some(self.cost_usd.unwrap_or(0.0) + cost);
        }
    }

    /// What was added since `before` (a run's share of the session's totals).
    pub fn since(&self, before: &UsageTotals) -> UsageTotals {
        UsageTotals {
            input_tokens: self.input_tokens - before.input_tokens,
            output_tokens: self.output_tokens - before.output_tokens,
            cached_input_tokens: self.cached_input_tokens - before.cached_input_tokens,
            reasoning_tokens: self.reasoning_tokens - before.reasoning_tokens,
            model_calls: self.model_calls - before.model_calls,
            cost_usd: match (self.cost_usd, before.cost_usd) {
                (Some(a), b) => Some(a - b.unwrap_or(0.0)),
                (None, _) => None,
            },
            estimated: self.estimated && self.model_calls > before.model_calls,
        }
    }
}

/// One model call's tokens.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CallUsage {
    pub input: u64,
    pub output: u64,
    pub cached_input: u64,
    pub reasoning: u64,
    pub estimated: bool,
}

impl CallUsage {
    /// The provider's count, or — when it sent none — an estimate from the request's and the
    /// answer's characters.
    pub fn of(req: &ChatRequest, resp: &ChatResponse) -> CallUsage {
        if let Some(u) = resp.usage {
            return CallUsage {
                input: u.prompt_tokens,
                output: u.completion_tokens,
                cached_input: u.cached_tokens,
                reasoning: u.reasoning_tokens,
                estimated: false,
            };
        }
        let chars_in: usize = req.messages.iter().map(|m| m.weight()).sum::<usize>()
            + req
                .tools
                .iter()
                .map(|t| t.name.len() + t.description.len() + t.parameters.to_string().len())
                .sum::<usize>();
        let chars_out = resp.content.len()
            + resp.reasoning_content.len()
            + resp
                .tool_calls
                .iter()
                .map(|c| c.function.name.len() + c.function.arguments.len())
                .sum::<usize>();
        CallUsage {
            input: chars_in.div_ceil(4) as u64,
            output: chars_out.div_ceil(4) as u64,
            cached_input: 0,
            reasoning: 0,
            estimated: true,
        }
    }
}

/// Dollars per million tokens, per model (`--prices FILE`):
///
/// ```toml
/// [models."gpt-4o-mini"]
/// input = 0.15
/// output = 0.60
/// cached_input = 0.075   # optional: cached input at the input price otherwise
/// ```
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Prices {
    #[serde(default)]
    models: HashMap<String, Price>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
struct Price {
    input: f64,
    output: f64,
    cached_input: Option<f64>,
}

impl Prices {
    pub fn load(path: &Path) -> Result<Prices, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("--prices {}: {e}", path.display()))?;
        Prices::parse(&text).map_err(|e| format!("--prices {}: {e}", path.display()))
    }

    pub fn parse(text: &str) -> Result<Prices, String> {
        let prices: Prices = toml::from_str(text).map_err(|e| e.to_string())?;
        for (model, p) in &prices.models {
            let all = [Some(p.input), Some(p.output), p.cached_input];
            if all.iter().flatten().any(|v| !v.is_finite() || *v < 0.0) {
                return Err(format!(
                    "model {model:?}: prices must be non-negative numbers"
                ));
            }
        }
        Ok(prices)
    }

    /// Dollars for `call` on `model`; None when the model has no price.
    pub fn cost(&self, model: &str, call: &CallUsage) -> Option<f64> {
        let p = self.models.get(model)?;
        let cached = call.cached_input.min(call.input);
        let fresh = call.input - cached;
        let per_m = fresh as f64 * p.input
            + cached as f64 * p.cached_input.unwrap_or(p.input)
            + call.output as f64 * p.output;
        Some(per_m / 1e6)
    }
}

/// A session's budget: tokens (input + output over all its model calls) and dollars.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Budget {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_usd: Option<f64>,
}

impl Budget {
    /// The tighter of two budgets, limit by limit.
    pub fn tighter(self, other: Budget) -> Budget {
        fn lower<T: PartialOrd>(a: Option<T>, b: Option<T>) -> Option<T> {
            match (a, b) {
                (Some(x), Some(y)) => Some(if y < x { y } else { x }),
                (x, y) => x.or(y),
            }
        }
        Budget {
            tokens: lower(self.tokens, other.tokens),
            cost_usd: lower(self.cost_usd, other.cost_usd),
        }
    }

    /// Why no further model call may be made with `spent` so far, if none may.
    pub fn spent(&self, spent: &UsageTotals) -> Option<String> {
        if let Some(limit) = self.tokens {
            if spent.tokens() >= limit {
                return Some(format!(
                    "This session has used its budget of {limit} tokens ({} used), so I stopped before calling the model again.",
                    spent.tokens()
                ));
            }
        }
        if let (Some(limit), Some(cost)) = (self.cost_usd, spent.cost_usd) {
            if cost >= limit {
                return Some(format!(
                    "This session has used its budget of ${limit:.4} (${cost:.4} spent), so I stopped before calling the model again."
                ));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_add_up_and_a_run_is_what_it_added() {
        let prices =
            Prices::parse("[models.\"m\"]\ninput = 1.0\noutput = 2.0\ncached_input = 0.5\n")
                .unwrap();
        let mut s = UsageTotals::default();
        let call = CallUsage {
            input: 1000,
            output: 100,
            cached_input: 400,
            reasoning: 10,
            estimated: false,
        };
        s.add_call(&call, "m", Some(&prices));
        let before = s;
        s.add_call(&call, "m", Some(&prices));
        assert_eq!(
            (
                s.input_tokens,
                s.output_tokens,
                s.cached_input_tokens,
                s.model_calls
            ),
            (2000, 200, 800, 2)
        );
        // 600 fresh × $1 + 400 cached × $0.5 + 100 out × $2, per million.
        let one = (600.0 + 200.0 + 200.0) / 1e6;
        assert!((s.cost_usd.unwrap() - 2.0 * one).abs() < 1e-12);
        let run = s.since(&before);
        assert_eq!((run.input_tokens, run.model_calls), (1000, 1));
        assert!((run.cost_usd.unwrap() - one).abs() < 1e-12);
        // An unpriced model adds no cost.
        let mut u = UsageTotals::default();
        u.add_call(&call, "other", Some(&prices));
        assert_eq!(u.cost_usd, None);
        assert!(Prices::parse("[models.x]\ninput = -1\noutput = 1").is_err());
        assert!(Prices::parse("[models.x]\ninput = 1").is_err());
    }

    #[test]
    fn a_budget_stops_at_its_limit_and_the_tighter_wins() {
        let b = Budget {
            tokens: Some(100),
            cost_usd: None,
        }
        .tighter(Budget {
            tokens: Some(50),
            cost_usd: Some(1.0),
        });
        assert_eq!(
            b,
            Budget {
                tokens: Some(50),
                cost_usd: Some(1.0)
            }
        );
        let mut spent = UsageTotals {
            input_tokens: 30,
            output_tokens: 19,
            ..Default::default()
        };
        assert!(b.spent(&spent).is_none());
        spent.output_tokens = 20;
        assert!(b.spent(&spent).unwrap().contains("budget of 50 tokens"));
    }
}
