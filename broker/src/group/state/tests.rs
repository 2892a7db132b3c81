//! Transitions of the group state machine, driven by an explicit clock.

use super::*;

const SESSION_MS: i32 = 10_000;
const REBALANCE_MS: i32 = 30_000;
const G: &str = "g";

fn config(initial_delay_ms: i32) -> GroupConfig {
    GroupConfig { initial_rebalance_delay_ms: initial_delay_ms, ..Default::default() }
}

/// A consumer-protocol subscription (v0) to `topics`.
fn subscription(topics: &[&str]) -> Bytes {
    let mut b = vec![0u8, 0];
    b.extend_from_slice(&(topics.len() as i32).to_be_bytes());
    for t in topics {
        b.extend_from_slice(&(t.len() as i16).to_be_bytes());
        b.extend_from_slice(t.as_bytes());
    }
    b.extend_from_slice(&(-1i32).to_be_bytes()); // user data: null
    Bytes::from(b)
}

struct Harness {
    state: GroupState,
    next_waiter: WaiterId,
    completions: Vec<Completion>,
    records: Vec<StoreRecord>,
}

struct Join<'a> {
    member_id: &'a str,
    instance: Option<&'a str>,
    new_id: &'a str,
    protocols: &'a [&'a str],
    require_known: bool,
}

impl<'a> Join<'a> {
    fn new(member_id: &'a str, new_id: &'a str) -> Self {
        Join { member_id, instance: None, new_id, protocols: &["range"], require_known: false }
    }
}

impl Harness {
    fn new(initial_delay_ms: i32) -> Harness {
        Harness {
            state: GroupState::new(config(initial_delay_ms)),
            next_waiter: 1,
            completions: vec![],
            records: vec![],
        }
    }

    /// Stages a commit and reports it durable at once.
    fn commit_durable(&mut self, plan: CommitPlan) {
        let staged = self.state.stage_commit(plan);
        self.state.complete_commit(staged, true);
    }

    fn absorb(&mut self, fx: Effects) {
        self.completions.extend(fx.completions);
        self.records.extend(fx.records);
    }

    fn join(&mut self, j: Join<'_>, now: i64) -> (WaiterId, Answer<JoinResult>) {
        let waiter = self.next_waiter;
        self.next_waiter += 1;
        let req = JoinRequest {
            group_id: G.into(),
            member_id: j.member_id.into(),
            group_instance_id: j.instance.map(String::from),
            client_id: "client".into(),
            client_host: "/127.0.0.1".into(),
            session_timeout_ms: SESSION_MS,
            rebalance_timeout_ms: REBALANCE_MS,
            protocol_type: "consumer".into(),
            protocols: j.protocols.iter().map(|p| (p.to_string(), subscription(&["t"]))).collect(),
            require_known_member_id: j.require_known,
            new_member_id: j.new_id.into(),
        };
        let (answer, fx) = self.state.join(req, waiter, now);
        self.absorb(fx);
        (waiter, answer)
    }

    fn sync(
        &mut self,
        member: &str,
        generation: i32,
        assignments: &[(&str, &str)],
        now: i64,
    ) -> (WaiterId, Answer<SyncResult>) {
        let waiter = self.next_waiter;
        self.next_waiter += 1;
        let assignments =
            assignments.iter().map(|(m, a)| (m.to_string(), Bytes::copy_from_slice(a.as_bytes()))).collect();
        let (answer, fx) = self.state.sync(G, generation, member, None, None, None, assignments, waiter, now);
        self.absorb(fx);
        (waiter, answer)
    }

    fn tick(&mut self, now: i64) {
        let fx = self.state.tick(now);
        self.absorb(fx);
    }

    fn joined(&mut self, waiter: WaiterId) -> Option<JoinResult> {
        let i = self.completions.iter().position(|c| matches!(c, Completion::Join(w, _) if *w == waiter))?;
        match self.completions.remove(i) {
            Completion::Join(_, r) => Some(r),
            Completion::Sync(..) => None,
        }
    }

    fn synced(&mut self, waiter: WaiterId) -> Option<SyncResult> {
        let i = self.completions.iter().position(|c| matches!(c, Completion::Sync(w, _) if *w == waiter))?;
        match self.completions.remove(i) {
            Completion::Sync(_, r) => Some(r),
            Completion::Join(..) => None,
        }
    }

    fn phase(&self) -> GroupPhase {
        self.state.phase(G).unwrap()
    }

    /// Two members `a` (leader) and `b`, Stable at generation 2 by time 0.
    fn stable_pair(&mut self) {
        let (wa, _) = self.join(Join::new("", "a"), 0);
        assert_eq!(self.joined(wa).unwrap().generation_id, 1);
        let (ws, _) = self.sync("a", 1, &[("a", "A1")], 0);
        assert_eq!(self.synced(ws).unwrap().assignment, Bytes::from_static(b"A1"));
        let (wb, answer) = self.join(Join::new("", "b"), 0);
        assert_eq!(answer, Answer::Parked);
        assert_eq!(self.state.heartbeat(G, 1, "a", None, 0), ErrorCode::REBALANCE_IN_PROGRESS);
        let (wa, _) = self.join(Join::new("a", "unused"), 0);
        let ra = self.joined(wa).unwrap();
        let rb = self.joined(wb).unwrap();
        assert_eq!((ra.generation_id, ra.leader.as_str(), ra.members.len()), (2, "a", 2));
        assert_eq!((rb.generation_id, rb.leader.as_str(), rb.members.len()), (2, "a", 0));
        let (wb, _) = self.sync("b", 2, &[], 0);
        let (wa, _) = self.sync("a", 2, &[("a", "A2"), ("b", "B2")], 0);
        assert_eq!(self.synced(wa).unwrap().assignment, Bytes::from_static(b"A2"));
        assert_eq!(self.synced(wb).unwrap().assignment, Bytes::from_static(b"B2"));
        assert_eq!(self.phase(), GroupPhase::Stable);
    }
}

