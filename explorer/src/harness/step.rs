//! The step vocabulary: actors, components, calls, their arguments, answers and
//! faults, and their replay labels. What a schedule is made of; the scheduler that
//! releases steps is in `sched`.

use std::fmt;
use std::hash::{Hash, Hasher};

use nexus_stub::{DbVmmState, DiskState, ExternalState};
use sled_agent_api::{Generation, InstanceUuid, PropolisUuid, VmmState, VmmStateRequested};

pub type ActorId = usize;
/// Which actor: the unit a schedule interleaves. Update steps are numbered in the
/// order Nexus started them, the watcher's checks in the order it started them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ActorKind {
    Scenario,
    Watcher,
    Restart,
    Update(u32),
    /// One check of a watcher pass (omicron runs each as its own task).
    Check(u32),
    /// A user beyond the scenario's script: stops, starts and reboots instances.
    User,
    /// The environment's faults that are actions of their own (a VMM vanishing).
    Fault,
}

impl ActorKind {
    pub fn parse(s: &str) -> Option<ActorKind> {
        match s {
            "scenario" => Some(ActorKind::Scenario),
            "watcher" => Some(ActorKind::Watcher),
            "restart" => Some(ActorKind::Restart),
            "user" => Some(ActorKind::User),
            "fault" => Some(ActorKind::Fault),
            _ => {
                let (n, kind): (&str, fn(u32) -> ActorKind) = match s.strip_prefix("update") {
                    Some(n) => (n, ActorKind::Update),
                    None => (s.strip_prefix("check")?, ActorKind::Check),
                };
                if n.starts_with('0') || !n.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
                n.parse().ok().filter(|&n| n > 0).map(kind)
            }
        }
    }

    /// The kind without the number that orders actors of one kind by start.
    pub const fn unnumbered(self) -> ActorKind {
        match self {
            ActorKind::Update(_) => ActorKind::Update(0),
            ActorKind::Check(_) => ActorKind::Check(0),
            k => k,
        }
    }

    /// The watcher's pass or one of its checks.
    pub const fn is_watcher(self) -> bool {
        matches!(self, ActorKind::Watcher | ActorKind::Check(_))
    }

    /// The watcher, its checks and update steps: the reduction takes any step
    /// of theirs to reach every instance's rows (`FreeWatch` takes it to free
    /// anything; each may delete any row).
    pub const fn reaches_any_row(self) -> bool {
        self.is_watcher() || matches!(self, ActorKind::Update(_))
    }
}

impl fmt::Display for ActorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ActorKind::Scenario => f.write_str("scenario"),
            ActorKind::Watcher => f.write_str("watcher"),
            ActorKind::Restart => f.write_str("restart"),
            ActorKind::Update(n) => write!(f, "update{n}"),
            ActorKind::Check(n) => write!(f, "check{n}"),
            ActorKind::User => f.write_str("user"),
            ActorKind::Fault => f.write_str("fault"),
        }
    }
}

/// Who is on either side of a call, for the step log and the sequence diagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Component {
    Scenario,
    User,
    Fault,
    Nexus,
    Datastore,
    Watcher,
    UpdateStep,
    SledAgent,
}

impl Component {
    pub const ALL: [Component; 8] = [
        Component::Scenario,
        Component::User,
        Component::Fault,
        Component::Nexus,
        Component::Datastore,
        Component::Watcher,
        Component::UpdateStep,
        Component::SledAgent,
    ];

    pub const fn label(self) -> &'static str {
        match self {
            Component::Scenario => "scenario",
            Component::User => "user",
            Component::Fault => "fault",
            Component::Nexus => "nexus",
            Component::Datastore => "datastore",
            Component::Watcher => "watcher",
            Component::UpdateStep => "update-step",
            Component::SledAgent => "sled-agent",
        }
    }
}

impl fmt::Display for Component {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `pad`, so the step table's column widths apply.
        f.pad(self.label())
    }
}

