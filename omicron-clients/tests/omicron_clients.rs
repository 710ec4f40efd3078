//! omicron's own generated clients against sledsim's servers: the sled-agent
//! client registers, drives, reads and unregisters a VMM on the sim and reads the
//! 404 of a VMM that is gone as omicron's typed error; the nexus-internal client
//! reports VMM states to the Nexus stub, a stale one included; a registration as
//! large as a big instance's is taken.

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
/// small instance spec: no NICs, disks or volumes (`large_ensure_body` has them).
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

/// A registration as large as omicron sends for a big instance: omicron's limits
/// of 12 disks and 8 NICs, each disk an NVMe device over a Crucible backend whose
/// volume request names three regions and a read-only image parent, 32 KiB of
/// cloud-init user data as a blob disk, four serial ports, a boot order, and a
/// VPC's three default firewall rules resolved against the instance's 8 NICs.
/// omicron's client sends it, the sim takes it, and its size is measured
/// against the servers' body limit (omicron's, 1 MiB). A rule that targets the
/// VPC names every NIC in it, so the body grows with the VPC: the test also
/// says at how many NICs three such rules would reach the limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_production_sized_registration_is_taken() {
    let s = stack();
    let client = sled_agent::Client::new(&s.sim_url);
    let body = large_ensure_body("00000000-0000-0000-0000-000000000009", 2);
    let size = serde_json::to_vec(&body).unwrap().len();
    let per_nic = serde_json::to_vec(&nic(0)).unwrap().len() + 1;
    let vpc_nics = (sledsim_http::REQUEST_BODY_MAX_BYTES - size) / (3 * per_nic) + 8;
    eprintln!(
        "production-sized InstanceEnsureBody: {size} bytes; each NIC a rule targets adds \
         {per_nic}, so three VPC-wide rules reach 1 MiB at about {vpc_nics} NICs in the VPC"
    );
    assert!(size > 64 * 1024, "as large as a big instance's: {size}");
    let vmm = uuid::Uuid::from_u128(0x43);
    let registered = client.vmm_register().propolis_id(vmm).body(body).send().await.unwrap();
    assert_eq!(state(&registered), ("starting".into(), 2));
    drop(s.nexus);
}

fn uuid_n(kind: u32, n: u32) -> String {
    format!("{kind:08x}-0000-4000-8000-{n:012x}")
}

fn nic(n: u32) -> serde_json::Value {
    serde_json::json!({
        "id": uuid_n(0x2, n),
        "ip_config": { "type": "v4", "value": {
            "ip": format!("172.30.{n}.5"), "subnet": format!("172.30.{n}.0/24"), "transit_ips": []
        }},
        "kind": { "type": "instance", "id": uuid_n(0x1, 0) },
        "mac": format!("a8:40:25:f0:00:{n:02x}"),
        "name": format!("net{n}"),
        "primary": n == 0,
        "slot": n,
        "vni": 4_000_000 + n
    })
}

/// A Crucible volume request as omicron builds one for a disk made from an image:
/// three regions, and the image as a read-only parent of three more.
fn volume_request(n: u32) -> String {
    let region = |id: String, gen: u32, read_only: bool| {
        serde_json::json!({
            "type": "region", "block_size": 512, "blocks_per_extent": 131072, "extent_count": 160,
            "gen": gen,
            "opts": {
                "id": id,
                "target": (1..=3).map(|s| format!("[fd00:1122:3344:10{s}::{n:x}]:19000"))
                    .collect::<Vec<_>>(),
                "lossy": false, "flush_timeout": null, "read_only": read_only,
                "key": "q0ZbVDzjQyDkKpHnl5lNX8eGcMHdQ8JQ9ZqJtBvRZcE=",
                "cert_pem": null, "key_pem": null, "root_cert_pem": null, "control": null
            }
        })
    };
    serde_json::json!({
        "type": "volume", "id": uuid_n(0x3, n), "block_size": 512,
        "sub_volumes": [region(uuid_n(0x4, n), 1, false)],
        "read_only_parent": {
            "type": "volume", "id": uuid_n(0x5, n), "block_size": 512,
            "sub_volumes": [region(uuid_n(0x6, n), 3, true)], "read_only_parent": null
        }
    })
    .to_string()
}