#[test]
fn kip394_first_join_requires_a_member_id() {
    let mut h = Harness::new(0);
    let (_, answer) = h.join(Join { require_known: true, ..Join::new("", "m-1") }, 0);
    let Answer::Now(r) = answer else { panic!("expected an immediate answer") };
    assert_eq!((r.error, r.member_id.as_str()), (ErrorCode::MEMBER_ID_REQUIRED, "m-1"));
    // The pending id is known: the second join is accepted and (delay 0) completes at once.
    let (w, answer) = h.join(Join { require_known: true, ..Join::new("m-1", "unused") }, 10);
    assert_eq!(answer, Answer::Parked);
    let r = h.joined(w).unwrap();
    assert_eq!((r.error, r.generation_id, r.leader.as_str()), (ErrorCode::NONE, 1, "m-1"));
    assert_eq!(r.protocol_name.as_deref(), Some("range"));
    assert_eq!(h.phase(), GroupPhase::CompletingRebalance);
    // An id that was never handed out is unknown.
    let (_, answer) = h.join(Join { require_known: true, ..Join::new("made-up", "x") }, 10);
    assert!(matches!(answer, Answer::Now(r) if r.error == ErrorCode::UNKNOWN_MEMBER_ID));
}

#[test]
fn unused_kip394_ids_expire_and_stop_blocking_the_rebalance() {
    let mut h = Harness::new(0);
    h.stable_pair();
    // A third consumer gets an id but never comes back; meanwhile a rebalance starts.
    let (_, answer) = h.join(Join { require_known: true, ..Join::new("", "c") }, 100);
    assert!(matches!(answer, Answer::Now(r) if r.error == ErrorCode::MEMBER_ID_REQUIRED));
    let (wa, _) = h.join(Join { protocols: &["range", "roundrobin"], ..Join::new("a", "") }, 200);
    let (wb, _) = h.join(Join::new("b", ""), 200);
    assert!(h.joined(wa).is_none(), "the pending member holds the join phase open");
    h.tick(100 + SESSION_MS as i64 + 1);
    assert_eq!(h.joined(wa).unwrap().generation_id, 3);
    assert_eq!(h.joined(wb).unwrap().generation_id, 3);
}

#[test]
fn join_during_rebalance_completes_when_everyone_rejoined() {
    let mut h = Harness::new(0);
    h.stable_pair();
    assert_eq!(h.state.heartbeat(G, 2, "b", None, 5), ErrorCode::NONE);
    // A stale generation is fenced.
    assert_eq!(h.state.heartbeat(G, 1, "b", None, 5), ErrorCode::ILLEGAL_GENERATION);
    assert_eq!(h.state.heartbeat(G, 2, "nobody", None, 5), ErrorCode::UNKNOWN_MEMBER_ID);
}

#[test]
fn initial_delay_waits_for_more_members_and_extends_per_arrival() {
    let mut h = Harness::new(3000);
    let (wa, _) = h.join(Join::new("", "a"), 0);
    h.tick(1000);
    let (wb, _) = h.join(Join::new("", "b"), 1000);
    h.tick(2999);
    assert!(h.joined(wa).is_none());
    // At 3000 a new member had arrived: the delay is extended once more.
    h.tick(3000);
    assert!(h.joined(wa).is_none());
    h.tick(5999);
    assert!(h.joined(wa).is_none());
    h.tick(6000);
    let ra = h.joined(wa).unwrap();
    let rb = h.joined(wb).unwrap();
    assert_eq!((ra.generation_id, ra.members.len(), rb.members.len()), (1, 2, 0));
}

#[test]
fn member_timeout_removes_it_and_rebalances() {
    let mut h = Harness::new(0);
    h.stable_pair();
    let session = SESSION_MS as i64;
    assert_eq!(h.state.heartbeat(G, 2, "a", None, session - 1), ErrorCode::NONE);
    h.tick(session - 1);
    assert_eq!(h.phase(), GroupPhase::Stable);
    h.tick(session + 1);
    // b missed its session; a keeps heartbeating and is told to rejoin.
    assert_eq!(h.phase(), GroupPhase::PreparingRebalance);
    assert_eq!(h.state.heartbeat(G, 2, "a", None, session + 2), ErrorCode::REBALANCE_IN_PROGRESS);
    assert_eq!(h.state.heartbeat(G, 2, "b", None, session + 2), ErrorCode::UNKNOWN_MEMBER_ID);
    let (wa, _) = h.join(Join::new("a", ""), session + 3);
    let r = h.joined(wa).unwrap();
    assert_eq!((r.generation_id, r.members.len()), (3, 1));
}

#[test]
fn member_that_does_not_rejoin_in_time_is_dropped() {
    let mut h = Harness::new(0);
    h.stable_pair();
    let (wc, _) = h.join(Join::new("", "c"), 100);
    let (wa, _) = h.join(Join::new("a", ""), 100);
    // b keeps heartbeating but never rejoins: after the rebalance timeout it is removed.
    for t in (1000..REBALANCE_MS as i64).step_by(1000) {
        assert_eq!(h.state.heartbeat(G, 2, "b", None, t), ErrorCode::REBALANCE_IN_PROGRESS);
        h.tick(t);
    }
    assert!(h.joined(wa).is_none());
    h.tick(100 + REBALANCE_MS as i64);
    let ra = h.joined(wa).unwrap();
    assert_eq!(ra.members.iter().map(|m| m.member_id.as_str()).collect::<Vec<_>>(), vec!["a", "c"]);
    assert_eq!(h.joined(wc).unwrap().generation_id, 3);
}

