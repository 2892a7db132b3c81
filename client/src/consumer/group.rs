//! Group membership as a sans-IO state machine: the member side of Kafka's classic group
//! protocol (JoinGroup, SyncGroup, Heartbeat, LeaveGroup). It builds requests and turns
//! responses into decisions; time comes in as `now_ms` and nothing here does I/O, so every
//! transition is unit-tested. [`super::coordinator`] is the async shell that sends what this
//! builds.
//!
//! States, as in the Java client's `AbstractCoordinator`:
//! `Unjoined --JoinGroup--> Joining --ok--> Syncing --ok--> Stable`; any state goes back to
//! `Unjoined` when the group must be rejoined. A rejoin is needed when the broker answers
//! REBALANCE_IN_PROGRESS (a rebalance started; the member keeps its generation), and after
//! ILLEGAL_GENERATION or UNKNOWN_MEMBER_ID (the member was fenced out of the group: its
//! generation, and for the latter its member id, are reset, and its partitions count as lost).
//! A first JoinGroup without a member id is answered MEMBER_ID_REQUIRED with an id to retry
//! with (KIP-394).

use bytes::Bytes;

use crate::protocol::messages::join_group_request::JoinGroupRequestProtocol;
use crate::protocol::messages::leave_group_request::MemberIdentity;
use crate::protocol::messages::sync_group_request::SyncGroupRequestAssignment;
use crate::protocol::messages::{
    GroupId, HeartbeatRequest, JoinGroupRequest, JoinGroupResponse, LeaveGroupRequest, SyncGroupRequest,
    SyncGroupResponse,
};
use crate::protocol::{str_bytes, ErrorCode};

#[cfg(test)]
use super::assignor::CONSUMER_PROTOCOL_TYPE;
use super::assignor::NO_GENERATION;

/// Where the member is in the join protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberState {
    Unjoined,
    /// JoinGroup sent, waiting for the rebalance to complete.
    Joining,
    /// SyncGroup sent, waiting for the assignment.
    Syncing,
    Stable,
}

/// Settings of one membership.
#[derive(Debug, Clone)]
pub(crate) struct MembershipConfig {
    pub group_id: String,
    /// `consumer` for consumers; other group kinds (Kafka Connect's `connect`) name their own.
    pub protocol_type: String,
    pub group_instance_id: Option<String>,
    pub session_timeout_ms: i32,
    /// How long the coordinator waits for members to rejoin (the Java client sends
    /// `max.poll.interval.ms`).
    pub rebalance_timeout_ms: i32,
    pub heartbeat_interval_ms: i64,
    pub max_poll_interval_ms: i64,
}

/// What a JoinGroup answer means for the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum JoinOutcome {
    /// In the group at a new generation; the leader gets every member's metadata and must
    /// compute the assignment.
    Joined { leader: bool, protocol: String, members: Vec<JoinedMember> },
    /// Send JoinGroup again now (with the member id the broker just gave, for
    /// MEMBER_ID_REQUIRED, or after resetting a stale one).
    RetryNow,
    /// Send JoinGroup again after the retry backoff (coordinator loading).
    RetryLater,
    /// Find the coordinator again.
    CoordinatorLost,
    /// Cannot join (bad configuration, fenced static member, unsupported protocol...).
    Fatal(ErrorCode),
}

/// A member as the leader sees it in a JoinGroup answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct JoinedMember {
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub metadata: Bytes,
}

/// What a SyncGroup answer means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SyncOutcome {
    /// Stable; the member's assignment blob.
    Assigned(Bytes),
    /// Rejoin (the group is rebalancing again, or the member was fenced and reset).
    Rejoin,
    CoordinatorLost,
    Fatal(ErrorCode),
}

