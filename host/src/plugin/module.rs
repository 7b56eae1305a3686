//! Opening a plugin library and checking it is one of ours: `dlopen` (through the copy's
//! descriptor), the root module, the versions and the manifest's JSON — in process and in the
//! worker alike, so a load error reads the same wherever the build runs — and every load error.

use std::path::{Path, PathBuf};

use abi_stable::library::{lib_header_from_path, LibraryError, RootModule};
use abi_stable::std_types::{RErr, ROk};
use myagent_plugin_api::abi::PluginModule_Ref;
use myagent_plugin_api::API_VERSION;

/// Why a plugin could not be loaded. Each message is meant to be shown to the user as is. A
/// worker sends the one it met in its hello (serialised), so the host reports it unchanged.
#[derive(Debug, thiserror::Error, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LoadError {
    #[error("plugin file not found: {0}")]
    NotFound(PathBuf),
    /// Only the host copies builds; a worker never sends this one.
    #[error("could not copy the plugin to {path}: {source}")]
    #[serde(skip)]
    Copy {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("not a loadable shared library: {path}: {reason}")]
    NotALibrary { path: PathBuf, reason: String },
    #[error("not a myagent plugin: {0} exports no agent (was it built with `export_agent!` and crate-type = [\"cdylib\"]?)")]
    NotAPlugin(PathBuf),
    #[error("incompatible plugin: built against myagent-plugin-api {plugin}, this host supports {host}; rebuild the plugin against myagent-plugin-api {host}")]
    IncompatibleApi { plugin: String, host: String },
    #[error("incompatible plugin: built with abi_stable {plugin}, this host uses abi_stable {host}; rebuild the plugin against myagent-plugin-api {api}")]
    IncompatibleAbiStable {
        plugin: String,
        host: String,
        api: String,
    },
    #[error("incompatible plugin: its interface types differ from this host's (same version number, different definitions): {detail}")]
    AbiMismatch { detail: String },
    #[error("incompatible plugin: plugin API version {plugin}, this host speaks version {host}")]
    ApiVersion { plugin: u32, host: u32 },
    #[error("the plugin failed to start: {0}")]
    Factory(String),
    #[error("the plugin's manifest is invalid: {0}")]
    BadManifest(String),
    #[error("the plugin crashed while loading: {0}")]
    Crashed(String),
    #[error("cannot start a plugin worker: {0}")]
    Worker(String),
}

/// The host's plugin-api version (what plugins must be built against).
pub fn host_api_crate_version() -> String {
    PluginModule_Ref::VERSION_STRINGS.version.to_string()
}

/// `dlopen`s the library at `load_path` and checks it is a plugin of this host's API: the
/// root module, the versions, and the manifest's JSON. Used in process and by the worker
/// (which sends the error's text back as is). `source` names the file in messages.
pub(crate) fn open_module(
    source: &Path,
    load_path: &Path,
) -> Result<(PluginModule_Ref, String), LoadError> {
    let header = lib_header_from_path(load_path).map_err(|e| map_library_error(source, e))?;
    let module = header
        .init_root_module::<PluginModule_Ref>()
        .map_err(|e| map_library_error(source, e))?;
    let api = (module.api_version())();
    if api != API_VERSION {
        return Err(LoadError::ApiVersion {
            plugin: api,
            host: API_VERSION,
        });
    }
    match (module.manifest())() {
        ROk(json) => Ok((module, json.into_string())),
        RErr(e) => Err(LoadError::Factory(e.into_string())),
    }
}

fn map_library_error(source: &Path, e: LibraryError) -> LoadError {
    match e {
        LibraryError::OpenError { err, .. } => LoadError::NotALibrary {
            path: source.to_owned(),
            reason: clean_dlerror(&err.to_string()),
        },
        LibraryError::GetSymbolError { .. } => LoadError::NotAPlugin(source.to_owned()),
        LibraryError::IncompatibleVersionNumber {
            expected_version,
            actual_version,
            ..
        } => LoadError::IncompatibleApi {
            plugin: actual_version.to_string(),
            host: expected_version.to_string(),
        },
        LibraryError::InvalidAbiHeader(header) => LoadError::IncompatibleAbiStable {
            plugin: format!("{}.{}", header.abi_major, header.abi_minor),
            host: format!(
                "{}.{}",
                abi_stable::library::AbiHeader::VALUE.abi_major,
                abi_stable::library::AbiHeader::VALUE.abi_minor
            ),
            api: host_api_crate_version(),
        },
        LibraryError::AbiInstability(err) => {
            // abi_stable's report can run to a thousand lines; its end names the difference.
            let text = err.to_string();
            let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
            let tail = lines[lines.len().saturating_sub(6)..].join(" | ");
            LoadError::AbiMismatch { detail: tail }
        }
        LibraryError::RootModule { err, .. } => LoadError::Factory(err.to_string()),
        other => LoadError::AbiMismatch {
            detail: other.to_string(),
        },
    }
}

/// dlerror text names the copy; keep only the reason.
fn clean_dlerror(s: &str) -> String {
    match s.rsplit_once(": ") {
        Some((_, reason)) => reason.to_owned(),
        None => s.to_owned(),
    }
}