#[test]
fn leader_leaving_mid_sync_sends_followers_back_to_join() {
    let mut h = Harness::new(0);
    h.stable_pair();
    // A new rebalance; both rejoin; b syncs and waits for the leader.
    let (wa, _) = h.join(Join { protocols: &["range", "roundrobin"], ..Join::new("a", "") }, 10);
    let (wb, _) = h.join(Join::new("b", ""), 10);
    assert_eq!(h.joined(wa).unwrap().generation_id, 3);
    assert_eq!(h.joined(wb).unwrap().generation_id, 3);
    let (wsb, answer) = h.sync("b", 3, &[], 11);
    assert_eq!(answer, Answer::Parked);
    let (result, fx) = h.state.leave(G, &[LeavingMember { member_id: "a".into(), group_instance_id: None }], 12);
    h.absorb(fx);
    assert_eq!(result.unwrap(), vec![ErrorCode::NONE]);
    assert_eq!(h.synced(wsb).unwrap().error, ErrorCode::REBALANCE_IN_PROGRESS);
    // b rejoins alone and becomes the leader.
    let (wb, _) = h.join(Join::new("b", ""), 13);
    let r = h.joined(wb).unwrap();
    assert_eq!((r.generation_id, r.leader.as_str(), r.members.len()), (4, "b", 1));
}

#[test]
fn followers_that_never_sync_are_removed_after_the_rebalance_timeout() {
    let mut h = Harness::new(0);
    let (wa, _) = h.join(Join::new("", "a"), 0);
    let (wb, _) = h.join(Join::new("", "b"), 0);
    assert!(h.joined(wa).is_some());
    // b was added after a's join completed: a rejoins and both get generation 2.
    let (wa, _) = h.join(Join::new("a", ""), 1);
    assert_eq!(h.joined(wa).unwrap().generation_id, 2);
    assert_eq!(h.joined(wb).unwrap().generation_id, 2);
    let (ws, _) = h.sync("a", 2, &[("a", "x")], 2);
    assert!(h.synced(ws).is_some());
    // Both keep heartbeating, but b never sends SyncGroup.
    for t in (1000..REBALANCE_MS as i64).step_by(1000) {
        assert_eq!(h.state.heartbeat(G, 2, "a", None, t), ErrorCode::NONE);
        assert_eq!(h.state.heartbeat(G, 2, "b", None, t), ErrorCode::NONE);
        h.tick(t);
    }
    assert_eq!(h.phase(), GroupPhase::Stable);
    h.tick(1 + REBALANCE_MS as i64);
    assert_eq!(h.phase(), GroupPhase::PreparingRebalance, "b was removed");
    assert_eq!(h.state.heartbeat(G, 2, "b", None, 2 + REBALANCE_MS as i64), ErrorCode::UNKNOWN_MEMBER_ID);
    assert_eq!(h.state.heartbeat(G, 2, "a", None, 2 + REBALANCE_MS as i64), ErrorCode::REBALANCE_IN_PROGRESS);
}

#[test]
fn stale_generation_and_unknown_member_commits_are_refused() {
    let mut h = Harness::new(0);
    h.stable_pair();
    let s = &mut h.state;
    assert_eq!(s.validate_commit(G, 1, "a", None, 5), Err(ErrorCode::ILLEGAL_GENERATION));
    assert_eq!(s.validate_commit(G, 2, "ghost", None, 5), Err(ErrorCode::UNKNOWN_MEMBER_ID));
    assert_eq!(s.validate_commit(G, 2, "a", None, 5), Ok(()));
    // A standalone commit is for groups without members only.
    assert_eq!(s.validate_commit(G, -1, "", None, 5), Err(ErrorCode::UNKNOWN_MEMBER_ID));
    assert_eq!(s.validate_commit("standalone", -1, "", None, 5), Ok(()));
    assert_eq!(s.validate_commit("never-joined", 3, "x", None, 5), Err(ErrorCode::ILLEGAL_GENERATION));
    // While assignments are being handed out, members are told to finish the rebalance first.
    let (wa, _) = h.join(Join::new("a", ""), 10);
    let (wb, _) = h.join(Join::new("b", ""), 10);
    h.joined(wa);
    h.joined(wb);
    assert_eq!(h.state.validate_commit(G, 3, "a", None, 11), Err(ErrorCode::REBALANCE_IN_PROGRESS));
}

#[test]
fn commits_apply_and_fetch_returns_them() {
    let mut h = Harness::new(0);
    h.state.validate_commit("solo", -1, "", None, 1).unwrap();
    let v = OffsetValue {
        offset: 7,
        leader_epoch: -1,
        metadata: "m".into(),
        commit_timestamp_ms: 1,
        expire_timestamp_ms: None,
    };
    h.commit_durable(CommitPlan { group_id: "solo".into(), offsets: vec![("t".into(), 0, v.clone())] });
    assert_eq!(h.state.fetch_offsets("solo", None, false), vec![("t".into(), 0, Ok(Some(v.clone())))]);
    assert_eq!(
        h.state.fetch_offsets("solo", Some(&[("t".into(), 0), ("t".into(), 1)]), false),
        vec![("t".into(), 0, Ok(Some(v))), ("t".into(), 1, Ok(None))]
    );
    assert!(h.state.fetch_offsets("nobody", None, false).is_empty());
}

