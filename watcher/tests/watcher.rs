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
    WatcherBugs, WatcherError,
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

const INSTANCE: InstanceUuid = InstanceUuid::from_u128(0x20);

/// A datastore listing one VMM at Stopping/6 (the #7282 row) and expecting at most
/// one write, whose (state, gen) must be `want_write`; a write it applies needs
/// the update step, which the watcher must then run, once.
fn datastore(want_write: Option<(VmmState, u64)>, applied: bool) -> MockWatcherDatastore {
    let mut ds = MockWatcherDatastore::new();
    ds.expect_vmm_list_for_watcher().times(1).returning(|| {
        Ok(vec![WatchedVmm {
            instance_id: INSTANCE,
            propolis_id: VMM,
            sled_id: SLED,
            runtime: runtime(VmmState::Stopping, 6),
        }])
    });
    let terminal = want_write.is_some_and(|(s, _)| s.is_terminal());
    ds.expect_run_instance_update()
        .with(eq(INSTANCE))
        .times(usize::from(applied && terminal))
        .returning(|_| Ok(()));
    match want_write {
        Some((state, gen)) => {
            ds.expect_vmm_update_runtime()
                .withf(move |id, s: &SledVmmState| {
                    *id == VMM && s.vmm_state.state == state && s.vmm_state.gen.as_u64() == gen
                })
                .times(1)
                .returning(move |_, s: SledVmmState| {
                    let update_needed = applied && s.vmm_state.state.is_terminal();
                    Ok(VmmWriteOutcome { updated: applied, update_needed })
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
    bugs: WatcherBugs,
) -> PassCounts {
    check_logged(ds, sleds, bugs).await.0
}

/// Keeps each record's level and message.
#[derive(Clone, Default)]
struct Capture(Arc<std::sync::Mutex<Vec<(slog::Level, String)>>>);

impl slog::Drain for Capture {
    type Ok = ();
    type Err = slog::Never;
    fn log(&self, r: &slog::Record<'_>, _: &slog::OwnedKVList) -> Result<(), slog::Never> {
        self.0.lock().unwrap().push((r.level(), r.msg().to_string()));
        Ok(())
    }
}

/// `check`, and the level the pass's "pass done" line was logged at.
async fn check_logged(
    ds: MockWatcherDatastore,
    sleds: BTreeMap<SledUuid, MockSledAgentApi>,
    bugs: WatcherBugs,
) -> (PassCounts, Option<slog::Level>) {
    let capture = Capture::default();
    let log = slog::Logger::root(capture.clone(), slog::o!());
    let counts = InstanceWatcher::new(&log, ds, sleds, Arc::new(LogicalClock::default()))
        .with_bugs(bugs)
        .activate()
        .await
        .expect("listing succeeds");
    let records = capture.0.lock().unwrap();
    (counts, records.iter().find(|r| r.1 == "pass done").map(|r| r.0))
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
    let counts = check(ds, sleds, WatcherBugs::default()).await;
    assert_eq!(counts, PassCounts { checked: 1, updated: 1, ..PassCounts::default() });
}

#[tokio::test]
async fn no_such_vmm_writes_failed_at_listed_gen_plus_one() {
    let ds = datastore(Some((VmmState::Failed, 7)), false);
    let sleds = one_sled(|| Err(SledAgentError::NoSuchVmm { propolis_id: VMM }));
    let counts = check(ds, sleds, WatcherBugs::default()).await;
    // Not applied: the datastore already holds Destroyed/7, so the write was stale.
    assert_eq!(counts, PassCounts { checked: 1, failed: 1, ..PassCounts::default() });
}

#[tokio::test]
async fn seeded_skip_generation_fault_writes_listed_gen_plus_two() {
    let ds = datastore(Some((VmmState::Failed, 8)), true);
    let sleds = one_sled(|| Err(SledAgentError::NoSuchVmm { propolis_id: VMM }));
    let counts = check(ds, sleds, WatcherBugs { skip_generation: true }).await;
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
                current: VmmState::Stopping,
                resting: VmmState::Destroyed,
                requested: sled_agent_api::VmmStateRequested::Running,
            })
        },
    ];
    for answer in answers {
        let counts = check(datastore(None, false), one_sled(answer), WatcherBugs::default()).await;
        assert_eq!(counts, PassCounts { checked: 1, inconclusive: 1, ..PassCounts::default() });
    }
}

#[tokio::test]
async fn unknown_sled_is_inconclusive() {
    let counts = check(datastore(None, false), BTreeMap::new(), WatcherBugs::default()).await;
    assert_eq!(counts, PassCounts { checked: 1, inconclusive: 1, ..PassCounts::default() });
}

/// A datastore that lists one Running VMM and refuses every write.
fn refusing_datastore() -> MockWatcherDatastore {
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
    ds
}

