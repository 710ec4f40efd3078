//! HTTP clients that implement the protocol traits, so a remote sled agent or
//! Nexus drops in wherever an in-process one did.

use async_trait::async_trait;
use reqwest::{Method, Response, StatusCode};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sled_agent_api::{
    error_codes, ErrorBody, InstanceEnsureBody, InstanceUuid, NexusApiError, NexusInternalApi,
    PropolisUuid, SledAgentApi, SledAgentError, SledVmmState, VmmPutStateBody, VmmPutStateResponse,
    VmmState, VmmStateRequested, VmmUnregisterResponse,
};
use watcher::{DatastoreError, VmmWriteOutcome, WatchedVmm, WatcherDatastore};

/// What a sim-only poke did: every state reported to Nexus, those Nexus refused
/// with a 4xx (given up on), and whether the VMM left the table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct PokeResponse {
    pub published: Vec<SledVmmState>,
    #[serde(default)]
    pub refused: Vec<SledVmmState>,
    pub removed: bool,
}

/// A server's base URL as a command line takes it: `http` or `https`, a host,
/// and nothing after the path. The error says what is wrong, for clap to print.
pub fn base_url(s: &str) -> Result<String, String> {
    let url = reqwest::Url::parse(s)
        .map_err(|e| format!("not a URL ({e}); for example http://127.0.0.1:12221"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("scheme {:?}: only http and https are served", url.scheme()));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("no host".into());
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err("a base URL takes no query or fragment".into());
    }
    Ok(s.trim_end_matches('/').to_string())
}

/// How a request failed before any typed error could be read.
enum Failure {
    /// No HTTP answer at all (refused, reset, timed out).
    Transport(reqwest::Error),
    /// An answer with an error status: its body if it was omicron's `Error`, the
    /// raw text, and the VMM state a sim named in `VMM_STATE_HEADER`.
    Status(StatusCode, Option<ErrorBody>, String, Option<VmmState>),
    /// A success status with a body that is not what the API promises.
    Undecodable(StatusCode, reqwest::Error),
}

#[derive(Clone, Debug)]
struct Http {
    base: String,
    /// Sent as `api-version` on every request, as omicron's clients do.
    version: String,
    client: reqwest::Client,
}

/// How long a request may take, connecting included (omicron's 60 s).
pub const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

impl Http {
    fn new(base: &str, version: &semver::Version) -> Self {
        Http {
            base: base.trim_end_matches('/').to_string(),
            version: version.to_string(),
            // omicron's clients give up after 60 s, so one wedged server cannot
            // stall a caller (a watcher pass, a user) for good.
            client: reqwest::Client::builder()
                .connect_timeout(REQUEST_TIMEOUT)
                .timeout(REQUEST_TIMEOUT)
                .build()
                // Fails only if a TLS backend cannot start, and none is built in.
                .unwrap_or_else(|_| reqwest::Client::new()),
        }
    }

    async fn send<B: Serialize + ?Sized>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<Response, Failure> {
        let mut req = self
            .client
            .request(method, format!("{}{path}", self.base))
            .header(crate::VERSION_HEADER, &self.version);
        if crate::fault::refusing() {
            req = req.header(crate::fault::REFUSE_HEADER, "503");
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.map_err(Failure::Transport)?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let vmm_state = resp
            .headers()
            .get(crate::VMM_STATE_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| serde_json::from_value(serde_json::Value::String(v.into())).ok());
        let text = resp.text().await.unwrap_or_default();
        let body = serde_json::from_str::<ErrorBody>(&text).ok();
        Err(Failure::Status(status, body, text, vmm_state))
    }

    async fn call<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, Failure> {
        let resp = self.send(method, path, body).await?;
        let status = resp.status();
        resp.json::<T>().await.map_err(|e| Failure::Undecodable(status, e))
    }
}

fn code_is(body: &Option<ErrorBody>, code: &str) -> bool {
    body.as_ref().and_then(|b| b.error_code.as_deref()) == Some(code)
}

fn message(body: &Option<ErrorBody>, raw: String) -> String {
    body.as_ref().map_or(raw, |b| b.message.clone())
}

/// A Nexus known only after it exists: the sim is built before Nexus (Nexus needs
/// the sim's client, the sim needs somewhere to report), so its reports go here,
/// bound once Nexus is up. Over HTTP it holds the client (`bind`); in process it
/// holds Nexus weakly (`bind_weak`), so the sim -> Nexus -> sim loop of owners
/// never forms and each run frees everything. Until bound, or once Nexus is
/// gone, a report fails as unreachable, which the sim answers by keeping the VMM
/// and retrying.
#[derive(Default)]
pub struct LateNexus {
    target: std::sync::OnceLock<Bound>,
}

enum Bound {
    Held(std::sync::Arc<dyn NexusInternalApi>),
    Weak(std::sync::Weak<dyn NexusInternalApi>),
}

impl LateNexus {
    /// Reports go to `target`, which this keeps alive. Returns false if it was
    /// bound already (the first binding stays).
    pub fn bind(&self, target: std::sync::Arc<dyn NexusInternalApi>) -> bool {
        self.target.set(Bound::Held(target)).is_ok()
    }