/// What a heartbeat answer means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HeartbeatOutcome {
    Ok,
    /// A rebalance started: rejoin on the next poll, keeping the generation.
    Rejoin,
    /// The member was fenced (its generation or id is stale): its partitions are lost.
    Lost,
    CoordinatorLost,
    Fatal(ErrorCode),
    /// An answer to a heartbeat of an earlier generation, or an error worth only a log line.
    Ignored,
}

/// The member side of the group protocol.
#[derive(Debug)]
pub(crate) struct Membership {
    config: MembershipConfig,
    state: MemberState,
    member_id: String,
    generation_id: i32,
    protocol_name: Option<String>,
    leader_id: Option<String>,
    /// Why the next poll must rejoin, when it must.
    rejoin_reason: Option<String>,
    /// Set when the generation was reset by a fencing error: the partitions held are lost,
    /// not revoked (the listener's `on_partitions_lost`).
    fenced: bool,
    heartbeat_in_flight: bool,
    /// The generation the in-flight heartbeat was sent for.
    heartbeat_generation: i32,
    last_heartbeat_sent_ms: i64,
    last_heartbeat_ok_ms: i64,
    last_poll_ms: i64,
    fatal: Option<ErrorCode>,
}

impl Membership {
    pub fn new(config: MembershipConfig, now_ms: i64) -> Self {
        Membership {
            config,
            state: MemberState::Unjoined,
            member_id: String::new(),
            generation_id: NO_GENERATION,
            protocol_name: None,
            leader_id: None,
            rejoin_reason: Some("not yet joined".into()),
            fenced: false,
            heartbeat_in_flight: false,
            heartbeat_generation: NO_GENERATION,
            last_heartbeat_sent_ms: now_ms,
            last_heartbeat_ok_ms: now_ms,
            last_poll_ms: now_ms,
            fatal: None,
        }
    }

    pub fn config(&self) -> &MembershipConfig {
        &self.config
    }

    #[cfg(test)]
    pub fn state(&self) -> MemberState {
        self.state
    }

    pub fn member_id(&self) -> &str {
        &self.member_id
    }

    pub fn generation_id(&self) -> i32 {
        self.generation_id
    }

    pub fn is_leader(&self) -> bool {
        self.state == MemberState::Stable && self.leader_id.as_deref() == Some(self.member_id.as_str())
    }

    /// The generation and member id to commit offsets with: the current ones while stable
    /// (or rebalancing, which Kafka's coordinator accepts for the current generation), else
    /// none, and a commit then fails as the Java client's does.
    pub fn commit_generation(&self) -> Option<(i32, String)> {
        (self.generation_id != NO_GENERATION).then(|| (self.generation_id, self.member_id.clone()))
    }

    /// Whether the next poll must (re)join.
    pub fn leader_id(&self) -> Option<&str> {
        self.leader_id.as_deref()
    }

    pub fn needs_join(&self) -> bool {
        self.state != MemberState::Stable || self.rejoin_reason.is_some()
    }

    /// Whether the last reset fenced the member (its partitions are lost); cleared on read.
    pub fn take_fenced(&mut self) -> bool {
        std::mem::take(&mut self.fenced)
    }

    pub fn fatal(&self) -> Option<ErrorCode> {
        self.fatal
    }

    pub fn request_rejoin(&mut self, reason: impl Into<String>) {
        self.rejoin_reason.get_or_insert_with(|| reason.into());
    }

    /// Forgets the generation (and the member id when the broker no longer knows it), so the
    /// next join starts over; the partitions held are lost.
    pub fn reset_generation(&mut self, reason: impl Into<String>, reset_member_id: bool) {
        self.generation_id = NO_GENERATION;
        self.protocol_name = None;
        self.leader_id = None;
        self.state = MemberState::Unjoined;
        self.fenced = true;
        if reset_member_id {
            self.member_id.clear();
        }
        self.rejoin_reason = Some(reason.into());
    }