#[test]
fn static_member_rejoining_with_a_new_id_takes_its_place_without_a_rebalance() {
    let mut h = Harness::new(0);
    let (w, _) = h.join(Join { instance: Some("i-1"), ..Join::new("", "old") }, 0);
    assert_eq!(h.joined(w).unwrap().generation_id, 1);
    let (ws, _) = h.sync("old", 1, &[("old", "A")], 0);
    assert!(h.synced(ws).is_some());
    h.records.clear();
    // The process restarts: same instance id, no member id (static members skip KIP-394).
    let (_, answer) = h.join(Join { instance: Some("i-1"), require_known: true, ..Join::new("", "new") }, 100);
    let Answer::Now(r) = answer else { panic!("a static rejoin into a stable group answers at once") };
    assert_eq!((r.error, r.member_id.as_str(), r.generation_id), (ErrorCode::NONE, "new", 1));
    // The old leader id is returned so the rejoined member does not run an assignment.
    assert_eq!(r.leader, "old");
    assert_eq!(h.phase(), GroupPhase::Stable);
    assert!(matches!(h.records.as_slice(), [StoreRecord::Group { .. }]));
    assert_eq!(h.state.heartbeat(G, 1, "old", Some("i-1"), 101), ErrorCode::FENCED_INSTANCE_ID);
    assert_eq!(h.state.heartbeat(G, 1, "new", Some("i-1"), 101), ErrorCode::NONE);
    let (ws, answer) = h.sync("new", 1, &[], 102);
    let _ = ws;
    assert!(matches!(answer, Answer::Now(r) if r.assignment == Bytes::from_static(b"A")));
    // The fenced incarnation may not join with its old id either.
    let (_, answer) = h.join(Join { instance: Some("i-1"), ..Join::new("old", "") }, 103);
    assert!(matches!(answer, Answer::Now(r) if r.error == ErrorCode::FENCED_INSTANCE_ID));
}

#[test]
fn static_members_are_kept_through_a_rebalance_they_miss() {
    let mut h = Harness::new(0);
    let (w, _) = h.join(Join { instance: Some("i-1"), ..Join::new("", "s") }, 0);
    h.joined(w);
    let (ws, _) = h.sync("s", 1, &[("s", "A")], 0);
    h.synced(ws);
    let (wd, _) = h.join(Join::new("", "d"), 10);
    // The static member stays alive but does not rejoin within the rebalance timeout.
    for t in (1000..REBALANCE_MS as i64).step_by(1000) {
        assert_eq!(h.state.heartbeat(G, 1, "s", Some("i-1"), t), ErrorCode::REBALANCE_IN_PROGRESS);
        h.tick(t);
    }
    h.tick(10 + REBALANCE_MS as i64);
    let r = h.joined(wd).unwrap();
    assert_eq!(r.generation_id, 2);
    // d leads (s has not joined) and still assigns to s, which keeps its place.
    assert_eq!(r.leader, "d");
    assert_eq!(r.members.iter().map(|m| m.member_id.as_str()).collect::<Vec<_>>(), vec!["s", "d"]);
}

#[test]
fn protocol_selection_is_a_vote_over_common_protocols() {
    let mut h = Harness::new(0);
    let (wa, _) = h.join(Join { protocols: &["range", "roundrobin"], ..Join::new("", "a") }, 0);
    h.joined(wa);
    let (_, answer) = h.join(Join { protocols: &["sticky"], ..Join::new("", "x") }, 1);
    assert!(matches!(answer, Answer::Now(r) if r.error == ErrorCode::INCONSISTENT_GROUP_PROTOCOL));
    let (wb, _) = h.join(Join { protocols: &["roundrobin", "range"], ..Join::new("", "b") }, 1);
    let (wc, _) = h.join(Join { protocols: &["roundrobin"], ..Join::new("", "c") }, 1);
    let (wa, _) = h.join(Join { protocols: &["range", "roundrobin"], ..Join::new("a", "") }, 1);
    let r = h.joined(wa).unwrap();
    assert_eq!(r.protocol_name.as_deref(), Some("roundrobin"));
    assert!(h.joined(wb).is_some() && h.joined(wc).is_some());
}

#[test]
fn bad_joins_get_kafkas_errors() {
    let mut h = Harness::new(0);
    let req = |h: &mut Harness, f: &dyn Fn(&mut JoinRequest)| {
        let mut r = JoinRequest {
            group_id: G.into(),
            member_id: String::new(),
            group_instance_id: None,
            client_id: "c".into(),
            client_host: "h".into(),
            session_timeout_ms: SESSION_MS,
            rebalance_timeout_ms: REBALANCE_MS,
            protocol_type: "consumer".into(),
            protocols: vec![("range".into(), Bytes::new())],
            require_known_member_id: false,
            new_member_id: "n".into(),
        };
        f(&mut r);
        match h.state.join(r, 99, 0).0 {
            Answer::Now(r) => r.error,
            Answer::Parked => ErrorCode::NONE,
        }
    };
    assert_eq!(req(&mut h, &|r| r.session_timeout_ms = 1), ErrorCode::INVALID_SESSION_TIMEOUT);
    assert_eq!(req(&mut h, &|r| r.session_timeout_ms = i32::MAX), ErrorCode::INVALID_SESSION_TIMEOUT);
    assert_eq!(req(&mut h, &|r| r.group_id.clear()), ErrorCode::INVALID_GROUP_ID);
    assert_eq!(req(&mut h, &|r| r.member_id = "ghost".into()), ErrorCode::UNKNOWN_MEMBER_ID);
    assert_eq!(
        req(&mut h, &|r| r.protocols = vec![("range".into(), Bytes::from(vec![0; (1 << 20) + 1]))]),
        ErrorCode::INVALID_REQUEST
    );
    assert_eq!(req(&mut h, &|r| r.protocols.clear()), ErrorCode::INCONSISTENT_GROUP_PROTOCOL);
    assert_eq!(h.state.group_count(), 1, "only the unknown-member join of a new group created it");
}

