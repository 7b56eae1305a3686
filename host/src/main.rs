//! The `myagent-host` command line: `serve` a plugin over WebSocket, `inspect` a plugin, `new`
//! to scaffold one. Glue over the library; the commands live in `cli/`.

mod cli;

use std::process::ExitCode;

use clap::Parser;
use cli::args::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Inspect {
            plugins,
            json,
            mcp_config,
        } => {
            // Each in turn; the first failure is the exit status.
            let codes: Vec<ExitCode> = plugins
                .iter()
                .map(|p| cli::inspect::inspect(p, json, mcp_config.as_deref()))
                .collect();
            codes
                .into_iter()
                .find(|c| *c != ExitCode::SUCCESS)
                .unwrap_or(ExitCode::SUCCESS)
        }
        Command::New { path, api_path } => cli::inspect::new_plugin(&path, api_path),
        Command::PluginWorker {
            source,
            socket_fd,
            lib_fd,
        } => myagent_host::plugin::worker::child::run(&source, socket_fd, lib_fd),
        Command::Serve(args) => {
            init_logging(args.debug, args.log_format);
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => return fail(&format!("cannot start the runtime: {e}")),
            };
            let result = rt.block_on(cli::serve::serve(args));
            // Do not wait for blocking threads: a plugin tool that ignores its deadline must not
            // keep the process alive past --shutdown-timeout (it is abandoned, and counted).
            rt.shutdown_background();
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(&format!("{e:#}")),
            }
        }
    }
}

pub(crate) fn fail(msg: &str) -> ExitCode {
    eprintln!("error: {msg}");
    ExitCode::FAILURE
}

/// Logs to stderr: text, coloured only when stderr is a terminal (a file, journald or `docker
/// logs` get no escape codes) and NO_COLOR is unset; or JSON lines.
fn init_logging(debug: bool, format: cli::args::LogFormat) {
    use std::io::IsTerminal;
    use tracing_subscriber::prelude::*;
    let default = if debug { "debug" } else { "info" };
    let default = format!("{default},hyper=info,reqwest=info,notify=info,rmcp=warn");
    let spec = std::env::var("RUST_LOG").unwrap_or_default();
    let (targets, env) = log_filter(&spec, &default);
    let layer = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let registry = tracing_subscriber::registry().with(targets).with(env);
    match format {
        cli::args::LogFormat::Json => registry.with(layer.json().with_current_span(false)).init(),
        cli::args::LogFormat::Text => {
            let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
            registry.with(layer.with_ansi(colour)).init()
        }
    }
}

/// The log filter for `RUST_LOG`'s `spec` (`default` when it is empty or invalid): targets and
/// levels — the usual spec — as a `Targets` filter, and only a spec with span or field
/// directives (`[…]`, `{…}`) as an `EnvFilter`, which takes a lock every thread shares on each
/// enter and exit of a span: each poll of a session's run.
fn log_filter(
    spec: &str,
    default: &str,
) -> (
    Option<tracing_subscriber::filter::Targets>,
    Option<tracing_subscriber::EnvFilter>,
) {
    let spec = match spec.trim() {
        "" => default,
        s => s,
    };
    if !spec.contains(['[', '{']) {
        if let Ok(targets) = spec.parse() {
            return (Some(targets), None);
        }
    }
    match tracing_subscriber::EnvFilter::try_new(spec) {
        Ok(env) => (None, Some(env)),
        Err(_) => log_filter(default, default),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_spec_of_targets_and_levels_needs_no_env_filter() {
        let default = "info,hyper=info,rmcp=warn";
        for spec in [
            "",
            "  ",
            "warn,myagent_host=info",
            "debug",
            "myagent_host::store=trace",
        ] {
            let (targets, env) = super::log_filter(spec, default);
            assert!(targets.is_some() && env.is_none(), "{spec:?}");
        }
        let (targets, env) = super::log_filter("info,[session{session_id=abc}]=debug", default);
        assert!(targets.is_none() && env.is_some());
        // An invalid spec falls back to the default, as before.
        let (targets, _) = super::log_filter("this is=not a level", default);
        let targets = targets.expect("the default");
        assert!(targets.would_enable("rmcp", &tracing::Level::WARN));
        assert!(!targets.would_enable("rmcp", &tracing::Level::INFO));
    }
}