    /// Builds the JoinGroup request for the protocols (name, subscription blob) in preference
    /// order, and moves to `Joining`. `version` is the negotiated JoinGroup version.
    pub fn join_request(&mut self, version: i16, protocols: Vec<(String, Bytes)>) -> JoinGroupRequest {
        self.state = MemberState::Joining;
        let reason = self.rejoin_reason.clone();
        JoinGroupRequest::default()
            .with_group_id(GroupId(str_bytes(self.config.group_id.as_str())))
            .with_session_timeout_ms(self.config.session_timeout_ms)
            .with_rebalance_timeout_ms(self.config.rebalance_timeout_ms)
            .with_member_id(str_bytes(self.member_id.as_str()))
            .with_group_instance_id(if version >= 5 {
                self.config.group_instance_id.as_deref().map(str_bytes)
            } else {
                None
            })
            .with_protocol_type(str_bytes(self.config.protocol_type.as_str()))
            .with_protocols(
                protocols
                    .into_iter()
                    .map(|(name, metadata)| {
                        JoinGroupRequestProtocol::default().with_name(str_bytes(name)).with_metadata(metadata)
                    })
                    .collect(),
            )
            .with_reason(if version >= 8 { reason.map(str_bytes) } else { None })
    }

    pub fn on_join_response(&mut self, response: &JoinGroupResponse) -> JoinOutcome {
        let code = ErrorCode(response.error_code);
        match code {
            ErrorCode::NONE => {
                let protocol = match (&response.protocol_type, &response.protocol_name) {
                    (Some(t), _) if t.as_str() != self.config.protocol_type => {
                        return self.fail(ErrorCode::INCONSISTENT_GROUP_PROTOCOL);
                    }
                    (_, Some(name)) => name.to_string(),
                    (_, None) => return self.fail(ErrorCode::INCONSISTENT_GROUP_PROTOCOL),
                };
                self.generation_id = response.generation_id;
                self.member_id = response.member_id.to_string();
                self.leader_id = Some(response.leader.to_string());
                self.protocol_name = Some(protocol.clone());
                self.state = MemberState::Syncing;
                let leader = response.leader.as_str() == response.member_id.as_str();
                let members = if leader {
                    response
                        .members
                        .iter()
                        .map(|m| JoinedMember {
                            member_id: m.member_id.to_string(),
                            group_instance_id: m.group_instance_id.as_ref().map(|i| i.to_string()),
                            metadata: m.metadata.clone(),
                        })
                        .collect()
                } else {
                    Vec::new()
                };
                JoinOutcome::Joined { leader, protocol, members }
            }
            ErrorCode::MEMBER_ID_REQUIRED => {
                // KIP-394: the broker made up our id; join again with it.
                self.member_id = response.member_id.to_string();
                self.state = MemberState::Unjoined;
                JoinOutcome::RetryNow
            }
            ErrorCode::UNKNOWN_MEMBER_ID => {
                self.reset_generation("member id unknown to the coordinator", true);
                JoinOutcome::RetryNow
            }
            ErrorCode::ILLEGAL_GENERATION => {
                self.reset_generation("stale generation", false);
                JoinOutcome::RetryNow
            }
            ErrorCode::COORDINATOR_LOAD_IN_PROGRESS | ErrorCode::REBALANCE_IN_PROGRESS => {
                self.state = MemberState::Unjoined;
                JoinOutcome::RetryLater
            }
            ErrorCode::COORDINATOR_NOT_AVAILABLE | ErrorCode::NOT_COORDINATOR => {
                self.state = MemberState::Unjoined;
                JoinOutcome::CoordinatorLost
            }
            code => self.fail(code),
        }
    }

    fn fail(&mut self, code: ErrorCode) -> JoinOutcome {
        self.state = MemberState::Unjoined;
        self.fatal = Some(code);
        JoinOutcome::Fatal(code)
    }

