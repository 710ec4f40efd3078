//! Real servers on loopback, driven through the HTTP clients: every trait method,
//! every error mapping, and bad input on every endpoint.

// A panic is how a test reports failure; helpers outside #[test] fns may unwrap too.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::Arc;

use nexus_stub::{ExternalState, NexusConfig, NexusStub, TokioSpawner};
use reqwest::{Method, StatusCode};
use sim_sled_agent::{RemovalOrdering, SimConfig, SimSledAgent};
use sled_agent_api::{
    Generation, InstanceEnsureBody, InstanceUuid, LogicalClock, NexusApiError, NexusInternalApi,
    PropolisUuid, SledAgentApi, SledAgentError, SledUuid, SledVmmState, VmmPutStateBody,
    VmmRuntimeState, VmmState, VmmStateRequested,
};
use sledsim_http::{
    LateNexus, NexusClient, SledAgentClient, NEXUS_INTERNAL_API_VERSION, REQUEST_BODY_MAX_BYTES,
    SLED_AGENT_API_VERSION, VERSION_HEADER,
};
use watcher::{DatastoreError, InstanceWatcher, WatcherDatastore};

const SLED: SledUuid = SledUuid::from_u128(1);

type Sim = SimSledAgent<Arc<LateNexus>>;
type Nexus = NexusStub<SledAgentClient>;

/// A sim and a Nexus, each behind its own dropshot server, pointing at each other.
struct Stack {
    sim: Arc<Sim>,
    nexus: Arc<Nexus>,
    sim_url: String,
    nexus_url: String,
    _servers: (dropshot::HttpServer<Arc<Sim>>, dropshot::HttpServer<Arc<Nexus>>),
}

fn log() -> slog::Logger {
    slog::Logger::root(slog::Discard, slog::o!())
}

async fn stack(ordering: RemovalOrdering) -> Stack {
    let late = Arc::new(LateNexus::default());
    let config = SimConfig { ordering, ..SimConfig::default() };
    let clock = Arc::new(LogicalClock::default());
    let sim = SimSledAgent::new(&log(), SLED, config, Arc::clone(&late), clock.clone()).unwrap();
    let loopback = ([127, 0, 0, 1], 0).into();
    let sim_server = sim_sled_agent::http::serve(Arc::clone(&sim), loopback, &log()).unwrap();
    let sim_url = format!("http://{}", sim_server.local_addr());
    let sleds = BTreeMap::from([(SLED, SledAgentClient::new(&sim_url))]);
    let spawner = Arc::new(TokioSpawner::new(&log()).unwrap());
    let nexus = NexusStub::new(&log(), NexusConfig::default(), sleds, clock, spawner);
    let nexus_server = nexus_stub::http::serve(Arc::clone(&nexus), loopback, &log()).unwrap();
    let nexus_url = format!("http://{}", nexus_server.local_addr());
    assert!(late.bind(Arc::new(NexusClient::new(&nexus_url))));
    Stack { sim, nexus, sim_url, nexus_url, _servers: (sim_server, nexus_server) }
}

fn runtime(state: VmmState, gen: u64) -> VmmRuntimeState {
    VmmRuntimeState {
        state,
        gen: Generation::try_from(gen).unwrap(),
        time_updated: LogicalClock::default().now(),
    }
}

fn register_body(state: VmmState) -> InstanceEnsureBody {
    InstanceEnsureBody { instance_id: InstanceUuid::from_u128(9), vmm_runtime: runtime(state, 2) }
}

fn put(state: VmmStateRequested) -> VmmPutStateBody {
    VmmPutStateBody { state }
}