    /// Reports go to `target` while someone else keeps it alive.
    pub fn bind_weak(&self, target: &std::sync::Arc<dyn NexusInternalApi>) -> bool {
        self.target.set(Bound::Weak(std::sync::Arc::downgrade(target))).is_ok()
    }

    fn target(&self) -> Option<std::sync::Arc<dyn NexusInternalApi>> {
        match self.target.get()? {
            Bound::Held(t) => Some(std::sync::Arc::clone(t)),
            Bound::Weak(t) => t.upgrade(),
        }
    }
}

impl std::fmt::Debug for LateNexus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LateNexus").field("bound", &self.target.get().is_some()).finish()
    }
}

#[async_trait]
impl NexusInternalApi for LateNexus {
    async fn cpapi_instances_put(
        &self,
        propolis_id: PropolisUuid,
        new_runtime_state: SledVmmState,
    ) -> Result<(), NexusApiError> {
        let Some(nexus) = self.target() else {
            return Err(NexusApiError::Communication {
                operation: "cpapi_instances_put",
                source: "Nexus is not reachable (not bound yet, or gone)".into(),
            });
        };
        nexus.cpapi_instances_put(propolis_id, new_runtime_state).await
    }
}

/// A sled agent over HTTP (the paths of omicron's sled-agent API).
#[derive(Clone, Debug)]
pub struct SledAgentClient {
    http: Http,
}

impl SledAgentClient {
    /// `base` is like `http://127.0.0.1:12345`.
    pub fn new(base: &str) -> Self {
        SledAgentClient { http: Http::new(base, &crate::SLED_AGENT_API_VERSION) }
    }

    fn error(
        operation: &'static str,
        propolis_id: PropolisUuid,
        requested: Option<VmmStateRequested>,
        f: Failure,
    ) -> SledAgentError {
        match f {
            Failure::Transport(e) => {
                SledAgentError::Communication { operation, source: Box::new(e) }
            }
            Failure::Undecodable(status, e) => SledAgentError::UnexpectedResponse {
                operation,
                status: status.as_u16(),
                message: format!("undecodable response body: {e}"),
            },
            Failure::Status(status, body, raw, vmm_state) => {
                // Only 404 with NO_SUCH_INSTANCE means gone (RFD 486 §6.3); a 404
                // without it (a wrong URL, a proxy) is just an unexpected answer.
                if status == StatusCode::NOT_FOUND && code_is(&body, error_codes::NO_SUCH_INSTANCE)
                {
                    return SledAgentError::NoSuchVmm { propolis_id };
                }
                if status == StatusCode::GONE && code_is(&body, error_codes::NO_SUCH_INSTANCE) {
                    return SledAgentError::Terminating { propolis_id };
                }
                if status == StatusCode::BAD_REQUEST && code_is(&body, error_codes::INVALID_REQUEST)
                {
                    // A put-state refused names the state the VMM was bound
                    // for; a registration refused is the other request that can be.
                    match (vmm_state, requested) {
                        // The header carries where the VMM is bound, which the
                        // request was judged against; its state now is not on
                        // the wire, so it reads the same.
                        (Some(resting), Some(requested)) => {
                            return SledAgentError::InvalidTransition {
                                propolis_id,
                                current: resting,
                                resting,
                                requested,
                            };
                        }
                        (None, None) if operation == "vmm_register" => {
                            let reason = message(&body, raw);
                            return SledAgentError::InvalidRegistration { propolis_id, reason };
                        }
                        _ => {}
                    }
                }
                SledAgentError::UnexpectedResponse {
                    operation,
                    status: status.as_u16(),
                    message: message(&body, raw),
                }
            }
        }
    }

    /// Sim-only: `POST /vmms/{id}/poke` (drain) or `/poke-single-step`. Not part of
    /// `SledAgentApi`, on purpose.
    pub async fn poke(
        &self,
        propolis_id: PropolisUuid,
        single_step: bool,
    ) -> Result<PokeResponse, SledAgentError> {
        let path = if single_step {
            format!("/vmms/{propolis_id}/poke-single-step")
        } else {
            format!("/vmms/{propolis_id}/poke")
        };
        self.http
            .call(Method::POST, &path, None::<&()>)
            .await
            .map_err(|f| Self::error("vmm_poke", propolis_id, None, f))
    }
}

