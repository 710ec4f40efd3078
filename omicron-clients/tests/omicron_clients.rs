//! omicron's own generated clients against sledsim's servers: the sled-agent
//! client registers, drives, reads and unregisters a VMM on the sim and reads the
//! 404 of a VMM that is gone as omicron's typed error; the nexus-internal client
//! reports VMM states to the Nexus stub, a stale one included.

// A panic is how a test reports failure; helpers outside #[test] fns may unwrap too.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::Arc;

use nexus_stub::{NexusConfig, NexusStub, TokioSpawner};
use omicron_clients::{nexus_internal, sled_agent};
use sim_sled_agent::{SimConfig, SimSledAgent};
use sled_agent_api::{LogicalClock, SledUuid};
use sledsim_http::{LateNexus, NexusClient, SledAgentClient};

const SLED: SledUuid = SledUuid::from_u128(1);

fn log() -> slog::Logger {
    slog::Logger::root(slog::Discard, slog::o!())
}

type Sim = SimSledAgent<Arc<LateNexus>>;
type Nexus = NexusStub<SledAgentClient>;

/// The sim and the Nexus stub on loopback, pointing at each other.
struct Stack {
    nexus: Arc<Nexus>,
    sim_url: String,
    nexus_url: String,
    _servers: (dropshot::HttpServer<Arc<Sim>>, dropshot::HttpServer<Arc<Nexus>>),
}

fn stack() -> Stack {
    let late = Arc::new(LateNexus::default());
    let clock = Arc::new(LogicalClock::default());
    let sim =
        SimSledAgent::new(&log(), SLED, SimConfig::default(), Arc::clone(&late), clock.clone())
            .unwrap();
    let loopback = ([127, 0, 0, 1], 0).into();
    let sim_server = sim_sled_agent::http::serve(Arc::clone(&sim), loopback, &log()).unwrap();
    let sim_url = format!("http://{}", sim_server.local_addr());
    let sleds = BTreeMap::from([(SLED, SledAgentClient::new(&sim_url))]);
    let spawner = Arc::new(TokioSpawner::new(&log()).unwrap());
    let nexus = NexusStub::new(&log(), NexusConfig::default(), sleds, clock, spawner);
    let nexus_server = nexus_stub::http::serve(Arc::clone(&nexus), loopback, &log()).unwrap();
    let nexus_url = format!("http://{}", nexus_server.local_addr());
    assert!(late.bind(Arc::new(NexusClient::new(&nexus_url))));
    Stack { nexus, sim_url, nexus_url, _servers: (sim_server, nexus_server) }
}

/// An `InstanceEnsureBody` with every field omicron's schema requires, and a
/// small instance spec: no NICs, disks or volumes, so far smaller than a
/// production body (which was not measured).
fn ensure_body(instance: &str, gen: u64) -> sled_agent::types::InstanceEnsureBody {
    let body = serde_json::json!({
        "instance_id": instance,
        "local_config": {
            "attached_subnets": [],
            "delegated_zvols": [],
            "dhcp_config": { "dns_servers": ["1.1.1.1"], "search_domains": [] },
            "external_ips": {},
            "firewall_rules": [],
            "hostname": "inst1",
            "multicast_groups": [],
            "nics": []
        },
        "metadata": {
            "project_id": "00000000-0000-0000-0000-00000000000a",
            "silo_id": "00000000-0000-0000-0000-00000000000b"
        },
        "migration_id": null,
        "propolis_addr": "[fd00:1122:3344:101::10]:12400",
        "vmm_runtime": { "state": "starting", "gen": gen, "time_updated": "2026-12-01T00:00:00Z" },
        "vmm_spec": {
            "board": {
                "chipset": { "type": "i440_fx", "value": { "enable_pcie": false } },
                "cpus": 2,
                "memory_mb": 1024
            },
            "components": {}
        }
    });
    serde_json::from_value(body).unwrap()
}