#[tokio::test]
async fn write_errors_are_counted_not_dropped() {
    let sleds = one_sled(|| Err(SledAgentError::NoSuchVmm { propolis_id: VMM }));
    let counts = check(refusing_datastore(), sleds, WatcherBugs::default()).await;
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

#[tokio::test]
async fn a_failed_update_step_is_counted() {
    let sleds = one_sled(|| Ok(SledVmmState { vmm_state: runtime(VmmState::Destroyed, 7) }));
    let counts = check(failing_update_datastore(), sleds, WatcherBugs::default()).await;
    assert_eq!(
        counts,
        PassCounts { checked: 1, updated: 1, update_errors: 1, ..PassCounts::default() }
    );
}

/// A datastore that lists a Stopping VMM, applies the write, and fails the
/// update step it needs.
fn failing_update_datastore() -> MockWatcherDatastore {
    let mut ds = MockWatcherDatastore::new();
    ds.expect_vmm_list_for_watcher().returning(|| {
        Ok(vec![WatchedVmm {
            instance_id: INSTANCE,
            propolis_id: VMM,
            sled_id: SLED,
            runtime: runtime(VmmState::Stopping, 6),
        }])
    });
    ds.expect_vmm_update_runtime()
        .returning(|_, _| Ok(VmmWriteOutcome { updated: true, update_needed: true }));
    ds.expect_run_instance_update().times(1).returning(|_| {
        Err(DatastoreError::Unavailable { operation: "instance_update", source: "down".into() })
    });
    ds
}

/// Lists `n` VMMs, applies every write as terminal, and counts the update steps
/// under way at once: each yields a few times, so checks that may overlap do.
#[derive(Default)]
struct Overlap {
    n: u128,
    now: std::sync::atomic::AtomicUsize,
    most: std::sync::atomic::AtomicUsize,
}

#[async_trait::async_trait]
impl watcher::WatcherDatastore for Overlap {
    async fn vmm_list_for_watcher(&self) -> Result<Vec<WatchedVmm>, DatastoreError> {
        Ok((0..self.n)
            .map(|i| WatchedVmm {
                instance_id: InstanceUuid::from_u128(0x20 + i),
                propolis_id: PropolisUuid::from_u128(0x10 + i),
                sled_id: SLED,
                runtime: runtime(VmmState::Stopping, 6),
            })
            .collect())
    }

    async fn vmm_update_runtime(
        &self,
        _: PropolisUuid,
        _: SledVmmState,
    ) -> Result<VmmWriteOutcome, DatastoreError> {
        Ok(VmmWriteOutcome { updated: true, update_needed: true })
    }

    async fn run_instance_update(&self, _: InstanceUuid) -> Result<(), DatastoreError> {
        use std::sync::atomic::Ordering::SeqCst;
        let now = self.now.fetch_add(1, SeqCst) + 1;
        self.most.fetch_max(now, SeqCst);
        for _ in 0..3 {
            tokio::task::yield_now().await;
        }
        self.now.fetch_sub(1, SeqCst);
        Ok(())
    }
}

/// How many update steps ran at once when a pass checked `n` VMMs with
/// `concurrency` (`None`: the default).
async fn most_at_once(n: u128, concurrency: Option<usize>) -> usize {
    let ds = Arc::new(Overlap { n, ..Overlap::default() });
    let mut s = MockSledAgentApi::new();
    s.expect_vmm_get_state()
        .returning(|_| Ok(SledVmmState { vmm_state: runtime(VmmState::Destroyed, 7) }));
    let log = slog::Logger::root(slog::Discard, slog::o!());
    let mut w = InstanceWatcher::new(
        &log,
        Arc::clone(&ds),
        BTreeMap::from([(SLED, s)]),
        Arc::new(LogicalClock::default()),
    );
    if let Some(c) = concurrency {
        w = w.with_concurrency(c);
    }
    let counts = w.activate().await.expect("listing succeeds");
    assert_eq!((counts.checked, counts.updated), (n as usize, n as usize));
    ds.most.load(std::sync::atomic::Ordering::SeqCst)
}

#[tokio::test]
async fn checks_run_concurrently_up_to_the_bound_each_through_its_update() {
    assert_eq!(most_at_once(4, Some(1)).await, 1);
    assert_eq!(most_at_once(4, Some(2)).await, 2);
    assert_eq!(most_at_once(4, Some(0)).await, 1, "at least one at a time");
    assert_eq!(most_at_once(20, None).await, watcher::DEFAULT_CONCURRENCY);
}

/// A pass that found nothing to act on or doubt logs its summary at debug (a
/// running Nexus makes one every period); one that failed a VMM, could not tell,
/// could not write, or whose update step failed, at info.
#[tokio::test]
async fn a_pass_logs_its_summary_at_info_only_when_it_found_something() {
    use slog::Level::{Debug, Info};
    let gone = || Err(SledAgentError::NoSuchVmm { propolis_id: VMM });
    let destroyed = || Ok(SledVmmState { vmm_state: runtime(VmmState::Destroyed, 7) });
    let cases = [
        ("all well", datastore(Some((VmmState::Destroyed, 7)), true), one_sled(destroyed), Debug),
        ("failed", datastore(Some((VmmState::Failed, 7)), false), one_sled(gone), Info),
        ("inconclusive", datastore(None, false), BTreeMap::new(), Info),
        ("write refused", refusing_datastore(), one_sled(gone), Info),
        ("update step failed", failing_update_datastore(), one_sled(destroyed), Info),
    ];
    for (what, ds, sleds, want) in cases {
        let (_, level) = check_logged(ds, sleds, WatcherBugs::default()).await;
        assert_eq!(level, Some(want), "{what}");
    }
}
