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
    let default = if debug { "debug" } else { "info" };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(format!(
            "{default},hyper=info,reqwest=info,notify=info,rmcp=warn"
        ))
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        cli::args::LogFormat::Json => builder.json().with_current_span(false).init(),
        cli::args::LogFormat::Text => {
            let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
            builder.with_ansi(colour).init()
        }
    }
}