#[test]
fn group_max_size_is_enforced() {
    let mut h = Harness { state: GroupState::new(GroupConfig { max_size: 1, ..config(0) }), ..Harness::new(0) };
    let (wa, _) = h.join(Join::new("", "a"), 0);
    h.joined(wa);
    let (_, answer) = h.join(Join::new("", "b"), 1);
    assert!(matches!(answer, Answer::Now(r) if r.error == ErrorCode::GROUP_MAX_SIZE_REACHED));
    assert_eq!(h.state.describe(G).members.len(), 1);
}

#[test]
fn oversized_assignments_are_refused_not_stored() {
    let mut h = Harness {
        state: GroupState::new(GroupConfig { member_metadata_max_bytes: 16, ..config(0) }),
        ..Harness::new(0)
    };
    let (wa, _) = h.join(Join { protocols: &[], ..Join::new("", "a") }, 0);
    // An empty protocol list is inconsistent; join properly with a small one.
    let _ = wa;
    let (wa, _) = h.join(Join { protocols: &["r"], ..Join::new("", "a") }, 0);
    let _ = h.joined(wa);
    let (_, answer) = h.sync("a", 1, &[("a", "12345678901234567")], 1);
    assert!(matches!(answer, Answer::Now(r) if r.error == ErrorCode::INVALID_REQUEST));
    assert_eq!(h.phase(), GroupPhase::CompletingRebalance);
}

#[test]
fn delete_group_only_when_empty() {
    let mut h = Harness::new(0);
    h.stable_pair();
    assert_eq!(h.state.delete_group(G), Err(ErrorCode::NON_EMPTY_GROUP));
    assert_eq!(h.state.delete_group("nope"), Err(ErrorCode::GROUP_ID_NOT_FOUND));
    let leaving = [
        LeavingMember { member_id: "a".into(), group_instance_id: None },
        LeavingMember { member_id: "b".into(), group_instance_id: None },
        LeavingMember { member_id: "z".into(), group_instance_id: None },
    ];
    let (result, fx) = h.state.leave(G, &leaving, 10);
    h.absorb(fx);
    assert_eq!(result.unwrap(), vec![ErrorCode::NONE, ErrorCode::NONE, ErrorCode::UNKNOWN_MEMBER_ID]);
    assert_eq!(h.phase(), GroupPhase::Empty);
    assert_eq!(h.state.generation(G), Some(3));
    h.commit_durable(CommitPlan {
        group_id: G.into(),
        offsets: vec![(
            "t".into(),
            0,
            OffsetValue {
                offset: 1,
                leader_epoch: -1,
                metadata: String::new(),
                commit_timestamp_ms: 0,
                expire_timestamp_ms: None,
            },
        )],
    });
    let tombstones = h.state.delete_group(G).unwrap();
    assert_eq!(tombstones.len(), 2);
    assert!(tombstones
        .iter()
        .all(|r| matches!(r, StoreRecord::Offset { value: None, .. } | StoreRecord::Group { value: None, .. })));
    assert!(h.state.phase(G).is_none());
}

#[test]
fn offset_delete_refuses_subscribed_topics() {
    let mut h = Harness::new(0);
    h.stable_pair();
    let (errors, _) = h.state.delete_offsets(G, &[("t".into(), 0), ("other".into(), 0)]).unwrap();
    assert_eq!(errors, vec![ErrorCode::GROUP_SUBSCRIBED_TO_TOPIC, ErrorCode::NONE]);
    assert_eq!(h.state.delete_offsets("nope", &[]).unwrap_err(), ErrorCode::GROUP_ID_NOT_FOUND);
    assert_eq!(parse_subscription_topics(&subscription(&["x", "yy"])), Some(vec!["x".into(), "yy".into()]));
    assert_eq!(parse_subscription_topics(&[0, 0, 0x7f, 0xff, 0xff, 0xff]), None);
}

#[test]
fn loading_restores_offsets_and_an_empty_group_at_its_generation() {
    let mut h = Harness::new(0);
    let offset = |o| OffsetValue {
        offset: o,
        leader_epoch: -1,
        metadata: String::new(),
        commit_timestamp_ms: 0,
        expire_timestamp_ms: None,
    };
    let records = [
        StoreRecord::Offset { group: G.into(), topic: "t".into(), partition: 0, value: Some(offset(5)) },
        StoreRecord::Offset { group: G.into(), topic: "t".into(), partition: 0, value: Some(offset(9)) },
        StoreRecord::Offset { group: G.into(), topic: "t".into(), partition: 1, value: Some(offset(3)) },
        StoreRecord::Offset { group: G.into(), topic: "t".into(), partition: 1, value: None },
        StoreRecord::Group {
            group: G.into(),
            value: Some(GroupValue {
                protocol_type: "consumer".into(),
                generation_id: 7,
                protocol_name: Some("range".into()),
                leader: Some("a".into()),
                current_state_timestamp_ms: 0,
                members: vec![],
            }),
        },
        StoreRecord::Offset { group: "gone".into(), topic: "t".into(), partition: 0, value: Some(offset(1)) },
        StoreRecord::Offset { group: "gone".into(), topic: "t".into(), partition: 0, value: None },
        StoreRecord::Group { group: "gone".into(), value: None },
    ];
    for r in records {
        h.state.load(r, 1000);
    }
    assert_eq!(h.state.fetch_offsets(G, None, false), vec![("t".into(), 0, Ok(Some(offset(9))))]);
    assert_eq!((h.phase(), h.state.generation(G)), (GroupPhase::Empty, Some(7)));
    assert!(h.state.phase("gone").is_none());
    // The next rebalance continues the generation sequence.
    let (w, _) = h.join(Join::new("", "a"), 2000);
    assert_eq!(h.joined(w).unwrap().generation_id, 8);
}