/// As its label: the JSON reports name components as the step table does.
impl serde::Serialize for Component {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.label())
    }
}

/// The kinds of gated call; their labels are what replay strings are made of.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CallKind {
    VmmRegister,
    VmmUnregister,
    VmmPutState,
    VmmGetState,
    VmmPoke,
    CpapiInstancesPut,
    VmmList,
    VmmWrite,
    InstanceUpdate,
    Reincarnation,
    InstanceCreate,
    InstanceStart,
    /// A user's start saga from its reservation to its link, after the request
    /// was found allowed (`TaskSpawner::start_node`).
    StartSaga,
    InstanceStop,
    InstanceReboot,
    DiskCreate,
    DiskAttach,
    DiskDetach,
    WaitForState,
    /// A VMM leaves its sled agent without a word (Propolis died).
    VmmVanish,
    /// The sled agent restarts: its table is lost, every VMM in it at once.
    SledRestart,
    /// An environment actor takes no more choices.
    Done,
}

impl CallKind {
    /// Whether a step of `actor` making this call may soft-delete Nexus VMM
    /// rows, with everything its release runs up to the next gate: an update
    /// step; a Nexus handler whose call to the sled agent fails (it marks the
    /// VMM Failed and runs the update step, or a start unwinds); a start,
    /// stop or reboot, which may run the same on their way. The watcher's
    /// checks run the update step after a write. Free steps rest on this list
    /// (`explore::reduction::FreeWatch`), and every gated run checks it, and
    /// that a step not of the watcher or an update step deletes only rows of
    /// the instance its call is about (`HarnessError::UndeclaredDeletion`),
    /// so a new way to delete a row cannot leave the proof unsound unnoticed.
    pub const fn may_delete_rows(self, actor: ActorKind) -> bool {
        actor.reaches_any_row()
            || matches!(
                self,
                CallKind::VmmRegister
                    | CallKind::VmmUnregister
                    | CallKind::VmmPutState
                    | CallKind::InstanceUpdate
                    | CallKind::StartSaga
                    | CallKind::InstanceStart
                    | CallKind::InstanceStop
                    | CallKind::InstanceReboot
            )
    }

    pub const ALL: [CallKind; 22] = [
        CallKind::VmmRegister,
        CallKind::VmmUnregister,
        CallKind::VmmPutState,
        CallKind::VmmGetState,
        CallKind::VmmPoke,
        CallKind::CpapiInstancesPut,
        CallKind::VmmList,
        CallKind::VmmWrite,
        CallKind::InstanceUpdate,
        CallKind::Reincarnation,
        CallKind::InstanceCreate,
        CallKind::InstanceStart,
        CallKind::StartSaga,
        CallKind::InstanceStop,
        CallKind::InstanceReboot,
        CallKind::DiskCreate,
        CallKind::DiskAttach,
        CallKind::DiskDetach,
        CallKind::WaitForState,
        CallKind::VmmVanish,
        CallKind::SledRestart,
        CallKind::Done,
    ];

    pub const fn label(self) -> &'static str {
        match self {
            CallKind::VmmRegister => "vmm_register",
            CallKind::VmmUnregister => "vmm_unregister",
            CallKind::VmmPutState => "vmm_put_state",
            CallKind::VmmGetState => "vmm_get_state",
            CallKind::VmmPoke => "vmm_poke",
            CallKind::CpapiInstancesPut => "cpapi_instances_put",
            CallKind::VmmList => "vmm_list",
            CallKind::VmmWrite => "vmm_write",
            CallKind::InstanceUpdate => "instance_update",
            CallKind::Reincarnation => "reincarnation",
            CallKind::InstanceCreate => "instance_create",
            CallKind::InstanceStart => "instance_start",
            CallKind::StartSaga => "start_saga",
            CallKind::InstanceStop => "instance_stop",
            CallKind::InstanceReboot => "instance_reboot",
            CallKind::DiskCreate => "disk_create",
            CallKind::DiskAttach => "disk_attach",
            CallKind::DiskDetach => "disk_detach",
            CallKind::WaitForState => "wait_for_state",
            CallKind::VmmVanish => "vmm_vanish",
            CallKind::SledRestart => "sled_restart",
            CallKind::Done => "done",
        }
    }

    pub fn from_label(s: &str) -> Option<CallKind> {
        CallKind::ALL.into_iter().find(|k| k.label() == s)
    }
}

