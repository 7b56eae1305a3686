//! Who may connect: `--auth-token`, `--auth-token-file` and `--auth-tokens-file` read into
//! one table of principals, and the tokens file re-read when it changes (checked once a
//! second: an editor's save, a `mv` over it, a config-management write all count; a file that
//! no longer parses is logged and the table in use kept).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use myagent_host::session::principal::{Principals, Table};

use super::args::ServeArgs;

/// The flat tokens — `--auth-token` / `MYAGENT_AUTH_TOKENS` and `--auth-token-file` — as one
/// principal, `default`. They do not change while the host runs.
pub fn flat(args: &ServeArgs) -> anyhow::Result<Table> {
    let mut tokens: Vec<String> = args
        .auth_tokens
        .iter()
        .map(|t| t.trim().to_owned())
        .filter(|t| !t.is_empty())
        .collect();
    if let Some(f) = &args.auth_token_file {
        let text = std::fs::read_to_string(f)
            .with_context(|| format!("cannot read --auth-token-file {}", f.display()))?;
        let before = tokens.len();
        tokens.extend(
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(str::to_owned),
        );
        if tokens.len() == before {
            anyhow::bail!("--auth-token-file {} holds no token", f.display());
        }
    }
    Ok(Table::from_tokens(&tokens))
}

/// Every accepted token: the `flat` ones plus the principals of `--auth-tokens-file`.
pub fn principals(args: &ServeArgs, flat: &Table) -> anyhow::Result<Table> {
    match &args.auth_tokens_file {
        None => Ok(flat.clone()),
        Some(f) => with_file(f, flat),
    }
}

/// The principals of tokens file `path`, with the flat tokens.
fn with_file(path: &Path, flat: &Table) -> anyhow::Result<Table> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read --auth-tokens-file {}", path.display()))?;
    let table = Table::parse(&text)
        .map_err(|e| anyhow::anyhow!("--auth-tokens-file {}: {e}", path.display()))?;
    if table.is_empty() {
        anyhow::bail!("--auth-tokens-file {} names no principal", path.display());
    }
    table
        .merge(flat.clone())
        .map_err(|e| anyhow::anyhow!("{e}"))
}

/// Re-reads `--auth-tokens-file` when its contents change and puts the new table in place
/// (with the `flat` tokens). Ends when `principals` is dropped.
pub fn watch(args: &ServeArgs, principals: &Arc<Principals>, flat: Table) {
    let Some(path) = args.auth_tokens_file.clone() else {
        return;
    };
    let weak = Arc::downgrade(principals);
    tokio::spawn(async move {
        let mut seen = std::fs::read(&path).ok();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            let Some(principals) = weak.upgrade() else {
                return;
            };
            let now = std::fs::read(&path).ok();
            if now == seen {
                continue;
            }
            seen = now;
            match with_file(&path, &flat) {
                Ok(table) => {
                    let (users, tokens) = table.counts();
                    principals.replace(table);
                    tracing::info!(users, tokens, file = %path.display(), "principals reloaded");
                }
                Err(e) => {
                    tracing::error!(error = %e, "the tokens file changed but cannot be used; keeping the principals in use")
                }
            }
        }
    });
}