#[test]
fn offsets_of_an_empty_group_expire_after_retention() {
    let retention = 60 * 60 * 1000;
    let mut h = Harness {
        state: GroupState::new(GroupConfig { offsets_retention_ms: retention, ..config(0) }),
        ..Harness::new(0)
    };
    h.state.validate_commit("solo", -1, "", None, 0).unwrap();
    let v = OffsetValue {
        offset: 1,
        leader_epoch: -1,
        metadata: String::new(),
        commit_timestamp_ms: 0,
        expire_timestamp_ms: None,
    };
    h.commit_durable(CommitPlan { group_id: "solo".into(), offsets: vec![("t".into(), 0, v)] });
    h.tick(retention - 1);
    assert_eq!(h.state.fetch_offsets("solo", None, false).len(), 1);
    h.tick(retention + OFFSET_EXPIRY_INTERVAL_MS);
    assert!(h.state.fetch_offsets("solo", None, false).is_empty());
    assert!(h.state.phase("solo").is_none());
    assert!(h.records.iter().any(|r| matches!(r, StoreRecord::Offset { value: None, .. })));
}

fn offset_value(offset: i64) -> OffsetValue {
    OffsetValue { offset, leader_epoch: -1, metadata: String::new(), commit_timestamp_ms: 0, expire_timestamp_ms: None }
}

fn plan(group: &str, partition: i32, offset: i64) -> CommitPlan {
    CommitPlan { group_id: group.into(), offsets: vec![("t".into(), partition, offset_value(offset))] }
}

#[test]
fn a_commit_is_visible_only_once_durable() {
    let mut h = Harness::new(0);
    h.state.validate_commit("solo", -1, "", None, 1).unwrap();
    h.commit_durable(plan("solo", 0, 3));
    let staged = h.state.stage_commit(plan("solo", 0, 7));
    // Appended, not yet below the high watermark: OffsetFetch still sees the durable value.
    assert_eq!(h.state.fetch_offsets("solo", None, false), vec![("t".into(), 0, Ok(Some(offset_value(3))))]);
    assert!(h.state.has_pending_offsets("solo", None));
    assert!(h.state.has_pending_offsets("solo", Some(&[("t".into(), 0)])));
    assert!(!h.state.has_pending_offsets("solo", Some(&[("t".into(), 1)])));
    h.state.complete_commit(staged, true);
    assert_eq!(h.state.fetch_offsets("solo", None, false), vec![("t".into(), 0, Ok(Some(offset_value(7))))]);
    assert!(!h.state.has_pending_offsets("solo", None));
}

#[test]
fn a_commit_that_never_became_durable_is_never_shown() {
    let mut h = Harness::new(0);
    h.state.validate_commit("solo", -1, "", None, 1).unwrap();
    h.commit_durable(plan("solo", 0, 3));
    let staged = h.state.stage_commit(plan("solo", 0, 7));
    // Leadership moved (or the wait timed out): the record may be truncated away.
    h.state.complete_commit(staged, false);
    assert_eq!(h.state.fetch_offsets("solo", None, false), vec![("t".into(), 0, Ok(Some(offset_value(3))))]);
    assert!(!h.state.has_pending_offsets("solo", None));
}

#[test]
fn the_later_of_two_staged_commits_wins_whatever_order_they_resolve_in() {
    let mut h = Harness::new(0);
    h.state.validate_commit("solo", -1, "", None, 1).unwrap();
    let first = h.state.stage_commit(plan("solo", 0, 5));
    let second = h.state.stage_commit(plan("solo", 0, 6));
    h.state.complete_commit(second, true);
    h.state.complete_commit(first, true);
    assert_eq!(h.state.fetch_offsets("solo", None, false), vec![("t".into(), 0, Ok(Some(offset_value(6))))]);
}

#[test]
fn a_deleted_offset_or_group_is_not_brought_back_by_a_commit_in_flight() {
    let mut h = Harness::new(0);
    h.state.validate_commit("solo", -1, "", None, 1).unwrap();
    let staged = h.state.stage_commit(plan("solo", 0, 5));
    let (errors, _) = h.state.delete_offsets("solo", &[("t".into(), 0)]).unwrap();
    assert_eq!(errors, vec![ErrorCode::NONE]);
    h.state.complete_commit(staged, true);
    assert!(h.state.fetch_offsets("solo", None, false).is_empty());

    // Deleted and recreated under the same name: the old group's commit stays gone.
    let staged = h.state.stage_commit(plan("solo", 0, 8));
    h.state.delete_group("solo").unwrap();
    h.state.validate_commit("solo", -1, "", None, 2).unwrap();
    let fresh = h.state.stage_commit(plan("solo", 0, 9));
    h.state.complete_commit(staged, true);
    assert!(h.state.fetch_offsets("solo", None, false).is_empty());
    h.state.complete_commit(fresh, true);
    assert_eq!(h.state.fetch_offsets("solo", None, false), vec![("t".into(), 0, Ok(Some(offset_value(9))))]);
}

