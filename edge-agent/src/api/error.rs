//! Every API error, mapped once to an HTTP status and an OpenAI-style error body
//! (`{"error": {"message", "type", "param", "code"}}`), which OpenAI client libraries turn into
//! their own exception types.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The body is not what the endpoint accepts (syntax, types, values).
    #[error("{message}")]
    Invalid { message: String, param: Option<String> },
    #[error("the model `{0}` does not exist")]
    UnknownModel(String),
    #[error(
        "this model's context is {context} tokens, but the prompt has {prompt} tokens and max_tokens asks for {max_tokens} more"
    )]
    ContextLength { context: usize, prompt: usize, max_tokens: usize },
    #[error("the request body exceeds {limit} bytes")]
    TooLarge { limit: usize },
    /// A field (or a value of it) this server cannot honour: refused rather than ignored.
    #[error("{what} is not supported by this server{why}")]
    Unsupported { what: String, param: Option<String>, why: String },
    #[error("{0}")]
    Unauthorized(&'static str),
    #[error("{method} is not allowed on {path}; use {allow}")]
    MethodNotAllowed { method: String, path: String, allow: &'static str },
    #[error("there is no endpoint {method} {path}")]
    NoEndpoint { method: String, path: String },
    #[error("no cloud is configured or reachable for mode `{0}`")]
    NoCloud(String),
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    pub fn invalid(message: impl Into<String>, param: impl Into<Option<&'static str>>) -> Self {
        ApiError::Invalid { message: message.into(), param: param.into().map(str::to_owned) }
    }

    /// `what` is refused (naming `param`); `why` says what the server would need.
    pub fn unsupported(what: impl Into<String>, param: &str, why: impl AsRef<str>) -> Self {
        let why = why.as_ref();
        ApiError::Unsupported {
            what: what.into(),
            param: Some(param.to_owned()),
            why: if why.is_empty() { String::new() } else { format!(": {why}") },
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Invalid { .. }
            | ApiError::ContextLength { .. }
            | ApiError::Unsupported { .. } => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::NoEndpoint { .. } => StatusCode::NOT_FOUND,
            ApiError::UnknownModel(_) => StatusCode::NOT_FOUND,
            ApiError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::NoCloud(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The `error` object of the body (also sent as an SSE event when a stream fails).
    pub fn body(&self) -> serde_json::Value {
        let (kind, code, param) = match self {
            ApiError::Invalid { param, .. } => ("invalid_request_error", None, param.clone()),
            ApiError::UnknownModel(_) => {
                ("invalid_request_error", Some("model_not_found"), Some("model".into()))
            }
            ApiError::ContextLength { .. } => (
                "invalid_request_error",
                Some("context_length_exceeded"),
                Some("max_tokens".into()),
            ),
            ApiError::TooLarge { .. } => ("invalid_request_error", Some("request_too_large"), None),
            ApiError::Unsupported { param, .. } => {
                ("invalid_request_error", Some("unsupported_parameter"), param.clone())
            }
            ApiError::Unauthorized(_) => ("invalid_request_error", Some("invalid_api_key"), None),
            ApiError::MethodNotAllowed { .. } => {
                ("invalid_request_error", Some("method_not_allowed"), None)
            }
            ApiError::NoEndpoint { .. } => ("invalid_request_error", Some("unknown_url"), None),
            ApiError::NoCloud(_) => ("server_error", Some("cloud_unavailable"), None),
            ApiError::Internal(_) => ("server_error", None, None),
        };
        json!({ "error": { "message": self.to_string(), "type": kind, "param": param, "code": code } })
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status(), axum::Json(self.body())).into_response();
        let headers = response.headers_mut();
        match &self {
            ApiError::MethodNotAllowed { allow, .. } => {
                headers.insert(header::ALLOW, HeaderValue::from_static(allow));
            }
            ApiError::Unauthorized(_) => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            _ => {}
        }
        response
    }
}

impl From<collm_runtime::Error> for ApiError {
    fn from(e: collm_runtime::Error) -> Self {
        ApiError::from(crate::Error::Runtime(e))
    }
}

impl From<crate::Error> for ApiError {
    fn from(e: crate::Error) -> Self {
        match e {
            crate::Error::NoCloud => ApiError::NoCloud("cloud".into()),
            crate::Error::Runtime(collm_runtime::Error::ContextFull { needed, context }) => {
                ApiError::ContextLength { context, prompt: needed.saturating_sub(1), max_tokens: 1 }
            }
            crate::Error::Runtime(collm_runtime::Error::Invalid(m)) => ApiError::invalid(m, None),
            other => ApiError::Internal(other.to_string()),
        }
    }
}
