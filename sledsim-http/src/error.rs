//! `ApiError`: what both servers answer with when a request fails.

use std::fmt;
use std::net::SocketAddr;

use dropshot::{ConfigDropshot, ErrorStatusCode, HttpError};
use schemars::JsonSchema;
use serde::Serialize;
use sled_agent_api::{error_codes, ErrorBody, SledAgentError};

/// Requests are a few hundred bytes; anything much larger is refused unread.
pub const REQUEST_BODY_MAX_BYTES: usize = 4096;

/// A server's configuration: the address, and the small body limit.
pub fn server_config(bind: SocketAddr) -> ConfigDropshot {
    ConfigDropshot {
        bind_address: bind,
        default_request_body_max_bytes: REQUEST_BODY_MAX_BYTES,
        ..ConfigDropshot::default()
    }
}

/// An error response: the status, and the body every client reads.
#[derive(Debug, Serialize, JsonSchema)]
#[serde(transparent)]
pub struct ApiError {
    body: ErrorBody,
    #[serde(skip)]
    #[schemars(skip)]
    status: Status,
}

/// `ErrorStatusCode` has no Default, which `#[serde(skip)]` wants; this wraps it.
#[derive(Debug, Clone, Copy)]
struct Status(ErrorStatusCode);

impl Default for Status {
    fn default() -> Self {
        Status(ErrorStatusCode::INTERNAL_SERVER_ERROR)
    }
}

impl ApiError {
    pub fn new(status: ErrorStatusCode, code: Option<&str>, message: String) -> Self {
        ApiError {
            body: ErrorBody { error_code: code.map(str::to_string), message, vmm_state: None },
            status: Status(status),
        }
    }

    pub fn not_found(code: &str, message: String) -> Self {
        ApiError::new(ErrorStatusCode::NOT_FOUND, Some(code), message)
    }

    pub fn bad_request(code: &str, message: String) -> Self {
        ApiError::new(ErrorStatusCode::BAD_REQUEST, Some(code), message)
    }

    pub fn internal(message: String) -> Self {
        ApiError::new(ErrorStatusCode::INTERNAL_SERVER_ERROR, Some("Internal"), message)
    }

    pub fn status(&self) -> ErrorStatusCode {
        self.status.0
    }

    pub fn body(&self) -> &ErrorBody {
        &self.body
    }
}

impl From<&SledAgentError> for ApiError {
    fn from(e: &SledAgentError) -> Self {
        match e {
            SledAgentError::NoSuchVmm { .. } => {
                ApiError::not_found(error_codes::NO_SUCH_INSTANCE, e.to_string())
            }
            SledAgentError::InvalidTransition { current, .. } => {
                let mut err = ApiError::bad_request(error_codes::INVALID_TRANSITION, e.to_string());
                err.body.vmm_state = Some(*current);
                err
            }
            SledAgentError::InvalidRegistration { .. } => {
                ApiError::bad_request(error_codes::INVALID_REGISTRATION, e.to_string())
            }
            // Only a sled agent that is itself a client of another would see these.
            SledAgentError::Communication { .. } | SledAgentError::UnexpectedResponse { .. } => {
                ApiError::internal(e.to_string())
            }
        }
    }
}

/// Dropshot's own errors (a malformed body, a bad path, a body over the limit)
/// keep their status and message.
impl From<HttpError> for ApiError {
    fn from(e: HttpError) -> Self {
        ApiError::new(e.status_code, e.error_code.as_deref(), e.external_message)
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.body.error_code {
            Some(code) => write!(f, "{} ({code}): {}", self.status.0, self.body.message),
            None => write!(f, "{}: {}", self.status.0, self.body.message),
        }
    }
}

impl dropshot::HttpResponseError for ApiError {
    fn status_code(&self) -> ErrorStatusCode {
        self.status.0
    }
}

/// An error and its causes, joined with ": ". Each type's `Display` leaves its
/// source out (the convention these crates follow), so messages that cross a wire
/// or reach a user are built with this.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    msg
}
