//! The ABI boundary between `myagent-host` and a plugin: the only types that cross it.
//!
//! Plugin authors never touch this module; `export_agent!` fills it in. It is kept tiny on
//! purpose (see ARCHITECTURE.md): abi_stable prefix types only grow one way, so everything
//! rich (the manifest, tool schemas, arguments, results, custom events) crosses as JSON text.
//!
//! **Invariant:** no function here may unwind into the host. Every entry point is wrapped in
//! `catch_unwind` on the plugin side and returns an error value instead (abi_stable would
//! otherwise abort the whole host process).

#![allow(non_camel_case_types, non_local_definitions)]

use abi_stable::{
    declare_root_module_statics,
    library::RootModule,
    package_version_strings, sabi_trait,
    sabi_types::VersionStrings,
    std_types::{RBox, RResult, RStr, RString},
    StableAbi,
};

/// The root module a plugin exports (one per shared library).
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = PluginModule_Ref)))]
#[sabi(missing_field(panic))]
pub struct PluginModule {
    /// The plugin-api protocol version the plugin was built with ([`crate::API_VERSION`]).
    pub api_version: extern "C" fn() -> u32,
    /// The agent's manifest as JSON (see `Manifest` in the host), or an error message.
    pub manifest: extern "C" fn() -> RResult<RString, RString>,
    /// A fresh agent instance for one session, or an error message (e.g. the factory panicked).
    #[sabi(last_prefix_field)]
    pub new_instance: extern "C" fn() -> RResult<AgentInstanceBox, RString>,
}

impl RootModule for PluginModule_Ref {
    declare_root_module_statics! {PluginModule_Ref}
    const BASE_NAME: &'static str = "myagent_plugin";
    const NAME: &'static str = "myagent_plugin";
    const VERSION_STRINGS: VersionStrings = package_version_strings!();
}

/// One agent instance: a session's tools and its custom-event hook.
#[sabi_trait]
pub trait AgentInstance: Send + Sync + 'static {
    /// Runs tool `name` with `args_json` (a JSON object) and returns a `ToolResult` as JSON.
    /// Never unwinds: unknown tools, bad arguments and panics come back as a failed result.
    fn call_tool(&self, name: RStr<'_>, args_json: RStr<'_>) -> RString;

    /// Handles a custom client event (JSON object) for `session_id`; returns a JSON array of
    /// events to send back, or an error message.
    #[sabi(last_prefix_field)]
    fn handle_event(&self, session_id: RStr<'_>, event_json: RStr<'_>)
        -> RResult<RString, RString>;
}

/// The boxed, FFI-safe trait object the host holds for each session.
pub type AgentInstanceBox = AgentInstance_TO<RBox<()>>;

/// The symbol name of the exported `LibHeader` (abi_stable's `ROOT_MODULE_LOADER_NAME`).
/// `export_agent!` spells it literally because a `macro_rules!` macro cannot build an
/// identifier from a constant; a unit test keeps the two equal.
pub const ROOT_MODULE_SYMBOL: &str = "_1as_0lib_1header_0root_bmodule_bloader";

#[cfg(test)]
mod tests {
    #[test]
    fn root_module_symbol_matches_abi_stable() {
        assert_eq!(
            super::ROOT_MODULE_SYMBOL,
            abi_stable::library::ROOT_MODULE_LOADER_NAME
        );
    }
}
