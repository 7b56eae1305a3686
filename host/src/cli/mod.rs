//! The binary's commands: arguments ([`args`]), their translation into the library's config
//! ([`config`]), who may connect ([`tokens`]), `serve` ([`serve`]), `inspect` and `new`
//! ([`inspect`]).

pub mod args;
pub mod config;
pub mod inspect;
pub mod serve;
pub mod tokens;