/// A fault the explorer may inject into a call as it releases it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Fault {
    /// The callee never sees the call; the caller gets a 503.
    Unavailable,
    /// The callee applies the call, but its answer is lost: the caller times out.
    Timeout,
}

impl Fault {
    pub const ALL: [Fault; 2] = [Fault::Unavailable, Fault::Timeout];

    pub const fn label(self) -> &'static str {
        match self {
            Fault::Unavailable => "503",
            Fault::Timeout => "timeout",
        }
    }

    pub fn from_label(s: &str) -> Option<Fault> {
        Fault::ALL.into_iter().find(|f| f.label() == s)
    }
}

/// A call's argument, kept structured so the hot path formats nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Arg {
    None,
    Requested(VmmStateRequested),
    State(VmmState, Generation),
    Instance(InstanceUuid),
    /// The name of an instance or disk being created.
    Name(&'static str),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Call {
    pub kind: CallKind,
    pub from: Component,
    pub to: Component,
    pub vmm: Option<PropolisUuid>,
    pub arg: Arg,
}

/// Which error a call answered: its kind, which is all a caller branches on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// 410 Gone: the VMM is terminating.
    Terminating,
    InvalidTransition,
    InvalidRegistration,
    Communication,
    UnexpectedResponse,
    NoSuchVmm,
    Nexus,
    Datastore,
    Sim,
    NoSuchInstance,
    NoSuchDisk,
    NameInUse,
    NoSleds,
    InstanceNotStopped,
    InstanceNotStartable,
    InstanceNotRebootable,
    InstanceAlreadyStarting,
    InstanceChangedState,
    DiskAttachedToAnother,
    SledAgent,
    NoRuntime,
}

impl ErrorKind {
    /// The word reports show.
    pub const fn label(self) -> &'static str {
        match self {
            ErrorKind::Terminating => "410 terminating",
            ErrorKind::InvalidTransition => "invalid_transition",
            ErrorKind::InvalidRegistration => "invalid_registration",
            ErrorKind::Communication => "communication",
            ErrorKind::UnexpectedResponse => "unexpected_response",
            ErrorKind::NoSuchVmm => "no_such_vmm",
            ErrorKind::Nexus => "nexus_error",
            ErrorKind::Datastore => "datastore_error",
            ErrorKind::Sim => "sim_error",
            ErrorKind::NoSuchInstance => "no_such_instance",
            ErrorKind::NoSuchDisk => "no_such_disk",
            ErrorKind::NameInUse => "name_in_use",
            ErrorKind::NoSleds => "no_sleds",
            ErrorKind::InstanceNotStopped => "instance_not_stopped",
            ErrorKind::InstanceNotStartable => "instance_not_startable",
            ErrorKind::InstanceNotRebootable => "instance_not_rebootable",
            ErrorKind::InstanceAlreadyStarting => "instance_already_starting",
            ErrorKind::InstanceChangedState => "instance_changed_state",
            ErrorKind::DiskAttachedToAnother => "disk_attached_to_another",
            ErrorKind::SledAgent => "sled_agent_error",
            ErrorKind::NoRuntime => "no_runtime",
        }
    }
}

/// What an instance update step answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UpdateAnswer {
    InstanceStopped,
    InstanceFailed,
    NothingToDo,
    Error,
}

