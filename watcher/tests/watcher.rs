//! The watcher pass against mocked sled agents and a mocked datastore, one test per
//! kind of sled-agent answer.

// A panic is how a test reports failure; helpers outside #[test] fns may unwrap too.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::Arc;

use mockall::predicate::eq;
use sled_agent_api::{
    Clock, Generation, InstanceUuid, LogicalClock, MockSledAgentApi, PropolisUuid, SledAgentError,
    SledUuid, SledVmmState, VmmRuntimeState, VmmState,
};
use watcher::{
    DatastoreError, InstanceWatcher, MockWatcherDatastore, PassCounts, VmmWriteOutcome, WatchedVmm,
    WatcherError, WatcherFaults,
};

const SLED: SledUuid = SledUuid::from_u128(1);
const VMM: PropolisUuid = PropolisUuid::from_u128(0x10);

fn runtime(state: VmmState, gen: u64) -> VmmRuntimeState {
    VmmRuntimeState {
        state,
        gen: Generation::try_from(gen).expect("valid"),
        time_updated: LogicalClock::default().now(),
    }
}

/// A datastore listing one VMM at Stopping/6 (the #7282 row) and expecting at most
/// one write, whose (state, gen) must be `want_write`.
fn datastore(want_write: Option<(VmmState, u64)>, applied: bool) -> MockWatcherDatastore {
    let mut ds = MockWatcherDatastore::new();
    ds.expect_vmm_list_for_watcher().times(1).returning(|| {
        Ok(vec![WatchedVmm {
            instance_id: InstanceUuid::from_u128(0x20),
            propolis_id: VMM,
            sled_id: SLED,
            runtime: runtime(VmmState::Stopping, 6),
        }])
    });
    match want_write {
        Some((state, gen)) => {
            ds.expect_vmm_update_runtime()
                .withf(move |id, s: &SledVmmState| {
                    *id == VMM && s.vmm_state.state == state && s.vmm_state.gen.as_u64() == gen
                })
                .times(1)
                .returning(move |_, _| {
                    Ok(VmmWriteOutcome { updated: applied, update_queued: applied })
                });
        }
        None => {
            ds.expect_vmm_update_runtime().times(0);
        }
    }
    ds
}

fn sled(answer: fn() -> Result<SledVmmState, SledAgentError>) -> MockSledAgentApi {
    let mut s = MockSledAgentApi::new();
    s.expect_vmm_get_state().with(eq(VMM)).times(1).returning(move |_| answer());
    s
}

async fn check(
    ds: MockWatcherDatastore,
    sleds: BTreeMap<SledUuid, MockSledAgentApi>,
    faults: WatcherFaults,
) -> PassCounts {
    let log = slog::Logger::root(slog::Discard, slog::o!());
    InstanceWatcher::new(&log, ds, sleds, Arc::new(LogicalClock::default()))
        .with_faults(faults)
        .activate()
        .await
        .expect("listing succeeds")
}

fn one_sled(
    answer: fn() -> Result<SledVmmState, SledAgentError>,
) -> BTreeMap<SledUuid, MockSledAgentApi> {
    BTreeMap::from([(SLED, sled(answer))])
}

#[tokio::test]
async fn ok_submits_the_reported_state_unchanged() {
    let ds = datastore(Some((VmmState::Destroyed, 7)), true);
    let sleds = one_sled(|| Ok(SledVmmState { vmm_state: runtime(VmmState::Destroyed, 7) }));
    let counts = check(ds, sleds, WatcherFaults::default()).await;
    assert_eq!(counts, PassCounts { checked: 1, updated: 1, ..PassCounts::default() });
}

#[tokio::test]
async fn no_such_vmm_writes_failed_at_listed_gen_plus_one() {
    let ds = datastore(Some((VmmState::Failed, 7)), false);
    let sleds = one_sled(|| Err(SledAgentError::NoSuchVmm { propolis_id: VMM }));
    let counts = check(ds, sleds, WatcherFaults::default()).await;
    // Not applied: the datastore already holds Destroyed/7, so the write was stale.
    assert_eq!(counts, PassCounts { checked: 1, failed: 1, ..PassCounts::default() });
}

#[tokio::test]
async fn seeded_skip_generation_fault_writes_listed_gen_plus_two() {
    let ds = datastore(Some((VmmState::Failed, 8)), true);
    let sleds = one_sled(|| Err(SledAgentError::NoSuchVmm { propolis_id: VMM }));
    let counts = check(ds, sleds, WatcherFaults { skip_generation: true }).await;
    assert_eq!(counts.failed, 1);
}

#[tokio::test]
async fn other_errors_are_inconclusive_and_write_nothing() {
    let answers: [fn() -> Result<SledVmmState, SledAgentError>; 3] = [
        || {
            Err(SledAgentError::UnexpectedResponse {
                operation: "vmm_get_state",
                status: 410,
                message: "terminating".into(),
            })
        },
        || {
            Err(SledAgentError::Communication {
                operation: "vmm_get_state",
                source: "reset".into(),
            })
        },
        || {
            Err(SledAgentError::InvalidTransition {
                propolis_id: VMM,
                current: VmmState::Destroyed,
                requested: sled_agent_api::VmmStateRequested::Running,
            })
        },
    ];
    for answer in answers {
        let counts =
            check(datastore(None, false), one_sled(answer), WatcherFaults::default()).await;
        assert_eq!(counts, PassCounts { checked: 1, inconclusive: 1, ..PassCounts::default() });
    }
}

#[tokio::test]
async fn unknown_sled_is_inconclusive() {
    let counts = check(datastore(None, false), BTreeMap::new(), WatcherFaults::default()).await;
    assert_eq!(counts, PassCounts { checked: 1, inconclusive: 1, ..PassCounts::default() });
}

#[tokio::test]
async fn write_errors_are_counted_not_dropped() {
    let mut ds = MockWatcherDatastore::new();
    ds.expect_vmm_list_for_watcher().returning(|| {
        Ok(vec![WatchedVmm {
            instance_id: InstanceUuid::from_u128(0x20),
            propolis_id: VMM,
            sled_id: SLED,
            runtime: runtime(VmmState::Running, 4),
        }])
    });
    ds.expect_vmm_update_runtime()
        .returning(|id, _| Err(DatastoreError::NoSuchVmm { propolis_id: id }));
    let sleds = one_sled(|| Err(SledAgentError::NoSuchVmm { propolis_id: VMM }));
    let counts = check(ds, sleds, WatcherFaults::default()).await;
    assert_eq!(
        counts,
        PassCounts { checked: 1, failed: 1, write_errors: 1, ..PassCounts::default() }
    );
}

#[tokio::test]
async fn a_failed_listing_is_an_error() {
    let mut ds = MockWatcherDatastore::new();
    ds.expect_vmm_list_for_watcher().returning(|| {
        Err(DatastoreError::Unavailable {
            operation: "vmm_list_for_watcher",
            source: "down".into(),
        })
    });
    let log = slog::Logger::root(slog::Discard, slog::o!());
    let w = InstanceWatcher::<_, MockSledAgentApi>::new(
        &log,
        ds,
        BTreeMap::new(),
        Arc::new(LogicalClock::default()),
    );
    assert!(matches!(w.activate().await, Err(WatcherError::List { .. })));
}