    /// Builds SyncGroup; the leader passes every member's assignment blob, followers none.
    pub fn sync_request(&self, version: i16, assignments: Vec<(String, Bytes)>) -> SyncGroupRequest {
        SyncGroupRequest::default()
            .with_group_id(GroupId(str_bytes(self.config.group_id.as_str())))
            .with_generation_id(self.generation_id)
            .with_member_id(str_bytes(self.member_id.as_str()))
            .with_group_instance_id(if version >= 3 {
                self.config.group_instance_id.as_deref().map(str_bytes)
            } else {
                None
            })
            .with_protocol_type(if version >= 5 { Some(str_bytes(self.config.protocol_type.as_str())) } else { None })
            .with_protocol_name(if version >= 5 { self.protocol_name.as_deref().map(str_bytes) } else { None })
            .with_assignments(
                assignments
                    .into_iter()
                    .map(|(member_id, assignment)| {
                        SyncGroupRequestAssignment::default()
                            .with_member_id(str_bytes(member_id))
                            .with_assignment(assignment)
                    })
                    .collect(),
            )
    }

    pub fn on_sync_response(&mut self, response: &SyncGroupResponse, now_ms: i64) -> SyncOutcome {
        match ErrorCode(response.error_code) {
            ErrorCode::NONE => {
                if let (Some(name), Some(ours)) = (&response.protocol_name, &self.protocol_name) {
                    if name.as_str() != ours {
                        self.state = MemberState::Unjoined;
                        self.fatal = Some(ErrorCode::INCONSISTENT_GROUP_PROTOCOL);
                        return SyncOutcome::Fatal(ErrorCode::INCONSISTENT_GROUP_PROTOCOL);
                    }
                }
                self.state = MemberState::Stable;
                self.rejoin_reason = None;
                self.fenced = false;
                self.last_heartbeat_ok_ms = now_ms;
                self.last_heartbeat_sent_ms = now_ms;
                self.heartbeat_in_flight = false;
                SyncOutcome::Assigned(response.assignment.clone())
            }
            ErrorCode::REBALANCE_IN_PROGRESS => {
                self.state = MemberState::Unjoined;
                self.request_rejoin("group rebalanced during sync");
                SyncOutcome::Rejoin
            }
            ErrorCode::UNKNOWN_MEMBER_ID => {
                self.reset_generation("member id unknown to the coordinator", true);
                SyncOutcome::Rejoin
            }
            ErrorCode::ILLEGAL_GENERATION => {
                self.reset_generation("stale generation", false);
                SyncOutcome::Rejoin
            }
            ErrorCode::COORDINATOR_NOT_AVAILABLE | ErrorCode::NOT_COORDINATOR => {
                self.state = MemberState::Unjoined;
                self.request_rejoin("coordinator moved during sync");
                SyncOutcome::CoordinatorLost
            }
            code => {
                self.state = MemberState::Unjoined;
                self.fatal = Some(code);
                SyncOutcome::Fatal(code)
            }
        }
    }

    /// Records a poll (for `max.poll.interval.ms`).
    pub fn on_poll(&mut self, now_ms: i64) {
        self.last_poll_ms = now_ms;
    }

    /// Whether the application has not polled within `max.poll.interval.ms` while in the
    /// group: it is considered stuck, and the member leaves so its partitions move on.
    pub fn poll_timeout_expired(&self, now_ms: i64) -> bool {
        self.state == MemberState::Stable && now_ms - self.last_poll_ms > self.config.max_poll_interval_ms
    }

    /// Milliseconds until the next heartbeat is due (0 when due now); `None` when no
    /// heartbeat is to be sent (not stable, or one is in flight).
    pub fn time_to_next_heartbeat(&self, now_ms: i64) -> Option<i64> {
        if self.state != MemberState::Stable || self.heartbeat_in_flight {
            return None;
        }
        Some((self.last_heartbeat_sent_ms + self.config.heartbeat_interval_ms - now_ms).max(0))
    }