fn components() -> serde_json::Value {
    let mut c = serde_json::Map::new();
    let pci = |device: u32| serde_json::json!({ "bus": 0, "device": device, "function": 0 });
    for n in 0..12u32 {
        let serial = vec![u32::from(b'0') + n % 10; 20];
        c.insert(
            format!("disk{n}"),
            serde_json::json!({ "type": "nvme_disk", "component": {
                "backend_id": format!("disk{n}-backend"), "has_write_cache": true,
                "pci_path": pci(16 + n), "serial_number": serial
            }}),
        );
        c.insert(
            format!("disk{n}-backend"),
            serde_json::json!({
                "type": "crucible_storage_backend",
                "component": { "readonly": false, "request_json": volume_request(n) }
            }),
        );
    }
    for n in 0..8u32 {
        c.insert(
            format!("net{n}"),
            serde_json::json!({ "type": "virtio_nic", "component": {
                "backend_id": format!("net{n}-backend"), "interface_id": uuid_n(0x2, n),
                "pci_path": pci(8 + n)
            }}),
        );
        c.insert(
            format!("net{n}-backend"),
            serde_json::json!({
                "type": "virtio_network_backend", "component": { "vnic_name": format!("vopte{n}") }
            }),
        );
    }
    // 32 KiB of user data (omicron's limit), base64: 43,692 characters.
    let user_data = "QUFB".repeat(32 * 1024 / 3 + 1);
    c.insert(
        "cloud-init".into(),
        serde_json::json!({ "type": "virtio_disk", "component": {
            "backend_id": "cloud-init-backend", "pci_path": pci(24)
        }}),
    );
    c.insert(
        "cloud-init-backend".into(),
        serde_json::json!({
            "type": "blob_storage_backend", "component": { "base64": user_data, "readonly": true }
        }),
    );
    for (n, port) in ["com1", "com2", "com3", "com4"].iter().enumerate() {
        c.insert(
            format!("serial{n}"),
            serde_json::json!({
                "type": "serial_port", "component": { "num": port }
            }),
        );
    }
    let order: Vec<_> = (0..12).map(|n| serde_json::json!({ "id": format!("disk{n}") })).collect();
    c.insert(
        "boot-settings".into(),
        serde_json::json!({
            "type": "boot_settings", "component": { "order": order }
        }),
    );
    serde_json::Value::Object(c)
}

fn large_ensure_body(instance: &str, gen: u64) -> sled_agent::types::InstanceEnsureBody {
    let nics: Vec<_> = (0..8).map(nic).collect();
    let rule = |direction: &str, protocols: serde_json::Value, ports: serde_json::Value| {
        serde_json::json!({
            "action": "allow", "direction": direction, "priority": 65534, "status": "enabled",
            "filter_hosts": [{ "type": "vpc", "value": 4_000_000 }],
            "filter_ports": ports, "filter_protocols": protocols, "targets": nics
        })
    };
    // omicron's default VPC rules: allow-internal-inbound, allow-ssh, allow-icmp.
    let rules = [
        rule("inbound", serde_json::Value::Null, serde_json::Value::Null),
        rule("inbound", serde_json::json!([{ "type": "tcp" }]), serde_json::json!(["22"])),
        rule(
            "inbound",
            serde_json::json!([{ "type": "icmp", "value": null }]),
            serde_json::Value::Null,
        ),
    ];
    let mut body = serde_json::to_value(ensure_body(instance, gen)).unwrap();
    body["local_config"]["nics"] = serde_json::Value::Array(nics.clone());
    body["local_config"]["firewall_rules"] = serde_json::json!(rules);
    body["vmm_spec"]["board"]["cpus"] = serde_json::json!(64);
    body["vmm_spec"]["board"]["memory_mb"] = serde_json::json!(256 * 1024);
    body["vmm_spec"]["components"] = components();
    serde_json::from_value(body).unwrap()
}
