//! What this server cannot do, said before anything runs: tool calling, structured output,
//! audio, web search and reasoning controls are refused with OpenAI's error shape (400,
//! `invalid_request_error`, the field in `param`), so a client that relies on one gets an
//! exception rather than plain text that looks like a normal answer.
//!
//! Why JSON mode is refused rather than honoured: constraining decoding to JSON needs a mask
//! over the whole vocabulary at every position, applied by whichever partition answers — on
//! the edge, and in the cloud for the tokens it picks (tens of thousands of entries per token on
//! the wire, or a grammar engine in the cloud worker). Neither exists, and prompting the model
//! for JSON without a constraint would return invalid JSON under `json_object`'s promise.

use serde::Deserialize;
use serde_json::Value;

use super::error::ApiError;
use super::openai::Message;

/// The chat fields for capabilities this server lacks (each parsed only to be checked).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ChatExtras {
    pub tools: Option<Vec<Value>>,
    pub tool_choice: Option<Value>,
    pub functions: Option<Vec<Value>>,
    pub function_call: Option<Value>,
    pub response_format: Option<ResponseFormat>,
    pub audio: Option<Value>,
    pub modalities: Option<Vec<String>>,
    pub web_search_options: Option<Value>,
    pub reasoning_effort: Option<String>,
    pub verbosity: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ResponseFormat {
    #[serde(rename = "type")]
    pub kind: String,
}

const NO_TOOLS: &str =
    "this model is served without tool calling; send no tools, or tool_choice \"none\"";

/// Refuses a chat request that asks for something only another server could do.
pub fn check_chat(x: &ChatExtras) -> Result<(), ApiError> {
    let choice = x.tool_choice.as_ref().filter(|c| !c.is_null());
    let chooses_none = choice.is_some_and(|c| c == "none");
    let tools = x.tools.as_ref().is_some_and(|t| !t.is_empty());
    if tools && !chooses_none {
        return Err(ApiError::unsupported("`tools`", "tools", NO_TOOLS));
    }
    // "auto" without tools lets the model answer in text, which it does.
    if let Some(c) = choice.filter(|c| *c != "none" && *c != "auto") {
        return Err(ApiError::unsupported(format!("`tool_choice` {c}"), "tool_choice", NO_TOOLS));
    }
    let call = x.function_call.as_ref().filter(|c| !c.is_null());
    let functions = x.functions.as_ref().is_some_and(|f| !f.is_empty());
    if functions && !call.is_some_and(|c| c == "none") {
        return Err(ApiError::unsupported("`functions`", "functions", NO_TOOLS));
    }
    if let Some(c) = call.filter(|c| *c != "none" && *c != "auto") {
        return Err(ApiError::unsupported(
            format!("`function_call` {c}"),
            "function_call",
            NO_TOOLS,
        ));
    }
    match x.response_format.as_ref().map(|f| f.kind.as_str()) {
        None | Some("text") => {}
        Some("json_object") => {
            return Err(ApiError::unsupported(
                "`response_format` json_object",
                "response_format",
                "JSON mode needs decoding constrained on the edge and in the cloud, which this \
                 server lacks; ask for JSON in the prompt and parse it yourself",
            ));
        }
        Some(other) => {
            return Err(ApiError::unsupported(
                format!("`response_format` {other}"),
                "response_format",
                "only text output is served",
            ));
        }
    }
    if x.audio.as_ref().is_some_and(|a| !a.is_null()) {
        return Err(ApiError::unsupported("`audio`", "audio", "this model writes text only"));
    }
    if let Some(m) = x.modalities.as_ref().and_then(|m| m.iter().find(|m| *m != "text")) {
        return Err(ApiError::unsupported(
            format!("the modality {m:?}"),
            "modalities",
            "this model writes text only",
        ));
    }
    if x.web_search_options.as_ref().is_some_and(|w| !w.is_null()) {
        return Err(ApiError::unsupported(
            "`web_search_options`",
            "web_search_options",
            "the model does not search the web",
        ));
    }
    if x.reasoning_effort.is_some() {
        return Err(ApiError::unsupported(
            "`reasoning_effort`",
            "reasoning_effort",
            "this is not a reasoning model",
        ));
    }
    if x.verbosity.is_some() {
        return Err(ApiError::unsupported(
            "`verbosity`",
            "verbosity",
            "answer length is set with max_tokens",
        ));
    }
    Ok(())
}