    /// Whether no heartbeat has succeeded within the session timeout: the coordinator is
    /// presumed gone (the Java client then marks it unknown and looks it up again).
    pub fn session_expired(&self, now_ms: i64) -> bool {
        self.state == MemberState::Stable
            && now_ms - self.last_heartbeat_ok_ms > i64::from(self.config.session_timeout_ms)
    }

    /// Builds a heartbeat when one is due.
    pub fn heartbeat_request(&mut self, version: i16, now_ms: i64) -> Option<HeartbeatRequest> {
        if self.time_to_next_heartbeat(now_ms)? > 0 {
            return None;
        }
        self.heartbeat_in_flight = true;
        self.heartbeat_generation = self.generation_id;
        self.last_heartbeat_sent_ms = now_ms;
        Some(
            HeartbeatRequest::default()
                .with_group_id(GroupId(str_bytes(self.config.group_id.as_str())))
                .with_generation_id(self.generation_id)
                .with_member_id(str_bytes(self.member_id.as_str()))
                .with_group_instance_id(if version >= 3 {
                    self.config.group_instance_id.as_deref().map(str_bytes)
                } else {
                    None
                }),
        )
    }

    /// A heartbeat failed in transport (connection lost or timed out).
    pub fn on_heartbeat_failed(&mut self) {
        self.heartbeat_in_flight = false;
    }

    pub fn on_heartbeat_response(&mut self, code: ErrorCode, now_ms: i64) -> HeartbeatOutcome {
        self.heartbeat_in_flight = false;
        if self.heartbeat_generation != self.generation_id || self.state != MemberState::Stable {
            // Answer to a heartbeat of a generation we already left behind.
            return HeartbeatOutcome::Ignored;
        }
        match code {
            ErrorCode::NONE => {
                self.last_heartbeat_ok_ms = now_ms;
                HeartbeatOutcome::Ok
            }
            ErrorCode::REBALANCE_IN_PROGRESS => {
                self.last_heartbeat_ok_ms = now_ms;
                self.request_rejoin("group is rebalancing");
                HeartbeatOutcome::Rejoin
            }
            ErrorCode::ILLEGAL_GENERATION => {
                self.reset_generation("heartbeat found a stale generation", false);
                HeartbeatOutcome::Lost
            }
            ErrorCode::UNKNOWN_MEMBER_ID => {
                self.reset_generation("heartbeat found the member id unknown", true);
                HeartbeatOutcome::Lost
            }
            ErrorCode::COORDINATOR_NOT_AVAILABLE | ErrorCode::NOT_COORDINATOR => HeartbeatOutcome::CoordinatorLost,
            ErrorCode::FENCED_INSTANCE_ID => {
                self.reset_generation("another member took over this group.instance.id", true);
                self.fatal = Some(code);
                HeartbeatOutcome::Fatal(code)
            }
            _ => HeartbeatOutcome::Ignored,
        }
    }