/// Waits (briefly) for Nexus's background update step to settle an instance.
async fn settled(nexus: &Nexus, id: InstanceUuid) -> ExternalState {
    for _ in 0..200 {
        let s = nexus.instance(id).unwrap().state;
        if s != ExternalState::Stopping {
            return s;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    nexus.instance(id).unwrap().state
}

use sled_agent_api::Clock as _;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_sled_agent_method_and_error_over_http() {
    let s = stack(RemovalOrdering::PublishThenRemove).await;
    let client = SledAgentClient::new(&s.sim_url);
    let vmm = PropolisUuid::from_u128(0x10);

    let got = client.vmm_register(vmm, register_body(VmmState::Starting)).await.unwrap();
    assert_eq!((got.vmm_state.state, got.vmm_state.gen.as_u64()), (VmmState::Starting, 2));
    let e = client
        .vmm_register(PropolisUuid::from_u128(0x11), register_body(VmmState::Running))
        .await
        .unwrap_err();
    assert!(matches!(e, SledAgentError::InvalidRegistration { .. }), "{e:?}");

    let r = client.vmm_put_state(vmm, put(VmmStateRequested::Running)).await.unwrap();
    assert_eq!(r.updated_runtime.unwrap().vmm_state.gen.as_u64(), 2);
    let r = client.vmm_put_state(vmm, put(VmmStateRequested::Stopped)).await.unwrap();
    assert_eq!(r.updated_runtime.unwrap().vmm_state.state, VmmState::Stopping);
    let e = client.vmm_put_state(vmm, put(VmmStateRequested::Running)).await.unwrap_err();
    assert!(
        matches!(e, SledAgentError::InvalidTransition {
            propolis_id, resting: VmmState::Destroyed, requested: VmmStateRequested::Running, ..
        } if propolis_id == vmm),
        "{e:?}"
    );

    let got = client.vmm_get_state(vmm).await.unwrap();
    assert_eq!((got.vmm_state.state, got.vmm_state.gen.as_u64()), (VmmState::Stopping, 3));
    let unknown = PropolisUuid::from_u128(0x99);
    let e = client.vmm_get_state(unknown).await.unwrap_err();
    assert!(matches!(e, SledAgentError::NoSuchVmm { propolis_id } if propolis_id == unknown));
    let e = client.vmm_put_state(unknown, put(VmmStateRequested::Stopped)).await.unwrap_err();
    assert!(e.vmm_gone(), "{e:?}");

    // The sim-only poke reports to Nexus, which has no record of this VMM: 503 with
    // the cause, and the VMM stays.
    let e = client.poke(vmm, true).await.unwrap_err();
    assert!(matches!(e, SledAgentError::UnexpectedResponse { status: 503, .. }), "{e:?}");
    assert!(s.sim.contains_vmm(vmm));
    let e = client.poke(unknown, false).await.unwrap_err();
    assert!(e.vmm_gone(), "{e:?}");
    // Three more steps, each report refused too, leave it Destroyed in the
    // table: terminating. A stop then is answered 410, which reads back as
    // Terminating, not gone.
    for _ in 0..3 {
        client.poke(vmm, true).await.unwrap_err();
    }
    let e = client.vmm_put_state(vmm, put(VmmStateRequested::Stopped)).await.unwrap_err();
    assert!(matches!(e, SledAgentError::Terminating { propolis_id } if propolis_id == vmm));
    assert!(!e.vmm_gone(), "{e:?}");

    assert_eq!(client.vmm_unregister(unknown).await.unwrap().updated_runtime, None);
    let r = client.vmm_unregister(vmm).await.unwrap().updated_runtime.unwrap();
    assert_eq!(r.vmm_state.state, VmmState::Failed);
    assert!(!s.sim.contains_vmm(vmm));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nexus_drives_a_remote_sled_and_hears_back() {
    let s = stack(RemovalOrdering::PublishThenRemove).await;
    let view = s.nexus.instance_create("inst1", true).await.unwrap();
    let vmm = view.propolis_id.unwrap();
    s.nexus.instance_stop(view.id).await.unwrap();
    let poked = SledAgentClient::new(&s.sim_url).poke(vmm, false).await.unwrap();
    let gens: Vec<u64> = poked.published.iter().map(|p| p.vmm_state.gen.as_u64()).collect();
    assert_eq!(gens, [4, 5, 6, 7]);
    assert!(poked.removed);
    assert_eq!(settled(&s.nexus, view.id).await, ExternalState::Stopped);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_nexus_method_and_error_over_http() {
    let s = stack(RemovalOrdering::PublishThenRemove).await;
    let client = NexusClient::new(&s.nexus_url);
    let view = s.nexus.instance_create("inst1", true).await.unwrap();
    let vmm = view.propolis_id.unwrap();

    let state = |st, g| SledVmmState { vmm_state: runtime(st, g) };
    client.cpapi_instances_put(vmm, state(VmmState::Running, 4)).await.unwrap();
    // Stale: accepted, changes nothing.
    client.cpapi_instances_put(vmm, state(VmmState::Starting, 3)).await.unwrap();
    assert_eq!(s.nexus.vmm(vmm).unwrap().gen.as_u64(), 4);
    let unknown = PropolisUuid::from_u128(0x99);
    let e = client.cpapi_instances_put(unknown, state(VmmState::Running, 4)).await.unwrap_err();
    // An unknown VMM is a 500, as omicron's Nexus answers it, and retried.
    assert!(matches!(e, NexusApiError::UnexpectedResponse { status: 500, .. }), "{e:?}");
    assert!(e.retryable());

    let listed = client.vmm_list_for_watcher().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!((listed[0].propolis_id, listed[0].runtime.gen.as_u64()), (vmm, 4));
    let w = client.vmm_update_runtime(vmm, state(VmmState::Running, 4)).await.unwrap();
    assert!(!w.updated, "equal generation is stale");
    let w = client.vmm_update_runtime(vmm, state(VmmState::Failed, 5)).await.unwrap();
    assert!(w.updated && w.update_needed);
    // The watcher runs the update step itself: over the wire too.
    assert_eq!(s.nexus.instance(view.id).unwrap().state, ExternalState::Stopping);
    client.run_instance_update(view.id).await.unwrap();
    assert_eq!(s.nexus.instance(view.id).unwrap().state, ExternalState::Failed);
    let e = client.vmm_update_runtime(unknown, state(VmmState::Failed, 5)).await.unwrap_err();
    assert!(matches!(e, DatastoreError::NoSuchVmm { .. }), "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_no_such_instance_means_gone() {
    let s = stack(RemovalOrdering::PublishThenRemove).await;
    let vmm = PropolisUuid::from_u128(0x10);
    // Nothing listens here: unreachable, not gone.
    let closed = SledAgentClient::new("http://127.0.0.1:9");
    let e = closed.vmm_get_state(vmm).await.unwrap_err();
    assert!(matches!(e, SledAgentError::Communication { .. }) && !e.vmm_gone(), "{e:?}");
    // No such route (a wrong base path): a 404, but not NO_SUCH_INSTANCE, so not gone.
    let wrong = SledAgentClient::new(&format!("{}/not-a-sled-agent", s.sim_url));
    let e = wrong.vmm_get_state(vmm).await.unwrap_err();
    assert!(matches!(e, SledAgentError::UnexpectedResponse { status: 404, .. }), "{e:?}");
    assert!(!e.vmm_gone());
    let e = NexusClient::new("http://127.0.0.1:9").vmm_list_for_watcher().await.unwrap_err();
    assert!(matches!(e, DatastoreError::Unavailable { .. }), "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watcher_over_http_acts_as_in_process() {
    let s = stack(RemovalOrdering::PublishThenRemove).await;
    let view = s.nexus.instance_create("inst1", true).await.unwrap();
    let vmm = view.propolis_id.unwrap();
    // The sled agent forgets the VMM behind Nexus's back: a real 404.
    SledAgentClient::new(&s.sim_url).vmm_unregister(vmm).await.unwrap();

    let sleds = BTreeMap::from([(SLED, SledAgentClient::new(&s.sim_url))]);
    let ds = NexusClient::new(&s.nexus_url);
    let watcher = InstanceWatcher::new(&log(), ds, sleds, Arc::new(LogicalClock::default()));
    let counts = watcher.activate().await.unwrap();
    assert_eq!((counts.checked, counts.failed, counts.updated), (1, 1, 1));
    let row = s.nexus.vmm(vmm).unwrap();
    assert_eq!(row.gen.as_u64(), 3, "Failed at listed gen 2 + 1");
    assert_eq!(settled(&s.nexus, view.id).await, ExternalState::Failed);

    // Pointed at the wrong server, every check is inconclusive and nothing is written.
    let view = s.nexus.instance_create("inst2", true).await.unwrap();
    let sleds = BTreeMap::from([(SLED, SledAgentClient::new(&s.nexus_url))]);
    let watcher = InstanceWatcher::new(
        &log(),
        NexusClient::new(&s.nexus_url),
        sleds,
        Arc::new(LogicalClock::default()),
    );
    let counts = watcher.activate().await.unwrap();
    assert_eq!((counts.checked, counts.inconclusive, counts.updated), (1, 1, 0));
    assert_eq!(s.nexus.instance(view.id).unwrap().state, ExternalState::Starting);
}

/// A request and the status and error code it must get.
type Case = (Method, String, Option<String>, StatusCode, Option<&'static str>);

/// Sends `body` (raw) and returns the status and the error body's code.
/// A request with the `api-version` the server at `base` serves, as omicron's
/// clients send it: `nexus` says which of the two it is.
async fn raw(
    method: Method,
    url: String,
    body: Option<String>,
    nexus: bool,
) -> (StatusCode, Option<String>) {
    let version = if nexus { NEXUS_INTERNAL_API_VERSION } else { SLED_AGENT_API_VERSION };
    raw_at(method, url, body, Some(&version.to_string())).await
}

async fn raw_at(
    method: Method,
    url: String,
    body: Option<String>,
    version: Option<&str>,
) -> (StatusCode, Option<String>) {
    let mut req = reqwest::Client::new().request(method, url);
    if let Some(v) = version {
        req = req.header(VERSION_HEADER, v);
    }
    if let Some(b) = body {
        req = req.header("content-type", "application/json").body(b);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status();
    let header = resp.headers().get("x-request-id").map(|v| v.to_str().unwrap().to_string());
    let json: serde_json::Value = resp.json().await.unwrap_or_default();
    if status.is_client_error() || status.is_server_error() {
        // omicron's `Error`: a message, and the request's id, as in its header.
        assert!(json["message"].is_string(), "{json}");
        assert_eq!(json["request_id"].as_str().map(str::to_string), header, "{json}");
    }
    (status, json["error_code"].as_str().map(str::to_string))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_on_every_endpoint_gets_a_status_not_a_panic() {
    let s = stack(RemovalOrdering::PublishThenRemove).await;
    let view = s.nexus.instance_create("inst1", true).await.unwrap();
    let (vmm, inst) = (view.propolis_id.unwrap(), view.id);
    // Stopping: Running is now an invalid transition, and the disk cannot attach.
    s.nexus.instance_stop(inst).await.unwrap();
    let unknown = PropolisUuid::from_u128(0x99);
    let (sim, nx) = (&s.sim_url, &s.nexus_url);
    let big = format!("{{\"x\":\"{}\"}}", "a".repeat(REQUEST_BODY_MAX_BYTES));
    let gen7 = r#"{"vmm_state":{"state":"running","gen":7,"time_updated":"2024-12-18T23:42:00Z"}}"#;
    let gen1 = r#"{"vmm_state":{"state":"running","gen":1,"time_updated":"2024-12-18T23:42:00Z"}}"#;
    let gen0 = r#"{"vmm_state":{"state":"running","gen":0,"time_updated":"2024-12-18T23:42:00Z"}}"#;
    let starting = r#"{"instance_id":"00000000-0000-0000-0000-000000000009","vmm_runtime":{"state":"starting","gen":2,"time_updated":"2024-12-18T23:42:00Z"}}"#;
    let s400 = StatusCode::BAD_REQUEST;
    let s404 = StatusCode::NOT_FOUND;
    let cases: Vec<Case> = vec![
        // sim: unknown ids
        (Method::GET, format!("{sim}/vmms/{unknown}/state"), None, s404, Some("NO_SUCH_INSTANCE")),
        (
            Method::PUT,
            format!("{sim}/vmms/{unknown}/state"),
            Some(r#"{"state":{"type":"stopped"}}"#.into()),
            s404,
            Some("NO_SUCH_INSTANCE"),
        ),
        (Method::POST, format!("{sim}/vmms/{unknown}/poke"), None, s404, Some("NO_SUCH_INSTANCE")),
        (
            Method::POST,
            format!("{sim}/vmms/{unknown}/poke-single-step"),
            None,
            s404,
            Some("NO_SUCH_INSTANCE"),
        ),
        // sim: a path that is not a uuid, wrong JSON, a body over the limit
        (Method::GET, format!("{sim}/vmms/not-a-uuid/state"), None, s400, None),
        (Method::DELETE, format!("{sim}/vmms/not-a-uuid"), None, s400, None),
        (Method::PUT, format!("{sim}/vmms/{vmm}/state"), Some("{not json".into()), s400, None),
        (
            Method::PUT,
            format!("{sim}/vmms/{vmm}/state"),
            Some(r#"{"state":{"type":"bogus"}}"#.into()),
            s400,
            None,
        ),
        (
            Method::PUT,
            format!("{sim}/vmms/{vmm}"),
            Some(r#"{"instance_id":"x"}"#.into()),
            s400,
            None,
        ),
        (Method::PUT, format!("{sim}/vmms/{vmm}"), Some(gen7.into()), s400, None),
        (Method::PUT, format!("{sim}/vmms/{vmm}/state"), Some(big.clone()), s400, None),
        // sim: an invalid transition, then a bad registration
        (
            Method::PUT,
            format!("{sim}/vmms/{vmm}/state"),
            Some(r#"{"state":{"type":"running"}}"#.into()),
            s400,
            Some("InvalidRequest"),
        ),
        (
            Method::PUT,
            format!("{sim}/vmms/{unknown}"),
            Some(starting.replace("starting", "running")),
            s400,
            Some("InvalidRequest"),
        ),
        // omicron's migration_target: taken, and refused (migration is not modelled).
        (
            Method::PUT,
            format!("{sim}/vmms/{vmm}/state"),
            Some(
                r#"{"state":{"type":"migration_target","value":{"src_propolis_addr":"[::1]:1"}}}"#
                    .into(),
            ),
            s400,
            Some("InvalidRequest"),
        ),
        // nexus internal: unknown VMM, generation 0, wrong JSON, too big
        (
            Method::PUT,
            format!("{nx}/vmms/{unknown}"),
            Some(gen7.into()),
            StatusCode::INTERNAL_SERVER_ERROR,
            Some("Internal"),
        ),
        (Method::PUT, format!("{nx}/vmms/{vmm}"), Some(gen0.into()), s400, None),
        (Method::PUT, format!("{nx}/vmms/{vmm}"), Some("[]".into()), s400, None),
        (Method::PUT, format!("{nx}/vmms/{vmm}"), Some(big.clone()), s400, None),
        // nexus datastore
        (
            Method::PUT,
            format!("{nx}/datastore/vmms/{unknown}"),
            Some(gen7.into()),
            s404,
            Some("NO_SUCH_VMM"),
        ),
        (Method::PUT, format!("{nx}/datastore/vmms/{vmm}"), Some("{}".into()), s400, None),
        // nexus external
        (Method::GET, format!("{nx}/instances/{unknown}"), None, s404, Some("ObjectNotFound")),
        (
            Method::POST,
            format!("{nx}/instances/{unknown}/stop"),
            None,
            s404,
            Some("ObjectNotFound"),
        ),
        (
            Method::POST,
            format!("{nx}/instances"),
            Some(r#"{"name":"inst1"}"#.into()),
            s400,
            Some("ObjectAlreadyExists"),
        ),
        (Method::POST, format!("{nx}/instances"), Some(r#"{"nom":"x"}"#.into()), s400, None),
        (Method::GET, format!("{nx}/disks/{unknown}"), None, s404, Some("ObjectNotFound")),
        (Method::POST, format!("{nx}/disks"), Some(big), s400, None),
        (
            Method::POST,
            format!("{nx}/disks/{unknown}/attach"),
            Some(format!(r#"{{"instance_id":"{inst}"}}"#)),
            s404,
            Some("ObjectNotFound"),
        ),
        (
            Method::POST,
            format!("{nx}/disks/{unknown}/detach"),
            Some(format!(r#"{{"instance_id":"{inst}"}}"#)),
            s404,
            Some("ObjectNotFound"),
        ),
        (Method::POST, format!("{nx}/disks/{unknown}/detach"), Some("{}".into()), s400, None),
    ];
    // A malformed id in any path: 400 in omicron's shape (`raw` checks the body).
    let bad = "not-a-uuid";
    let stop = r#"{"state":{"type":"stopped"}}"#;
    let cases = cases.into_iter().chain([
        (Method::GET, format!("{sim}/vmms/{bad}/state"), None, s400, None),
        (Method::PUT, format!("{sim}/vmms/{bad}/state"), Some(stop.into()), s400, None),
        (Method::PUT, format!("{sim}/vmms/{bad}"), Some(starting.into()), s400, None),
        (Method::DELETE, format!("{sim}/vmms/{bad}"), None, s400, None),
        (Method::POST, format!("{sim}/vmms/{bad}/poke"), None, s400, None),
        (Method::PUT, format!("{nx}/vmms/{bad}"), Some(gen7.into()), s400, None),
        (Method::PUT, format!("{nx}/datastore/vmms/{bad}"), Some(gen7.into()), s400, None),
        (Method::POST, format!("{nx}/datastore/instances/{bad}/update"), None, s400, None),
        (Method::GET, format!("{nx}/instances/{bad}"), None, s400, None),
        (Method::POST, format!("{nx}/instances/{bad}/stop"), None, s400, None),
        (Method::GET, format!("{nx}/disks/{bad}"), None, s400, None),
    ]);
    for (method, url, body, want, code) in cases {
        let (status, got) =
            raw(method.clone(), url.clone(), body, url.starts_with(nx.as_str())).await;
        assert_eq!((status, got.as_deref()), (want, code), "{method} {url}");
    }

    // The api-version header, as omicron's internal servers take it: required, a
    // semver, and no newer than the server's; an older one is served.
    let state_url = format!("{sim}/vmms/{vmm}/state");
    for (version, want) in [
        (None, s400),
        (Some("49.0.0"), s400),
        (Some("not-a-version"), s400),
        (Some("47.0.0"), StatusCode::OK),
        (Some("48.0.0"), StatusCode::OK),
    ] {
        let (status, _) = raw_at(Method::GET, state_url.clone(), None, version).await;
        assert_eq!(status, want, "sim, api-version {version:?}");
    }
    for (version, want) in
        [(None, s400), (Some("1.0.1"), s400), (Some("1.0.0"), StatusCode::INTERNAL_SERVER_ERROR)]
    {
        let url = format!("{nx}/vmms/{unknown}");
        let (status, _) = raw_at(Method::PUT, url, Some(gen7.into()), version).await;
        assert_eq!(status, want, "nexus, api-version {version:?}");
    }

    // Stale generations are not errors: 204, and nothing changes.
    let (status, _) = raw(Method::PUT, format!("{nx}/vmms/{vmm}"), Some(gen1.into()), true).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(s.nexus.vmm(vmm).unwrap().gen.as_u64(), 3);

    // Disk rules: attaching to an instance that is not stopped is refused with a message.
    let disk = s.nexus.disk_create("d").unwrap().id;
    let attach = format!(r#"{{"instance_id":"{inst}"}}"#);
    let (status, code) =
        raw(Method::POST, format!("{nx}/disks/{disk}/attach"), Some(attach), true).await;
    assert_eq!((status, code.as_deref()), (s400, Some("InvalidRequest")));

    // Both servers still answer: no handler panicked.
    assert!(SledAgentClient::new(sim).vmm_get_state(vmm).await.is_ok());
    assert!(NexusClient::new(nx).vmm_list_for_watcher().await.is_ok());
}

/// A call made inside `refused_by_server` asks its server to refuse it: a real
/// 503 comes back and nothing is applied, on both servers' faultable endpoints;
/// the same call outside goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_asked_of_a_server_is_a_real_503_that_applies_nothing() {
    use sledsim_http::refused_by_server;
    let s = stack(RemovalOrdering::PublishThenRemove).await;
    let sled = SledAgentClient::new(&s.sim_url);
    let view = s.nexus.instance_create("inst1", true).await.unwrap();
    let vmm = view.propolis_id.unwrap();
    let refused = |e: &SledAgentError| {
        matches!(e, SledAgentError::UnexpectedResponse { status: 503, message, .. }
            if message.contains("fault injection"))
    };

    let e = refused_by_server(sled.vmm_put_state(vmm, put(VmmStateRequested::Stopped)))
        .await
        .unwrap_err();
    assert!(refused(&e), "{e:?}");
    assert_eq!(sled.vmm_get_state(vmm).await.unwrap().vmm_state.state, VmmState::Starting);
    let e = refused_by_server(sled.vmm_get_state(vmm)).await.unwrap_err();
    assert!(refused(&e) && !e.vmm_gone(), "{e:?}");

    let nexus = NexusClient::new(&s.nexus_url);
    let report = SledVmmState { vmm_state: runtime(VmmState::Running, 4) };
    let e = refused_by_server(nexus.cpapi_instances_put(vmm, report)).await.unwrap_err();
    assert!(
        matches!(&e, NexusApiError::UnexpectedResponse { status: 503, .. }) && e.retryable(),
        "{e:?}"
    );
    assert_eq!(s.nexus.vmm(vmm).unwrap().gen.as_u64(), 2, "the refused report changed nothing");
    nexus.cpapi_instances_put(vmm, report).await.unwrap();
    assert_eq!(s.nexus.vmm(vmm).unwrap().gen.as_u64(), 4);
}

#[test]
fn a_base_url_is_checked() {
    for good in ["http://127.0.0.1:12221", "http://localhost:1/", "https://sled.example"] {
        assert!(sledsim_http::base_url(good).is_ok(), "{good}");
    }
    assert_eq!(sledsim_http::base_url("http://h:1/").unwrap(), "http://h:1");
    for bad in
        ["", "not-a-url", "127.0.0.1:12221", "ftp://h", "http://", "http://h/?x=1", "http://h/#f"]
    {
        assert!(sledsim_http::base_url(bad).is_err(), "{bad:?}");
    }
}