#[async_trait]
impl SledAgentApi for SledAgentClient {
    async fn vmm_register(
        &self,
        propolis_id: PropolisUuid,
        body: InstanceEnsureBody,
    ) -> Result<SledVmmState, SledAgentError> {
        self.http
            .call(Method::PUT, &format!("/vmms/{propolis_id}"), Some(&body))
            .await
            .map_err(|f| Self::error("vmm_register", propolis_id, None, f))
    }

    async fn vmm_unregister(
        &self,
        propolis_id: PropolisUuid,
    ) -> Result<VmmUnregisterResponse, SledAgentError> {
        self.http
            .call(Method::DELETE, &format!("/vmms/{propolis_id}"), None::<&()>)
            .await
            .map_err(|f| Self::error("vmm_unregister", propolis_id, None, f))
    }

    async fn vmm_put_state(
        &self,
        propolis_id: PropolisUuid,
        body: VmmPutStateBody,
    ) -> Result<VmmPutStateResponse, SledAgentError> {
        self.http
            .call(Method::PUT, &format!("/vmms/{propolis_id}/state"), Some(&body))
            .await
            .map_err(|f| Self::error("vmm_put_state", propolis_id, Some(body.state), f))
    }

    async fn vmm_get_state(
        &self,
        propolis_id: PropolisUuid,
    ) -> Result<SledVmmState, SledAgentError> {
        self.http
            .call(Method::GET, &format!("/vmms/{propolis_id}/state"), None::<&()>)
            .await
            .map_err(|f| Self::error("vmm_get_state", propolis_id, None, f))
    }
}

/// Nexus over HTTP: its internal API (what sled agents call) and the datastore
/// port the watcher uses.
#[derive(Clone, Debug)]
pub struct NexusClient {
    http: Http,
}

impl NexusClient {
    pub fn new(base: &str) -> Self {
        NexusClient { http: Http::new(base, &crate::NEXUS_INTERNAL_API_VERSION) }
    }
}

fn boxed(f: Failure) -> Box<dyn std::error::Error + Send + Sync> {
    match f {
        Failure::Transport(e) | Failure::Undecodable(_, e) => Box::new(e),
        Failure::Status(status, body, raw, _) => {
            format!("{status}: {}", message(&body, raw)).into()
        }
    }
}

#[async_trait]
impl NexusInternalApi for NexusClient {
    async fn cpapi_instances_put(
        &self,
        propolis_id: PropolisUuid,
        new_runtime_state: SledVmmState,
    ) -> Result<(), NexusApiError> {
        let operation = "cpapi_instances_put";
        match self
            .http
            .send(Method::PUT, &format!("/vmms/{propolis_id}"), Some(&new_runtime_state))
            .await
        {
            Ok(_) => Ok(()),
            Err(Failure::Status(status, body, raw, _)) => Err(NexusApiError::UnexpectedResponse {
                operation,
                status: status.as_u16(),
                message: message(&body, raw),
            }),
            Err(f) => Err(NexusApiError::Communication { operation, source: boxed(f) }),
        }
    }
}

#[async_trait]
impl WatcherDatastore for NexusClient {
    async fn vmm_list_for_watcher(&self) -> Result<Vec<WatchedVmm>, DatastoreError> {
        self.http.call(Method::GET, "/datastore/vmms", None::<&()>).await.map_err(|f| {
            DatastoreError::Unavailable { operation: "vmm_list_for_watcher", source: boxed(f) }
        })
    }

    async fn vmm_update_runtime(
        &self,
        propolis_id: PropolisUuid,
        new_state: SledVmmState,
    ) -> Result<VmmWriteOutcome, DatastoreError> {
        let path = format!("/datastore/vmms/{propolis_id}");
        self.http.call(Method::PUT, &path, Some(&new_state)).await.map_err(|f| match f {
            Failure::Status(status, body, _, _)
                if status == StatusCode::NOT_FOUND && code_is(&body, error_codes::NO_SUCH_VMM) =>
            {
                DatastoreError::NoSuchVmm { propolis_id }
            }
            f => DatastoreError::Unavailable { operation: "vmm_update_runtime", source: boxed(f) },
        })
    }

    async fn run_instance_update(&self, instance_id: InstanceUuid) -> Result<(), DatastoreError> {
        let path = format!("/datastore/instances/{instance_id}/update");
        match self.http.send(Method::POST, &path, None::<&()>).await {
            Ok(_) => Ok(()),
            Err(f) => {
                Err(DatastoreError::Unavailable { operation: "instance_update", source: boxed(f) })
            }
        }
    }
}