#[test]
fn unloading_answers_parked_requests_not_coordinator() {
    let mut h = Harness::new(0);
    let (w, _) = h.join(Join::new("", "a"), 10);
    let a = h.joined(w).unwrap().member_id;
    let (wb, _) = h.join(Join::new("", "b"), 11);
    assert!(h.joined(wb).is_none(), "b waits for a to rejoin");
    let (gone, fx) = h.state.unload_groups(|g| g == G);
    assert_eq!(gone, 1);
    assert!(fx
        .completions
        .iter()
        .any(|c| matches!(c, Completion::Join(id, r) if *id == wb && r.error == ErrorCode::NOT_COORDINATOR)));
    assert!(h.state.phase(G).is_none());
    assert!(!a.is_empty());
}

// ---------------------------------------------------------------------------------------------
// Transactional offsets (TxnOffsetCommit)

fn stable(state: &GroupState, group: &str, partition: i32) -> Result<Option<i64>, ErrorCode> {
    let (_, _, result) = state.fetch_offsets(group, Some(&[("t".into(), partition)]), true).remove(0);
    result.map(|v| v.map(|v| v.offset))
}

fn committed(state: &GroupState, group: &str, partition: i32) -> Option<i64> {
    let (_, _, result) = state.fetch_offsets(group, Some(&[("t".into(), partition)]), false).remove(0);
    result.unwrap().map(|v| v.offset)
}

#[test]
fn transactional_offsets_wait_for_their_producers_marker() {
    let mut h = Harness::new(0);
    // A transactional commit creates the group it names, Empty.
    assert_eq!(h.state.validate_txn_commit("solo", -1, "", None, 1), Ok(()));
    assert_eq!(h.state.phase("solo"), Some(GroupPhase::Empty));
    h.commit_durable(plan("solo", 0, 2));
    h.state.stage_txn_commit(plan("solo", 0, 5), 7);
    h.state.stage_txn_commit(plan("solo", 1, 6), 8);
    // Durable but pending: OffsetFetch shows the last committed offset, or with require_stable
    // UNSTABLE_OFFSET_COMMIT for the partitions a transaction holds.
    assert_eq!(committed(&h.state, "solo", 0), Some(2));
    assert_eq!(committed(&h.state, "solo", 1), None);
    assert_eq!(stable(&h.state, "solo", 0), Err(ErrorCode::UNSTABLE_OFFSET_COMMIT));
    assert_eq!(stable(&h.state, "solo", 1), Err(ErrorCode::UNSTABLE_OFFSET_COMMIT));
    assert_eq!(stable(&h.state, "solo", 2), Ok(None));
    assert_eq!(
        h.state.fetch_offsets("solo", None, true),
        vec![("t".into(), 0, Err(ErrorCode::UNSTABLE_OFFSET_COMMIT))]
    );
    assert!(!h.state.has_pending_offsets("solo", None), "OffsetFetch does not wait for a transaction");

    // Producer 7 commits: only its offsets apply; a marker for groups elsewhere changes nothing.
    assert_eq!(h.state.complete_txn(7, true, |g| g != "solo"), 0);
    assert_eq!(h.state.complete_txn(7, true, |_| true), 1);
    assert_eq!(stable(&h.state, "solo", 0), Ok(Some(5)));
    assert_eq!(stable(&h.state, "solo", 1), Err(ErrorCode::UNSTABLE_OFFSET_COMMIT));
    // Producer 8 aborts: its offset is dropped.
    assert_eq!(h.state.complete_txn(8, false, |_| true), 1);
    assert_eq!(stable(&h.state, "solo", 1), Ok(None));
    // A second marker finds nothing pending.
    assert_eq!(h.state.complete_txn(7, true, |_| true), 0);
}

#[test]
fn a_plain_commit_appended_after_a_transactional_one_wins() {
    let mut h = Harness::new(0);
    h.state.validate_txn_commit("solo", -1, "", None, 1).unwrap();
    // Transactional 5, then a plain 9 of the same partition, then the COMMIT marker.
    h.state.stage_txn_commit(plan("solo", 0, 5), 7);
    h.commit_durable(plan("solo", 0, 9));
    h.state.complete_txn(7, true, |_| true);
    assert_eq!(committed(&h.state, "solo", 0), Some(9));
    // The other way round the transactional one is the later.
    h.state.stage_txn_commit(plan("solo", 0, 12), 7);
    h.state.complete_txn(7, true, |_| true);
    assert_eq!(committed(&h.state, "solo", 0), Some(12));
    // A plain commit appended before the transactional one but resolved after its marker does
    // not override it.
    let plain = h.state.stage_commit(plan("solo", 0, 13));
    h.state.stage_txn_commit(plan("solo", 0, 14), 7);
    h.state.complete_txn(7, true, |_| true);
    h.state.complete_commit(plain, true);
    assert_eq!(committed(&h.state, "solo", 0), Some(14));
}

#[test]
fn a_failed_transactional_append_leaves_the_transaction() {
    let mut h = Harness::new(0);
    h.state.validate_txn_commit("solo", -1, "", None, 1).unwrap();
    let failed = h.state.stage_txn_commit(plan("solo", 0, 5), 7);
    let kept = h.state.stage_txn_commit(plan("solo", 1, 6), 7);
    h.state.complete_txn_commit(failed, false);
    h.state.complete_txn_commit(kept, true);
    assert_eq!(stable(&h.state, "solo", 0), Ok(None));
    assert_eq!(stable(&h.state, "solo", 1), Err(ErrorCode::UNSTABLE_OFFSET_COMMIT));
    assert_eq!(h.state.complete_txn(7, true, |_| true), 1);
    assert_eq!((committed(&h.state, "solo", 0), committed(&h.state, "solo", 1)), (None, Some(6)));
}

