//! Plumbing for `export_agent!` (re-exported as `__private`): the root module a plugin exports
//! and the ABI instance wrapping an [`Agent`]. Not part of the public API.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::abi::{
    AgentInstance, AgentInstanceBox, AgentInstance_TO, PluginModule, PluginModule_Ref,
};
use abi_stable::library::{CheckTypeLayout, RootModuleResult};
use abi_stable::prefix_type::PrefixTypeTrait;
use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::std_types::{RErr, ROk, RResult, RStr, RString};

use crate::agent::panic_message;
use crate::{wire, Agent, ToolContext, ToolResult, API_VERSION};

pub use abi_stable::library::LibHeader;

pub trait Factory: 'static {
    fn create() -> Agent;
}

extern "C" fn api_version() -> u32 {
    API_VERSION
}

fn create_caught<F: Factory>() -> Result<Agent, String> {
    catch_unwind(F::create).map_err(|p| format!("agent factory panicked: {}", panic_message(&p)))
}

extern "C" fn manifest<F: Factory>() -> RResult<RString, RString> {
    let result = create_caught::<F>().and_then(|agent| {
        catch_unwind(AssertUnwindSafe(|| {
            serde_json::to_string(&agent.manifest()).unwrap_or_default()
        }))
        .map_err(|p| format!("building the manifest panicked: {}", panic_message(&p)))
    });
    match result {
        Ok(json) => ROk(json.into()),
        Err(e) => RErr(e.into()),
    }
}

extern "C" fn new_instance<F: Factory>() -> RResult<AgentInstanceBox, RString> {
    match create_caught::<F>() {
        Ok(agent) => ROk(AgentInstance_TO::from_value(
            Instance {
                agent,
                calls: Default::default(),
            },
            TD_Opaque,
        )),
        Err(e) => RErr(e.into()),
    }
}

struct Instance {
    agent: Agent,
    /// The cancel flags of the calls running now, by the host's call id.
    calls: std::sync::Mutex<std::collections::HashMap<u64, Arc<AtomicBool>>>,
}

impl Instance {
    fn calls(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<u64, Arc<AtomicBool>>> {
        self.calls.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Unwraps the host's call envelope: (arguments, context, call id to unregister).
    fn open_envelope(&self, value: Value) -> (Value, ToolContext, Option<u64>) {
        match wire::open_call(value) {
            (Some(call), args) => {
                let flag = self.calls().entry(call.id).or_default().clone();
                let ctx = ToolContext::with_timeout(Duration::from_millis(call.timeout_ms))
                    .with_flag(flag)
                    .with_traceparent(call.traceparent);
                (args, ctx, Some(call.id))
            }
            (None, args) => (args, ToolContext::detached(), None),
        }
    }
}

impl AgentInstance for Instance {
    fn call_tool(&self, name: RStr<'_>, args_json: RStr<'_>) -> RString {
        let result = match serde_json::from_str::<Value>(args_json.as_str()) {
            Ok(value) => {
                let (args, ctx, id) = self.open_envelope(value);
                let r = self.agent.call_tool_with(name.as_str(), args, &ctx);
                if let Some(id) = id {
                    self.calls().remove(&id);
                }
                r
            }
            Err(e) => ToolResult::error(format!("arguments are not valid JSON: {e}")),
        };
        // Serializing a struct of three optional strings cannot fail.
        serde_json::to_string(&result).unwrap_or_default().into()
    }

    fn handle_event(
        &self,
        session_id: RStr<'_>,
        event_json: RStr<'_>,
    ) -> RResult<RString, RString> {
        let event = match serde_json::from_str::<Value>(event_json.as_str()) {
            Ok(v) => v,
            Err(e) => return RErr(format!("event is not valid JSON: {e}").into()),
        };
        if let Some(id) = wire::cancelled_call(&event) {
            // Only calls running now: a late cancel must not leave an entry behind.
            if let Some(flag) = id.and_then(|id| self.calls().get(&id).cloned()) {
                flag.store(true, Ordering::Relaxed);
            }
            return ROk("[]".into());
        }
        match self.agent.handle_event(session_id.as_str(), event) {
            Ok(events) => ROk(Value::Array(events).to_string().into()),
            Err(e) => RErr(e.into()),
        }
    }
}

fn root_module<F: Factory>() -> PluginModule_Ref {
    PluginModule {
        api_version,
        manifest: manifest::<F>,
        new_instance: new_instance::<F>,
    }
    .leak_into_prefix()
}

extern "C" fn erased_root_module<F: Factory>() -> RootModuleResult {
    abi_stable::library::__call_root_module_loader(root_module::<F>)
}

/// What `#[export_root_module]` would generate, written as a const fn so a `macro_rules!`
/// macro can use it without the plugin depending on abi_stable directly.
pub const fn lib_header<F: Factory>() -> LibHeader {
    // SAFETY: `erased_root_module::<F>` returns the root module of type `PluginModule_Ref`,
    // the type the header is constructed for, exactly as `#[export_root_module]` does.
    unsafe {
        LibHeader::from_constructor::<PluginModule_Ref>(
            erased_root_module::<F>,
            CheckTypeLayout::Yes,
        )
    }
}
