//! `ccd api METHOD [JSON_PARAMS]`: any JSON-RPC method, its result printed as JSON.

use crate::client::CallError;
use crate::exit::{self, UsageError};
use crate::home::Home;
use crate::table::print_json;

pub fn run(
    home: &Home,
    autostart: bool,
    method: &str,
    params: Option<String>,
) -> anyhow::Result<u8> {
    let params = match params {
        None => None,
        Some(text) => {
            let value = serde_json::from_str::<serde_json::Value>(&text)
                .map_err(|e| UsageError(format!("JSON_PARAMS is not valid JSON: {e}")))?;
            // The daemon takes params by name only; `[]` is its "no params" too.
            let empty_array = value.as_array().is_some_and(Vec::is_empty);
            if !(value.is_object() || empty_array) {
                return Err(UsageError(format!(
                    "JSON_PARAMS must be a JSON object of params by name (positional \
                     params are not taken), not `{text}`"
                ))
                .into());
            }
            Some(value)
        }
    };
    let mut client = crate::daemon::connect_or_start(home, autostart)?;
    match client.call_raw(method, params) {
        Ok(result) => {
            print_json(&result)?;
            Ok(exit::OK)
        }
        Err(CallError::Rpc(e)) => {
            // The whole error object, for scripts; the exit code says what kind it was.
            eprintln!(
                "{}",
                serde_json::to_string_pretty(&e).unwrap_or_else(|_| e.message.clone())
            );
            Ok(exit::rpc_code(&e))
        }
        Err(e) => Err(e.into()),
    }
}