fn state(s: &sled_agent::types::SledVmmState) -> (String, u64) {
    (s.vmm_state.state.to_string(), s.vmm_state.gen.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn omicrons_sled_agent_client_drives_the_sim() {
    let s = stack();
    let client = sled_agent::Client::new(&s.sim_url);
    let vmm = uuid::Uuid::from_u128(0x42);
    let instance = "00000000-0000-0000-0000-000000000009";
    let body = ensure_body(instance, 2);

    let registered = client.vmm_register().propolis_id(vmm).body(body).send().await.unwrap();
    assert_eq!(state(&registered), ("starting".into(), 2));

    let running =
        sled_agent::types::VmmPutStateBody { state: sled_agent::types::VmmStateRequested::Running };
    let r = client.vmm_put_state().propolis_id(vmm).body(running).send().await.unwrap();
    assert!(r.updated_runtime.is_some(), "{r:?}");
    let got = client.vmm_get_state().propolis_id(vmm).send().await.unwrap();
    assert_eq!(got.vmm_state.gen.0, 2, "a queued transition does not bump the generation");

    let stopped =
        sled_agent::types::VmmPutStateBody { state: sled_agent::types::VmmStateRequested::Stopped };
    let r = client.vmm_put_state().propolis_id(vmm).body(stopped).send().await.unwrap();
    assert!(r.updated_runtime.is_some(), "{r:?}");
    let got = client.vmm_get_state().propolis_id(vmm).send().await.unwrap();
    // A stop shows at once (Stopping, as omicron's sim does); the rest waits.
    assert_eq!(got.vmm_state.state.to_string(), "stopping");
    let gone = client.vmm_unregister().propolis_id(vmm).send().await.unwrap();
    assert!(gone.updated_runtime.is_some(), "{gone:?}");

    // The VMM is gone: omicron's client reads sledsim's 404 as its own typed error.
    match client.vmm_get_state().propolis_id(vmm).send().await {
        Err(sled_agent::Error::ErrorResponse(e)) => {
            assert_eq!(e.status().as_u16(), 404);
            assert_eq!(e.error_code.as_deref(), Some("NO_SUCH_INSTANCE"), "{e:?}");
            assert!(!e.request_id.is_empty());
        }
        other => panic!("wanted omicron's 404, got {other:?}"),
    }
    drop(s.nexus);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn omicrons_nexus_client_reports_to_the_stub() {
    let s = stack();
    let view = s.nexus.instance_create("inst1", true).await.unwrap();
    let vmm = view.propolis_id.unwrap();
    let stored = s.nexus.vmm(vmm).unwrap().gen.as_u64();
    let client = nexus_internal::Client::new(&s.nexus_url);
    let report = |state: &str, gen: u64| -> nexus_internal::types::SledVmmState {
        serde_json::from_value(serde_json::json!({
            "vmm_state": { "state": state, "gen": gen, "time_updated": "2026-12-01T00:00:01Z" },
            "migration_in": null,
            "migration_out": null
        }))
        .unwrap()
    };
    let id = vmm.into_untyped();

    // A newer generation: 204, applied.
    client
        .cpapi_instances_put()
        .propolis_id(id)
        .body(report("running", stored + 1))
        .send()
        .await
        .unwrap();
    assert_eq!(s.nexus.vmm(vmm).unwrap().gen.as_u64(), stored + 1);
    // A stale one: 204 too, and nothing changes.
    client
        .cpapi_instances_put()
        .propolis_id(id)
        .body(report("stopping", stored))
        .send()
        .await
        .unwrap();
    let now = s.nexus.vmm(vmm).unwrap();
    assert_eq!((now.gen.as_u64(), now.state.to_string()), (stored + 1, "running".to_string()));
    // A VMM Nexus has never heard of: a 500, as omicron's Nexus answers it.
    let unknown = uuid::Uuid::from_u128(0x999);
    match client.cpapi_instances_put().propolis_id(unknown).body(report("running", 9)).send().await
    {
        Err(nexus_internal::Error::ErrorResponse(e)) => assert_eq!(e.status().as_u16(), 500),
        other => panic!("wanted a 500, got {other:?}"),
    }
}