    /// Builds LeaveGroup for a dynamic member that is in the group, and forgets the
    /// membership. Static members (KIP-345) do not leave: their partitions wait for them until
    /// the session times out, so a restart does not rebalance.
    pub fn leave_request(&mut self, version: i16, reason: &str) -> Option<LeaveGroupRequest> {
        let request = if self.member_id.is_empty() || self.config.group_instance_id.is_some() {
            None
        } else {
            let group_id = GroupId(str_bytes(self.config.group_id.as_str()));
            Some(if version >= 3 {
                LeaveGroupRequest::default().with_group_id(group_id).with_members(vec![MemberIdentity::default()
                    .with_member_id(str_bytes(self.member_id.as_str()))
                    .with_reason(if version >= 5 { Some(str_bytes(reason)) } else { None })])
            } else {
                LeaveGroupRequest::default().with_group_id(group_id).with_member_id(str_bytes(self.member_id.as_str()))
            })
        };
        self.generation_id = NO_GENERATION;
        self.protocol_name = None;
        self.leader_id = None;
        self.state = MemberState::Unjoined;
        if self.config.group_instance_id.is_none() {
            self.member_id.clear();
        }
        self.rejoin_reason = Some(reason.to_string());
        request
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::messages::join_group_response::JoinGroupResponseMember;

    fn config() -> MembershipConfig {
        MembershipConfig {
            protocol_type: CONSUMER_PROTOCOL_TYPE.to_owned(),
            group_id: "g".into(),
            group_instance_id: None,
            session_timeout_ms: 10_000,
            rebalance_timeout_ms: 60_000,
            heartbeat_interval_ms: 3_000,
            max_poll_interval_ms: 60_000,
        }
    }

    fn joined(member: &str, leader: &str, generation: i32) -> JoinGroupResponse {
        JoinGroupResponse::default()
            .with_generation_id(generation)
            .with_member_id(str_bytes(member))
            .with_leader(str_bytes(leader))
            .with_protocol_type(Some(str_bytes("consumer")))
            .with_protocol_name(Some(str_bytes("range")))
            .with_members(if member == leader {
                vec![JoinGroupResponseMember::default()
                    .with_member_id(str_bytes(member))
                    .with_metadata(Bytes::from_static(b"m"))]
            } else {
                Vec::new()
            })
    }

    fn protocols() -> Vec<(String, Bytes)> {
        vec![("range".into(), Bytes::from_static(b"sub"))]
    }

    /// Brings a member to Stable at `generation` as `member`.
    fn stable(m: &mut Membership, member: &str, generation: i32, now_ms: i64) {
        m.join_request(7, protocols());
        assert!(matches!(
            m.on_join_response(&joined(member, "leader", generation)),
            JoinOutcome::Joined { leader: false, .. }
        ));
        let sync = SyncGroupResponse::default().with_assignment(Bytes::from_static(b"a"));
        assert_eq!(m.on_sync_response(&sync, now_ms), SyncOutcome::Assigned(Bytes::from_static(b"a")));
    }

    #[test]
    fn first_join_follows_member_id_required_then_syncs() {
        let mut m = Membership::new(config(), 0);
        assert!(m.needs_join());
        let req = m.join_request(7, protocols());
        assert_eq!(req.member_id.as_str(), "");
        assert_eq!(req.protocol_type.as_str(), "consumer");
        assert_eq!(req.rebalance_timeout_ms, 60_000);
        assert_eq!(m.state(), MemberState::Joining);

        let required = JoinGroupResponse::default()
            .with_error_code(ErrorCode::MEMBER_ID_REQUIRED.0)
            .with_member_id(str_bytes("m-1"));
        assert_eq!(m.on_join_response(&required), JoinOutcome::RetryNow);
        assert_eq!(m.state(), MemberState::Unjoined);
        assert_eq!(m.join_request(7, protocols()).member_id.as_str(), "m-1");

        let outcome = m.on_join_response(&joined("m-1", "m-1", 1));
        let JoinOutcome::Joined { leader, protocol, members } = outcome else { panic!("{outcome:?}") };
        assert!(leader);
        assert_eq!(protocol, "range");
        assert_eq!(members.len(), 1);
        assert_eq!(m.state(), MemberState::Syncing);
        let sync = m.sync_request(5, vec![("m-1".into(), Bytes::from_static(b"a"))]);
        assert_eq!((sync.generation_id, sync.member_id.as_str()), (1, "m-1"));
        assert_eq!(sync.protocol_name.as_ref().map(|p| p.as_str()), Some("range"));
        assert_eq!(sync.assignments.len(), 1);
        let resp = SyncGroupResponse::default()
            .with_protocol_name(Some(str_bytes("range")))
            .with_assignment(Bytes::from_static(b"a"));
        assert!(matches!(m.on_sync_response(&resp, 5), SyncOutcome::Assigned(_)));
        assert_eq!(m.state(), MemberState::Stable);
        assert!(!m.needs_join());
        assert!(m.is_leader());
        assert_eq!(m.commit_generation(), Some((1, "m-1".to_string())));
    }

    #[test]
    fn old_versions_leave_out_newer_fields() {
        let mut c = config();
        c.group_instance_id = Some("i-1".into());
        let mut m = Membership::new(c, 0);
        assert!(m.join_request(4, protocols()).group_instance_id.is_none());
        assert_eq!(m.join_request(5, protocols()).group_instance_id.as_ref().map(|s| s.as_str()), Some("i-1"));
        assert!(m.sync_request(2, Vec::new()).group_instance_id.is_none());
        assert!(m.sync_request(4, Vec::new()).protocol_name.is_none());
    }

    #[test]
    fn heartbeats_follow_the_interval_and_rebalance_keeps_the_generation() {
        let mut m = Membership::new(config(), 0);
        assert_eq!(m.time_to_next_heartbeat(0), None, "no heartbeats before joining");
        stable(&mut m, "m-1", 3, 1_000);
        assert_eq!(m.time_to_next_heartbeat(1_000), Some(3_000));
        assert!(m.heartbeat_request(4, 2_000).is_none());
        let hb = m.heartbeat_request(4, 4_000).expect("due");
        assert_eq!((hb.generation_id, hb.member_id.as_str()), (3, "m-1"));
        assert_eq!(m.time_to_next_heartbeat(4_000), None, "one in flight at a time");
        assert_eq!(m.on_heartbeat_response(ErrorCode::NONE, 4_010), HeartbeatOutcome::Ok);
        assert_eq!(m.time_to_next_heartbeat(4_010), Some(2_990));

        m.heartbeat_request(4, 7_000).expect("due");
        assert_eq!(m.on_heartbeat_response(ErrorCode::REBALANCE_IN_PROGRESS, 7_010), HeartbeatOutcome::Rejoin);
        assert!(m.needs_join());
        assert!(!m.take_fenced(), "a rebalance revokes, it does not lose");
        assert_eq!(m.commit_generation(), Some((3, "m-1".to_string())), "commits still allowed");
        assert_eq!(m.join_request(7, protocols()).member_id.as_str(), "m-1");
    }

    #[test]
    fn fencing_errors_reset_the_generation_and_lose_partitions() {
        let mut m = Membership::new(config(), 0);
        stable(&mut m, "m-1", 3, 0);
        m.heartbeat_request(4, 3_000).expect("due");
        assert_eq!(m.on_heartbeat_response(ErrorCode::ILLEGAL_GENERATION, 3_001), HeartbeatOutcome::Lost);
        assert!(m.take_fenced());
        assert_eq!(m.commit_generation(), None);
        assert_eq!(m.member_id(), "m-1", "ILLEGAL_GENERATION keeps the member id");

        stable(&mut m, "m-1", 4, 4_000);
        m.heartbeat_request(4, 7_000).expect("due");
        assert_eq!(m.on_heartbeat_response(ErrorCode::UNKNOWN_MEMBER_ID, 7_001), HeartbeatOutcome::Lost);
        assert_eq!(m.member_id(), "", "UNKNOWN_MEMBER_ID forgets the id");
        assert!(m.needs_join());

        // The same from JoinGroup and SyncGroup.
        m.join_request(7, protocols());
        let unknown = JoinGroupResponse::default().with_error_code(ErrorCode::UNKNOWN_MEMBER_ID.0);
        assert_eq!(m.on_join_response(&unknown), JoinOutcome::RetryNow);
        m.join_request(7, protocols());
        m.on_join_response(&joined("m-2", "leader", 5));
        let stale = SyncGroupResponse::default().with_error_code(ErrorCode::ILLEGAL_GENERATION.0);
        assert_eq!(m.on_sync_response(&stale, 8_000), SyncOutcome::Rejoin);
        assert_eq!(m.generation_id(), NO_GENERATION);
    }

    #[test]
    fn a_late_heartbeat_answer_of_an_old_generation_is_ignored() {
        let mut m = Membership::new(config(), 0);
        stable(&mut m, "m-1", 3, 0);
        m.heartbeat_request(4, 3_000).expect("due");
        // Meanwhile the member rejoined at generation 4.
        stable(&mut m, "m-1", 4, 3_100);
        assert_eq!(m.on_heartbeat_response(ErrorCode::ILLEGAL_GENERATION, 3_200), HeartbeatOutcome::Ignored);
        assert_eq!(m.generation_id(), 4);
    }

    #[test]
    fn sync_rebalance_and_coordinator_errors() {
        let mut m = Membership::new(config(), 0);
        m.join_request(7, protocols());
        m.on_join_response(&joined("m-1", "leader", 1));
        let rebalancing = SyncGroupResponse::default().with_error_code(ErrorCode::REBALANCE_IN_PROGRESS.0);
        assert_eq!(m.on_sync_response(&rebalancing, 0), SyncOutcome::Rejoin);
        assert_eq!(m.generation_id(), 1, "kept: a rebalance is not fencing");
        m.join_request(7, protocols());
        let moved = JoinGroupResponse::default().with_error_code(ErrorCode::NOT_COORDINATOR.0);
        assert_eq!(m.on_join_response(&moved), JoinOutcome::CoordinatorLost);
        let loading = JoinGroupResponse::default().with_error_code(ErrorCode::COORDINATOR_LOAD_IN_PROGRESS.0);
        assert_eq!(m.on_join_response(&loading), JoinOutcome::RetryLater);
        let bad = JoinGroupResponse::default().with_error_code(ErrorCode::INCONSISTENT_GROUP_PROTOCOL.0);
        assert_eq!(m.on_join_response(&bad), JoinOutcome::Fatal(ErrorCode::INCONSISTENT_GROUP_PROTOCOL));
        assert_eq!(m.fatal(), Some(ErrorCode::INCONSISTENT_GROUP_PROTOCOL));
        // A join answer for another protocol type is refused too.
        let mut m = Membership::new(config(), 0);
        m.join_request(7, protocols());
        let other = joined("m", "m", 1).with_protocol_type(Some(str_bytes("connect")));
        assert!(matches!(m.on_join_response(&other), JoinOutcome::Fatal(_)));
    }

    #[test]
    fn session_and_poll_timeouts() {
        let mut m = Membership::new(config(), 0);
        stable(&mut m, "m-1", 1, 0);
        m.on_poll(0);
        assert!(!m.session_expired(10_000));
        assert!(m.session_expired(10_001));
        assert!(!m.poll_timeout_expired(60_000));
        assert!(m.poll_timeout_expired(60_001));
        m.on_poll(60_001);
        assert!(!m.poll_timeout_expired(60_002));
    }

    #[test]
    fn dynamic_members_leave_static_members_do_not() {
        let mut m = Membership::new(config(), 0);
        assert!(m.leave_request(4, "closing").is_none(), "never joined");
        stable(&mut m, "m-1", 2, 0);
        let leave = m.leave_request(4, "closing").expect("dynamic member leaves");
        assert_eq!(leave.members.len(), 1);
        assert_eq!(leave.members[0].member_id.as_str(), "m-1");
        assert_eq!(m.member_id(), "");
        assert!(m.needs_join());
        stable(&mut m, "m-2", 3, 0);
        let old = m.leave_request(2, "closing").expect("v0-2 shape");
        assert_eq!(old.member_id.as_str(), "m-2");
        assert!(old.members.is_empty());

        let mut c = config();
        c.group_instance_id = Some("i-1".into());
        let mut m = Membership::new(c, 0);
        stable(&mut m, "m-9", 1, 0);
        assert!(m.leave_request(4, "closing").is_none());
        assert_eq!(m.member_id(), "m-9", "a static member keeps its id for the restart");
    }
}
