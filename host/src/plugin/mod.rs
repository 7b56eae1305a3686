//! Agent plugins: loading a build ([`load`]), and the one way the host calls into one
//! ([`Instance`]: tools, custom events, new instances — always on the blocking pool, with a
//! timeout, errors in two layers tagged with the plugin's name and version).
//!
//! **Architecture Invariant:** nothing here hands a plugin path to `dlopen` except through a
//! fresh, uniquely named copy (see [`copies`]): glibc returns the old code for a path it has
//! already opened, and a loaded file overwritten in place crashes the process.
//! **Architecture Invariant:** no user plugin code runs on an async worker: every call goes
//! through [`Instance`] or [`Plugin::instantiate`] (or the loader, itself on the blocking pool).

pub mod copies;
mod error;
mod instance;
mod load;
mod module;
pub mod reload;
pub mod worker;

pub use error::{HostError, HostErrorKind, PluginError, PluginTag};
pub use instance::Instance;
pub use load::{load, Isolation, Loader, Plugin};
pub use module::{host_api_crate_version, LoadError};
pub use myagent_plugin_api::{Manifest, ToolSpec};
pub use worker::{RunGuard, WorkerOptions};