impl UpdateAnswer {
    /// The word reports show.
    pub const fn label(self) -> &'static str {
        match self {
            UpdateAnswer::InstanceStopped => "instance_stopped",
            UpdateAnswer::InstanceFailed => "instance_failed",
            UpdateAnswer::NothingToDo => "nothing_to_do",
            UpdateAnswer::Error => "error",
        }
    }
}

/// What a gated call answered.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Answer {
    /// Released, not yet answered (or still running when the run ended).
    Pending,
    State(VmmState, Generation),
    /// A put-state or unregister that returned no state.
    NoState,
    /// `NoSuchVmm`, with what Nexus held for the VMM at that instant.
    Gone {
        nexus_had: Option<(DbVmmState, Generation)>,
    },
    /// Another error, by kind.
    Error(ErrorKind),
    /// What the caller saw of a fault the schedule injected.
    Injected(Fault),
    Ack,
    Write {
        applied: bool,
    },
    Listed(Vec<(PropolisUuid, VmmState, Generation)>),
    Updated(UpdateAnswer),
    /// The instances an auto-restart pass found to restart.
    Candidates(Vec<InstanceUuid>),
    /// An instance operation answered with the instance's user-visible state.
    Instance(ExternalState),
    /// A create answered: the instance, its VMM and its state (the scenario
    /// keeps the ids).
    Created(InstanceUuid, Option<PropolisUuid>, ExternalState),
    /// A disk operation answered with where the disk is.
    Disk(DiskState),
    Waited(ExternalState),
    /// The VMM (and its instance) that vanished from its sled agent, if the
    /// instance had one there.
    Vanished(Option<(PropolisUuid, InstanceUuid)>),
    /// The VMMs (and their instances) a sled agent's restart lost from its table.
    Restarted(Vec<(PropolisUuid, InstanceUuid)>),
}

impl Answer {
    /// Hashes what the caller learned; `Gone`'s view of Nexus is the observer's,
    /// not the caller's, so it is left out.
    pub fn hash_learned<H: Hasher>(&self, h: &mut H) {
        match self {
            Answer::Gone { .. } => 0xdead_u32.hash(h),
            other => other.hash(h),
        }
    }

    /// The generation the answer carries, for the step table.
    pub fn gen(&self) -> Option<Generation> {
        match self {
            Answer::State(_, g) => Some(*g),
            _ => None,
        }
    }
}

/// One released call: the unit of a schedule.
#[derive(Clone, Debug)]
pub struct Step {
    pub actor: ActorId,
    pub call: Call,
    pub answer: Answer,
    /// The fault it was released with, if any.
    pub fault: Option<Fault>,
    /// Released with its wait unmet: a test's wait for a state that timed out
    /// (`Offer::TimedOut`).
    pub timed_out: bool,
    /// Length of Nexus's write log when the step was released. A step runs
    /// atomically, so the writes it caused are those up to the next step's mark.
    pub writes_from: usize,
}

/// What kind of parked call a choice releases.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Offer {
    /// A call an actor makes: it happens whatever the schedule.
    Call,
    /// One of an environment actor's alternatives (a user's operation, a fault):
    /// it happens only if chosen.
    Alternative,
    /// An environment actor's "nothing more": enabled only when nothing but
    /// alternatives is, so stopping early and stopping last are one schedule.
    Done,
    /// A test's wait for a state, given up: offered, with its condition unmet,
    /// only when no call can go on, as the real test's wait times out (320 s)
    /// when nothing happens any more.
    TimedOut,
}

/// A parked call the scheduler may release now, and how.
#[derive(Clone, Copy, Debug)]
pub struct Choice {
    pub ticket: u64,
    pub actor: ActorId,
    pub kind: ActorKind,
    pub call: Call,
    pub offer: Offer,
    /// Released with this fault injected.
    pub fault: Option<Fault>,
}

impl Choice {
    /// Whether it is one of an environment actor's alternatives, taken only if chosen.
    pub fn optional(&self) -> bool {
        self.offer == Offer::Alternative
    }
}