#[test]
fn transactional_commits_are_validated_as_kip_447_says() {
    let mut h = Harness::new(0);
    h.stable_pair();
    let s = &mut h.state;
    assert_eq!(s.validate_txn_commit(G, 2, "a", None, 5), Ok(()));
    assert_eq!(s.validate_txn_commit(G, 1, "a", None, 5), Err(ErrorCode::ILLEGAL_GENERATION));
    assert_eq!(s.validate_txn_commit(G, 2, "ghost", None, 5), Err(ErrorCode::UNKNOWN_MEMBER_ID));
    assert_eq!(s.validate_txn_commit(G, 2, "a", Some("nobody"), 5), Err(ErrorCode::UNKNOWN_MEMBER_ID));
    // Before v3 there is no member identity: a group with members takes it anyway.
    assert_eq!(s.validate_txn_commit(G, -1, "", None, 5), Ok(()));
    // A member of a group that does not exist is unknown, and no group is left behind.
    assert_eq!(s.validate_txn_commit("never-joined", 3, "x", None, 5), Err(ErrorCode::UNKNOWN_MEMBER_ID));
    assert!(s.phase("never-joined").is_none());
    // Unlike OffsetCommit, a rebalance does not refuse it.
    let (wa, _) = h.join(Join::new("a", ""), 10);
    let (wb, _) = h.join(Join::new("b", ""), 10);
    h.joined(wa);
    h.joined(wb);
    assert_eq!(h.phase(), GroupPhase::CompletingRebalance);
    assert_eq!(h.state.validate_txn_commit(G, 3, "a", None, 11), Ok(()));
}

#[test]
fn a_static_member_replaced_is_fenced_from_transactional_commits() {
    let mut h = Harness::new(0);
    let (w, _) = h.join(Join { instance: Some("i1"), ..Join::new("", "m1") }, 0);
    let generation = h.joined(w).unwrap().generation_id;
    let (w, _) = h.join(Join { instance: Some("i1"), ..Join::new("", "m2") }, 1);
    let _ = h.joined(w);
    assert_eq!(h.state.validate_txn_commit(G, generation, "m1", Some("i1"), 2), Err(ErrorCode::FENCED_INSTANCE_ID));
}

#[test]
fn deleted_offsets_leave_open_transactions_and_are_not_expired_under_one() {
    let retention = 1_000;
    let mut h = Harness {
        state: GroupState::new(GroupConfig { offsets_retention_ms: retention, ..config(0) }),
        next_waiter: 1,
        completions: vec![],
        records: vec![],
    };
    h.state.validate_txn_commit("solo", -1, "", None, 0).unwrap();
    h.commit_durable(plan("solo", 0, 1));
    h.state.stage_txn_commit(plan("solo", 0, 2), 7);
    // Retention does not drop an offset a transaction is writing, nor the group.
    h.tick(retention + OFFSET_EXPIRY_INTERVAL_MS);
    assert_eq!(committed(&h.state, "solo", 0), Some(1));
    // OffsetDelete drops it from the transaction too: the marker must not bring it back.
    let (errors, records) = h.state.delete_offsets("solo", &[("t".into(), 0)]).unwrap();
    assert_eq!((errors, records.len()), (vec![ErrorCode::NONE], 1));
    assert_eq!(h.state.complete_txn(7, true, |_| true), 0);
    assert_eq!(committed(&h.state, "solo", 0), None);
}

#[test]
fn replayed_transactions_apply_at_their_markers_and_open_ones_stay_pending() {
    let offset = |partition, o| StoreRecord::Offset {
        group: G.into(),
        topic: "t".into(),
        partition,
        value: Some(offset_value(o)),
    };
    let mut loaded = GroupState::new(config(0));
    loaded.load(offset(0, 1), 0);
    loaded.load_transactional(7, offset(0, 2), 0);
    loaded.load_transactional(8, offset(1, 3), 0);
    loaded.load(offset(0, 4), 0); // plain, appended after producer 7's
    loaded.complete_txn(7, true, |_| true); // its marker
    loaded.load_transactional(9, offset(2, 5), 0);
    loaded.complete_txn(9, false, |_| true);
    // A tombstone in a transaction takes that offset back out of it.
    loaded.load_transactional(8, offset(3, 6), 0);
    loaded.load_transactional(
        8,
        StoreRecord::Offset { group: G.into(), topic: "t".into(), partition: 3, value: None },
        0,
    );
    assert_eq!(committed(&loaded, G, 0), Some(4));
    assert_eq!(committed(&loaded, G, 2), None);
    assert_eq!(stable(&loaded, G, 1), Err(ErrorCode::UNSTABLE_OFFSET_COMMIT));

    // Taken over by the coordinator: a commit staged after the load is later than producer 8's
    // replayed offset (whatever sequences the replay used), and wins when 8's marker comes.
    let mut h = Harness::new(0);
    h.state.adopt(loaded);
    assert_eq!(stable(&h.state, G, 1), Err(ErrorCode::UNSTABLE_OFFSET_COMMIT));
    h.commit_durable(plan(G, 1, 30));
    assert_eq!(h.state.complete_txn(8, true, |_| true), 1);
    assert_eq!(committed(&h.state, G, 1), Some(30));
    assert_eq!(committed(&h.state, G, 3), None);
    // A group known only from a transaction still open at the log end is kept.
    let mut only_txn = GroupState::new(config(0));
    only_txn.load_transactional(
        7,
        StoreRecord::Offset { group: "txn-only".into(), topic: "t".into(), partition: 0, value: Some(offset_value(1)) },
        0,
    );
    assert_eq!(only_txn.phase("txn-only"), Some(GroupPhase::Empty));
    only_txn.complete_txn(7, true, |_| true);
    assert_eq!(committed(&only_txn, "txn-only", 0), Some(1));
}
