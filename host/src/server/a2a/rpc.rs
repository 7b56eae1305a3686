//! JSON-RPC 2.0 as A2A uses it: the request envelope, results, and errors with A2A's codes and
//! a `google.rpc.ErrorInfo` detail (what the `a2a-sdk` client maps back to its error types).

use serde_json::{json, Value};

/// A2A's JSON-RPC error codes (the spec's table, as `a2a-sdk` maps them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Code {
    Parse,
    InvalidRequest,
    MethodNotFound,
    InvalidParams,
    Internal,
    TaskNotFound,
    TaskNotCancelable,
    PushNotSupported,
    Unsupported,
    ContentType,
    Version,
}

impl Code {
    fn number(self) -> i64 {
        match self {
            Code::Parse => -32700,
            Code::InvalidRequest => -32600,
            Code::MethodNotFound => -32601,
            Code::InvalidParams => -32602,
            Code::Internal => -32603,
            Code::TaskNotFound => -32001,
            Code::TaskNotCancelable => -32002,
            Code::PushNotSupported => -32003,
            Code::Unsupported => -32004,
            Code::ContentType => -32005,
            Code::Version => -32009,
        }
    }

    /// The `ErrorInfo.reason` A2A gives each (absent for the plain JSON-RPC ones).
    fn reason(self) -> Option<&'static str> {
        Some(match self {
            Code::InvalidParams => "INVALID_PARAMS",
            Code::Internal => "INTERNAL",
            Code::TaskNotFound => "TASK_NOT_FOUND",
            Code::TaskNotCancelable => "TASK_NOT_CANCELABLE",
            Code::PushNotSupported => "PUSH_NOTIFICATION_NOT_SUPPORTED",
            Code::Unsupported => "UNSUPPORTED_OPERATION",
            Code::ContentType => "CONTENT_TYPE_NOT_SUPPORTED",
            Code::Version => "VERSION_NOT_SUPPORTED",
            Code::Parse | Code::InvalidRequest | Code::MethodNotFound => return None,
        })
    }
}

/// A refused call: its code and the text for people.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RpcError {
    pub code: Code,
    pub message: String,
}

impl RpcError {
    pub(crate) fn new(code: Code, message: impl Into<String>) -> RpcError {
        RpcError {
            code,
            message: message.into(),
        }
    }

    pub(crate) fn params(message: impl Into<String>) -> RpcError {
        RpcError::new(Code::InvalidParams, message)
    }

    pub(crate) fn task_not_found() -> RpcError {
        RpcError::new(Code::TaskNotFound, "Task not found")
    }
}

/// One call: its id (echoed), method and params.
#[derive(Debug, Clone)]
pub(crate) struct Call {
    pub id: Value,
    pub method: String,
    pub params: Value,
}

/// Reads a JSON-RPC request; the error answers with the id when it could be read.
pub(crate) fn parse(body: &[u8]) -> Result<Call, (Value, RpcError)> {
    let v: Value = serde_json::from_slice(body).map_err(|e| {
        (
            Value::Null,
            RpcError::new(Code::Parse, format!("Invalid JSON: {e}")),
        )
    })?;
    let Value::Object(mut obj) = v else {
        return Err((
            Value::Null,
            RpcError::new(
                Code::InvalidRequest,
                "A request is a JSON object (batches are not supported)",
            ),
        ));
    };
    let id = match obj.remove("id") {
        Some(id @ (Value::String(_) | Value::Number(_))) => id,
        Some(Value::Null) | None => {
            return Err((
                Value::Null,
                RpcError::new(
                    Code::InvalidRequest,
                    "A request needs an `id` (notifications are not supported)",
                ),
            ))
        }
        Some(_) => {
            return Err((
                Value::Null,
                RpcError::new(Code::InvalidRequest, "`id` must be a string or a number"),
            ))
        }
    };
    if obj.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return Err((
            id,
            RpcError::new(Code::InvalidRequest, "`jsonrpc` must be \"2.0\""),
        ));
    }
    let Some(Value::String(method)) = obj.remove("method") else {
        return Err((
            id,
            RpcError::new(Code::InvalidRequest, "`method` must be a string"),
        ));
    };
    let params = match obj.remove("params") {
        None | Some(Value::Null) => Value::Object(Default::default()),
        Some(p @ Value::Object(_)) => p,
        Some(_) => return Err((id, RpcError::params("`params` must be an object"))),
    };
    Ok(Call { id, method, params })
}

pub(crate) fn result(id: &Value, result: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "result": result})
}

pub(crate) fn error(id: &Value, e: &RpcError) -> Value {
    let mut err = json!({"code": e.code.number(), "message": e.message});
    if let Some(reason) = e.code.reason() {
        err["data"] = json!([{
            "@type": "type.googleapis.com/google.rpc.ErrorInfo",
            "reason": reason,
            "domain": "a2a-protocol.org",
            "metadata": {},
        }]);
    }
    json!({"jsonrpc": "2.0", "id": id, "error": err})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_checked_and_errors_carry_the_a2a_reason() {
        let ok =
            parse(br#"{"jsonrpc":"2.0","id":"1","method":"GetTask","params":{"id":"t"}}"#).unwrap();
        assert_eq!((ok.id, ok.method.as_str()), (json!("1"), "GetTask"));
        assert_eq!(parse(b"nope").unwrap_err().1.code, Code::Parse);
        assert_eq!(parse(b"[]").unwrap_err().1.code, Code::InvalidRequest);
        let (id, e) = parse(br#"{"jsonrpc":"1.0","id":7,"method":"x"}"#).unwrap_err();
        assert_eq!((id, e.code), (json!(7), Code::InvalidRequest));
        let (_, e) = parse(br#"{"jsonrpc":"2.0","id":7,"method":"x","params":[1]}"#).unwrap_err();
        assert_eq!(e.code, Code::InvalidParams);
        let v = error(&json!("1"), &RpcError::task_not_found());
        assert_eq!(v["error"]["code"], -32001);
        assert_eq!(v["error"]["data"][0]["reason"], "TASK_NOT_FOUND");
        let v = error(&json!("1"), &RpcError::new(Code::MethodNotFound, "no"));
        assert!(v["error"].get("data").is_none());
    }
}
