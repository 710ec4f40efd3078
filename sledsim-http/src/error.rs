//! `ApiError`: what both servers answer with when a request fails, built here and
//! sent as dropshot's `HttpError`, so the body is omicron's `Error` (`error_code`,
//! `message`, `request_id`), the shape omicron's generated clients read.

use std::net::SocketAddr;

use dropshot::{ConfigDropshot, ErrorStatusCode, HttpError};
use sled_agent_api::{error_codes, SledAgentError, VmmState};

/// The body limit omicron's sled agent and Nexus are configured with
/// (`default_request_body_max_bytes = 1048576`); a real instance-ensure body,
/// with its instance spec, is far over the 4 KiB this used to allow.
pub const REQUEST_BODY_MAX_BYTES: usize = 1 << 20;

/// Sim-only: on a 400 for an invalid transition, the state the VMM was bound for
/// (where its queued transitions end). The
/// body is omicron's (which says it in words only); this lets sledsim's client
/// give back the typed error.
pub const VMM_STATE_HEADER: &str = "x-sledsim-vmm-state";

/// A server's configuration: the address and the body limit.
pub fn server_config(bind: SocketAddr) -> ConfigDropshot {
    ConfigDropshot {
        bind_address: bind,
        default_request_body_max_bytes: REQUEST_BODY_MAX_BYTES,
        ..ConfigDropshot::default()
    }
}

/// An error response: the status, `error_code` and message, and for an invalid
/// transition the VMM's state. Handlers return it as an `HttpError`, to which
/// dropshot adds the request's id.
#[derive(Debug)]
pub struct ApiError {
    status: ErrorStatusCode,
    error_code: Option<String>,
    message: String,
    vmm_state: Option<VmmState>,
}

impl ApiError {
    pub fn new(status: ErrorStatusCode, code: Option<&str>, message: String) -> Self {
        ApiError { status, error_code: code.map(str::to_string), message, vmm_state: None }
    }

    pub fn not_found(code: &str, message: String) -> Self {
        ApiError::new(ErrorStatusCode::NOT_FOUND, Some(code), message)
    }

    pub fn bad_request(code: &str, message: String) -> Self {
        ApiError::new(ErrorStatusCode::BAD_REQUEST, Some(code), message)
    }

    /// omicron's code for a 500.
    pub fn internal(message: String) -> Self {
        ApiError::new(ErrorStatusCode::INTERNAL_SERVER_ERROR, Some("Internal"), message)
    }

    pub fn status(&self) -> ErrorStatusCode {
        self.status
    }
}

impl From<&SledAgentError> for ApiError {
    fn from(e: &SledAgentError) -> Self {
        match e {
            SledAgentError::NoSuchVmm { .. } => {
                ApiError::not_found(error_codes::NO_SUCH_INSTANCE, e.to_string())
            }
            // omicron's runner, terminating, answers with this code too (#6166);
            // only a 404 with it means gone.
            SledAgentError::Terminating { .. } => ApiError::new(
                ErrorStatusCode::GONE,
                Some(error_codes::NO_SUCH_INSTANCE),
                e.to_string(),
            ),
            // omicron's sim answers these with 400 InvalidRequest too.
            SledAgentError::InvalidTransition { resting, .. } => {
                let mut err = ApiError::bad_request(error_codes::INVALID_REQUEST, e.to_string());
                err.vmm_state = Some(*resting);
                err
            }
            SledAgentError::InvalidRegistration { .. } => {
                ApiError::bad_request(error_codes::INVALID_REQUEST, e.to_string())
            }
            // Only a sled agent that is itself a client of another would see these.
            SledAgentError::Communication { .. } | SledAgentError::UnexpectedResponse { .. } => {
                ApiError::internal(e.to_string())
            }
        }
    }
}

impl From<ApiError> for HttpError {
    fn from(e: ApiError) -> Self {
        let mut err = HttpError {
            status_code: e.status,
            error_code: e.error_code,
            external_message: e.message.clone(),
            internal_message: e.message,
            headers: None,
        };
        if let Some(state) = e.vmm_state {
            // A state's label is a valid header value.
            let _ = err.add_header(VMM_STATE_HEADER, state.to_string());
        }
        err
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