/// Refuses the turns of a tool-calling conversation (tool results, assistant tool calls).
pub fn check_message(i: usize, m: &Message) -> Result<(), ApiError> {
    if matches!(m.role.as_str(), "tool" | "function") {
        return Err(ApiError::unsupported(
            format!("a message with role {:?}", m.role),
            &format!("messages[{i}].role"),
            NO_TOOLS,
        ));
    }
    let called = |v: &Option<Value>| {
        v.as_ref().is_some_and(|v| !v.is_null() && v.as_array().is_none_or(|a| !a.is_empty()))
    };
    if called(&m.tool_calls) || called(&m.function_call) {
        return Err(ApiError::unsupported(
            "an assistant message with tool calls",
            &format!("messages[{i}].tool_calls"),
            NO_TOOLS,
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn extras(v: Value) -> ChatExtras {
        serde_json::from_value(v).expect("parses")
    }

    fn refused_param(v: Value) -> Option<String> {
        match check_chat(&extras(v)) {
            Ok(()) => None,
            Err(e) => {
                assert_eq!(e.status(), axum::http::StatusCode::BAD_REQUEST);
                let body = e.body();
                assert_eq!(body["error"]["type"], "invalid_request_error");
                assert_eq!(body["error"]["code"], "unsupported_parameter");
                Some(body["error"]["param"].as_str().expect("param").to_owned())
            }
        }
    }

    #[test]
    fn tool_calling_is_refused_unless_the_request_forbids_it() {
        let tool = json!([{"type": "function", "function": {"name": "f", "parameters": {}}}]);
        assert_eq!(refused_param(json!({"tools": tool})).as_deref(), Some("tools"));
        assert_eq!(
            refused_param(json!({"tools": tool, "tool_choice": "auto"})).as_deref(),
            Some("tools")
        );
        assert_eq!(
            refused_param(json!({"tools": tool, "tool_choice": "required"})).as_deref(),
            Some("tools")
        );
        assert_eq!(refused_param(json!({"tools": tool, "tool_choice": "none"})), None);
        assert_eq!(refused_param(json!({"tools": [], "tool_choice": "auto"})), None);
        assert_eq!(refused_param(json!({"tools": null, "tool_choice": null})), None);
        assert_eq!(
            refused_param(json!({"tool_choice": {"type": "function", "function": {"name": "f"}}}))
                .as_deref(),
            Some("tool_choice")
        );
        assert_eq!(
            refused_param(json!({"functions": [{"name": "f"}]})).as_deref(),
            Some("functions")
        );
        assert_eq!(
            refused_param(json!({"function_call": {"name": "f"}})).as_deref(),
            Some("function_call")
        );
        assert_eq!(
            refused_param(json!({"functions": [{"name": "f"}], "function_call": "none"})),
            None
        );
    }

    #[test]
    fn output_formats_and_modalities_beyond_text_are_refused() {
        assert_eq!(refused_param(json!({"response_format": {"type": "text"}})), None);
        for format in ["json_object", "json_schema"] {
            assert_eq!(
                refused_param(json!({"response_format": {"type": format}})).as_deref(),
                Some("response_format")
            );
        }
        assert_eq!(refused_param(json!({"modalities": ["text"]})), None);
        assert_eq!(
            refused_param(json!({"modalities": ["text", "audio"]})).as_deref(),
            Some("modalities")
        );
        assert_eq!(refused_param(json!({"audio": {"voice": "x"}})).as_deref(), Some("audio"));
        assert_eq!(
            refused_param(json!({"web_search_options": {}})).as_deref(),
            Some("web_search_options")
        );
        assert_eq!(
            refused_param(json!({"reasoning_effort": "low"})).as_deref(),
            Some("reasoning_effort")
        );
        assert_eq!(refused_param(json!({"verbosity": "low"})).as_deref(), Some("verbosity"));
    }

    #[test]
    fn tool_turns_in_the_conversation_are_refused() {
        let m = |v: Value| -> Message { serde_json::from_value(v).expect("message") };
        assert!(check_message(0, &m(json!({"role": "tool", "content": "42"}))).is_err());
        let called = json!({"role": "assistant", "content": null, "tool_calls": [{"id": "1"}]});
        assert!(check_message(1, &m(called)).is_err());
        let plain = json!({"role": "assistant", "content": "hi", "tool_calls": []});
        assert!(check_message(1, &m(plain)).is_ok());
    }
}
