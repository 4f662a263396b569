//! The machine's rules, one test each, with a fake clock: every input takes
//! the time it happens at, in milliseconds here.
#![expect(clippy::unwrap_used, reason = "tests")]

use std::time::Duration;

use super::*;

const MS: u64 = 1_000_000;
const P: Slot = Slot::Primary;
const S: Slot = Slot::Secondary;

fn ms(n: u64) -> Nanos {
    Nanos(n * MS)
}

fn policy() -> Policy {
    Policy {
        rise: 3,
        fall: 2,
        failback: Failback::Auto,
        failback_delay: Duration::from_secs(1),
        all_down: AllDown::Keep,
        share: 0,
        gated: false,
        flap: FlapDamping::default(),
        promote: None,
        fence: false,
    }
}

fn alice() -> Who {
    Who {
        uid: 1000,
        name: Some("alice".into()),
    }
}

fn machine(policy: Policy) -> Machine {
    Machine::new("web".into(), policy, ms(0))
}

/// A verdict sent and answered at `at` ms.
fn probe(m: &mut Machine, at: u64, slot: Slot, ok: bool) -> Vec<Effect> {
    let reason = if ok { Reason::Passed } else { Reason::Timeout };
    let input = Input::Probe {
        slot,
        sent: ms(at),
        ok,
        reason,
        latency: Duration::ZERO,
    };
    m.step(ms(at), input).unwrap()
}

/// `n` verdicts at `at`, `at + 1`, … ms; the effects of all of them.
fn probes(m: &mut Machine, at: u64, slot: Slot, ok: bool, n: u64) -> Vec<Effect> {
    (0..n).flat_map(|i| probe(m, at + i, slot, ok)).collect()
}

fn tick(m: &mut Machine, at: u64) -> Vec<Effect> {
    m.step(ms(at), Input::Tick).unwrap()
}

fn flip(to: Slot, until: Option<u64>, force: bool) -> Input {
    Input::Flip {
        to,
        until: until.map(ms),
        force,
        who: alice(),
        why: Some("maintenance".into()),
    }
}

fn drain(slot: Slot, drained: bool) -> Input {
    Input::Drain {
        slot,
        drained,
        who: alice(),
        why: None,
    }
}

fn writes(effects: &[Effect]) -> Vec<Desired> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Write(d) => Some(*d),
            Effect::Event(_) | Effect::Promote { .. } => None,
        })
        .collect()
}

fn events(effects: &[Effect]) -> Vec<Event> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Event(ev) => Some(ev.clone()),
            Effect::Write(_) | Effect::Promote { .. } => None,
        })
        .collect()
}

fn causes(effects: &[Effect]) -> Vec<Cause> {
    events(effects).into_iter().map(|e| e.cause).collect()
}

fn desired(active: Slot, up: [bool; 2]) -> Desired {
    Desired {
        active,
        up,
        drained: [false; 2],
        all_down: None,
        share: 0,
    }
}

/// Both up, primary active, at t = 2 ms.
fn both_up(policy: Policy) -> Machine {
    let mut m = machine(policy);
    assert!(probe(&mut m, 1, P, true).is_empty());
    assert!(probe(&mut m, 2, S, true).is_empty());
    m
}

/// Both up, then the primary down at `at + 1` ms: failed over.
fn failed_over(policy: Policy, at: u64) -> Machine {
    let mut m = both_up(policy);
    let fx = probes(&mut m, at, P, false, 2);
    assert_eq!(writes(&fx), [desired(S, [false, true])]);
    m
}

fn failover() -> Cause {
    Cause::Failover {
        slot: P,
        reason: Some(Reason::Timeout),
    }
}

#[test]
fn start_is_unknown_and_nothing_moves() {
    let mut m = machine(policy());
    assert_eq!(m.desired(), desired(P, [true, true]));
    assert_eq!(m.view().backends.map(|b| b.state), [State::Unknown; 2]);
    assert!(
        probe(&mut m, 1, P, false).is_empty(),
        "one lost probe never fails over"
    );
    assert!(probe(&mut m, 1, S, false).is_empty());
    // First pass: unknown → up without changing a bit, so nothing to write.
    assert!(probe(&mut m, 2, P, true).is_empty());
    assert!(probe(&mut m, 2, S, true).is_empty());
    assert_eq!(m.view().backends.map(|b| b.state), [State::Up; 2]);
    assert_eq!(m.next_deadline(), None);
}

#[test]
fn primary_down_fails_over_with_one_write_one_event_and_detection() {
    let mut m = both_up(policy());
    let first = Input::Probe {
        slot: P,
        sent: ms(100),
        ok: false,
        reason: Reason::Refused,
        latency: Duration::from_millis(1),
    };
    assert!(m.step(ms(101), first).unwrap().is_empty());
    let second = Input::Probe {
        slot: P,
        sent: ms(105),
        ok: false,
        reason: Reason::Timeout,
        latency: Duration::from_millis(15),
    };
    let fx = m.step(ms(120), second).unwrap();
    assert_eq!(fx.len(), 2);
    assert_eq!(fx[0], Effect::Write(desired(S, [false, true])));
    let Effect::Event(ev) = &fx[1] else {
        panic!("{fx:?}")
    };
    assert_eq!((ev.from, ev.to, ev.at), (P, S, ms(120)));
    assert_eq!(ev.cause, failover());
    // From the send of the streak's first failed probe.
    assert_eq!(ev.detection, Some(Duration::from_millis(20)));
    assert_eq!(ev.who, None);
    assert_eq!(
        ev.to_string(),
        "web: primary → secondary: failover: primary down (timeout); detected in 20 ms"
    );
}

#[test]
fn failover_to_an_unknown_secondary() {
    let mut m = machine(policy());
    let fx = probes(&mut m, 1, P, false, 2);
    assert_eq!(writes(&fx), [desired(S, [false, true])]);
    assert_eq!(causes(&fx), [failover()]);
}

#[test]
fn path_down_fails_over_at_once_with_zero_detection() {
    let mut m = both_up(policy());
    let fx = m.step(ms(10), Input::PathDown { slot: P }).unwrap();
    assert_eq!(writes(&fx), [desired(S, [false, true])]);
    let ev = &events(&fx)[0];
    assert_eq!(
        ev.cause,
        Cause::Failover {
            slot: P,
            reason: Some(Reason::LinkDown)
        }
    );
    assert_eq!(ev.detection, Some(Duration::ZERO));
    // Rise passes bring it back.
    let fx = probes(&mut m, 20, P, true, 3);
    assert_eq!(writes(&fx), [desired(S, [true, true])]);
}

#[test]
fn standby_health_changes_write_and_report() {
    let mut m = both_up(policy());
    let fx = probes(&mut m, 10, S, false, 2);
    assert_eq!(writes(&fx), [desired(P, [true, false])]);
    let ev = &events(&fx)[0];
    assert_eq!(
        ev.cause,
        Cause::HealthChange {
            slot: S,
            up: false,
            reason: Some(Reason::Timeout)
        }
    );
    assert_eq!(
        (ev.from, ev.to, ev.detection),
        (P, P, Some(Duration::from_millis(1)))
    );
    let fx = probes(&mut m, 20, S, true, 3);
    assert_eq!(writes(&fx), [desired(P, [true, true])]);
    assert_eq!(
        causes(&fx),
        [Cause::HealthChange {
            slot: S,
            up: true,
            reason: Some(Reason::Passed)
        }]
    );
}

#[test]
fn no_write_repeats_the_previous_one() {
    let mut m = failed_over(policy(), 10);
    let mut last = m.desired();
    let mut count = 0;
    // Down and up of both, repeated verdicts, ticks: every write is a change.
    for round in 0..4u64 {
        let t = 100 + round * 2000;
        let mut fx = probes(&mut m, t, P, false, 5);
        fx.extend(probes(&mut m, t + 10, S, round % 2 == 0, 5));
        fx.extend(probes(&mut m, t + 20, P, true, 5));
        fx.extend(tick(&mut m, t + 1500));
        fx.extend(probes(&mut m, t + 1600, S, true, 5));
        for d in writes(&fx) {
            assert_ne!(d, last);
            last = d;
            count += 1;
        }
    }
    assert!(count > 4);
    assert_eq!(m.desired(), last);
    assert!(probes(&mut m, 9000, P, true, 5).is_empty());
}

#[test]
fn stale_verdicts_are_ignored() {
    let mut m = both_up(policy());
    let fail = |sent| Input::Probe {
        slot: P,
        sent: ms(sent),
        ok: false,
        reason: Reason::Timeout,
        latency: Duration::ZERO,
    };
    assert!(m.step(ms(25), fail(20)).unwrap().is_empty());
    // Sent before the one just applied: would have been the second failure.
    assert!(m.step(ms(30), fail(15)).unwrap().is_empty());
    assert_eq!(m.view().backends[0].fails, 1);
    assert_eq!(
        writes(&m.step(ms(35), fail(30)).unwrap()),
        [desired(S, [false, true])]
    );
}

#[test]
fn auto_failback_after_the_delay() {
    let mut m = failed_over(policy(), 10);
    let fx = probes(&mut m, 1000, P, true, 3);
    assert_eq!(writes(&fx), [desired(S, [true, true])]);
    assert_eq!(m.next_deadline(), Some(ms(2002)));
    assert!(tick(&mut m, 2001).is_empty());
    let fx = tick(&mut m, 2002);
    assert_eq!(writes(&fx), [desired(P, [true, true])]);
    let ev = &events(&fx)[0];
    assert_eq!((ev.from, ev.to, &ev.cause), (S, P, &Cause::Failback));
    assert_eq!(m.next_deadline(), None);
}

#[test]
fn a_primary_flapping_during_the_delay_restarts_it() {
    let mut m = failed_over(policy(), 10);
    probes(&mut m, 1000, P, true, 3);
    assert_eq!(m.next_deadline(), Some(ms(2002)));
    let fx = probes(&mut m, 1500, P, false, 2);
    assert_eq!(writes(&fx), [desired(S, [false, true])]);
    assert_eq!(m.next_deadline(), None);
    probes(&mut m, 1800, P, true, 3);
    assert_eq!(m.next_deadline(), Some(ms(2802)));
    assert!(tick(&mut m, 2002).is_empty());
    assert_eq!(causes(&tick(&mut m, 2802)), [Cause::Failback]);
}

#[test]
fn manual_failback_waits_for_an_operator_flip() {
    let mut m = failed_over(
        Policy {
            failback: Failback::Manual,
            ..policy()
        },
        10,
    );
    probes(&mut m, 1000, P, true, 3);
    assert_eq!(m.next_deadline(), None);
    assert!(tick(&mut m, 100_000).is_empty());
    assert_eq!(m.desired().active, S);
    let fx = m.step(ms(100_001), flip(P, None, false)).unwrap();
    assert_eq!(writes(&fx), [desired(P, [true, true])]);
    let ev = &events(&fx)[0];
    assert_eq!(
        ev.cause,
        Cause::ManualFlip {
            force: false,
            until: None
        }
    );
    assert_eq!(
        (ev.who.as_ref(), ev.why.as_deref()),
        (Some(&alice()), Some("maintenance"))
    );
    assert_eq!(m.intent().pin.map(|pin| pin.to), Some(P));
}

#[test]
fn the_gate_blocks_failback_until_it_passes() {
    let mut m = failed_over(
        Policy {
            gated: true,
            ..policy()
        },
        10,
    );
    let gate = |sent, ok| Input::Gate {
        sent: ms(sent),
        ok,
        reason: if ok {
            Reason::Passed
        } else {
            Reason::BadStatus(503)
        },
    };
    // Passed, but for a probe sent before the primary came up.
    assert!(m.step(ms(900), gate(900, true)).unwrap().is_empty());
    probes(&mut m, 1000, P, true, 3);
    assert_eq!(m.next_deadline(), Some(ms(2002)));
    let fx = tick(&mut m, 2002);
    assert!(writes(&fx).is_empty());
    assert_eq!(
        causes(&fx),
        [Cause::FailbackGated {
            gate: Some(Reason::Passed)
        }]
    );
    assert!(m.view().waiting_for_gate);
    assert_eq!(m.next_deadline(), None, "waits for a gate verdict, not the clock");
    assert!(tick(&mut m, 2500).is_empty(), "told once");
    assert!(m.step(ms(2600), gate(2590, false)).unwrap().is_empty());
    // An older verdict arriving late is stale.
    assert!(m.step(ms(2700), gate(2580, true)).unwrap().is_empty());
    let fx = m.step(ms(2800), gate(2790, true)).unwrap();
    assert_eq!(writes(&fx), [desired(P, [true, true])]);
    assert_eq!(causes(&fx), [Cause::Failback]);
}

#[test]
fn all_down_keep_then_recovery() {
    let mut m = failed_over(policy(), 10);
    let fx = probes(&mut m, 20, S, false, 2);
    assert_eq!(writes(&fx), [desired(S, [false, false])]);
    let ev = &events(&fx)[0];
    assert_eq!(
        ev.cause,
        Cause::AllDown {
            action: AllDown::Keep
        }
    );
    assert_eq!(
        (ev.from, ev.to, ev.detection),
        (S, S, Some(Duration::from_millis(1)))
    );
    // The primary comes back first: it takes the traffic at once, no delay.
    let fx = probes(&mut m, 100, P, true, 3);
    assert_eq!(writes(&fx), [desired(P, [true, false])]);
    let ev = &events(&fx)[0];
    assert_eq!((ev.from, ev.to, &ev.cause), (S, P, &Cause::Recovered { slot: P }));
}

#[test]
fn all_down_drop_and_pass() {
    for action in [AllDown::Drop, AllDown::Pass] {
        let mut m = failed_over(
            Policy {
                all_down: action,
                ..policy()
            },
            10,
        );
        let fx = probes(&mut m, 20, S, false, 2);
        let expected = Desired {
            all_down: Some(action),
            ..desired(S, [false, false])
        };
        assert_eq!(writes(&fx), [expected]);
        assert_eq!(causes(&fx), [Cause::AllDown { action }]);
        // The secondary comes back first: it keeps the traffic.
        let fx = probes(&mut m, 100, S, true, 3);
        assert_eq!(writes(&fx), [desired(S, [false, true])]);
        assert_eq!(causes(&fx), [Cause::Recovered { slot: S }]);
    }
}

#[test]
fn flip_to_a_down_backend_is_refused_unless_forced() {
    let mut m = failed_over(policy(), 10);
    let before = m.view();
    let err = m.step(ms(3211), flip(P, None, false)).unwrap_err();
    assert_eq!(
        err,
        Refused::BackendDown {
            slot: P,
            reason: Some(Reason::Timeout),
            down_for: Duration::from_millis(3200),
            held_for: None
        }
    );
    assert_eq!(
        err.to_string(),
        "primary is down (timeout since 3.2 s); use --force to pin it anyway"
    );
    assert_eq!(m.view(), before, "a refusal changes nothing");
    let fx = m.step(ms(3300), flip(P, None, true)).unwrap();
    assert_eq!(writes(&fx), [desired(P, [false, true])]);
    assert_eq!(
        causes(&fx),
        [Cause::ManualFlip {
            force: true,
            until: None
        }]
    );
    // Forced: the pin stays while its backend is down, even when all are down.
    let fx = probes(&mut m, 3400, S, false, 2);
    assert_eq!(writes(&fx), [desired(P, [false, false])]);
    assert_eq!(
        causes(&fx),
        [Cause::AllDown {
            action: AllDown::Keep
        }]
    );
    assert!(m.intent().pin.is_some());
}

#[test]
fn flip_to_a_drained_backend_or_into_the_past_is_refused() {
    let mut m = both_up(policy());
    m.step(ms(10), drain(S, true)).unwrap();
    let err = m.step(ms(20), flip(S, None, false)).unwrap_err();
    assert_eq!(err, Refused::Drained { slot: S });
    assert!(err.to_string().contains("--force"));
    let err = m.step(ms(30), flip(S, Some(25), true)).unwrap_err();
    assert_eq!(
        err,
        Refused::UntilPast {
            ago: Duration::from_millis(5)
        }
    );
    let fx = m.step(ms(40), flip(S, None, true)).unwrap();
    assert_eq!(writes(&fx).len(), 1);
    assert_eq!(m.desired().active, S);
}

#[test]
fn override_ends_at_its_deadline() {
    let mut m = both_up(policy());
    let fx = m.step(ms(2000), flip(S, Some(7000), false)).unwrap();
    assert_eq!(writes(&fx), [desired(S, [true, true])]);
    let ev = &events(&fx)[0];
    assert_eq!(
        ev.to_string(),
        "web: primary → secondary: manual flip for 5.0 s; by alice (uid 1000): maintenance"
    );
    assert_eq!(m.next_deadline(), Some(ms(7000)));
    assert!(tick(&mut m, 6999).is_empty());
    // Automatic control decides again: the primary has been up for over the delay.
    let fx = tick(&mut m, 7000);
    assert_eq!(writes(&fx), [desired(P, [true, true])]);
    assert_eq!(causes(&fx), [Cause::OverrideExpired]);
    assert_eq!(m.intent(), Intent::default());
    assert_eq!(m.next_deadline(), None);
}

#[test]
fn an_unforced_override_breaks_when_its_backend_goes_down() {
    let mut m = both_up(policy());
    m.step(ms(10), flip(S, None, false)).unwrap();
    let fx = probes(&mut m, 20, S, false, 2);
    assert_eq!(writes(&fx), [desired(P, [true, false])]);
    let ev = &events(&fx)[0];
    assert_eq!(
        ev.cause,
        Cause::OverrideBroken {
            slot: S,
            reason: Some(Reason::Timeout)
        }
    );
    assert_eq!(
        (ev.from, ev.to, ev.detection),
        (S, P, Some(Duration::from_millis(1)))
    );
    assert_eq!(m.intent().pin, None);
}

#[test]
fn a_forced_override_stays_when_its_backend_goes_down() {
    let mut m = both_up(policy());
    m.step(ms(10), flip(S, None, true)).unwrap();
    let fx = probes(&mut m, 20, S, false, 2);
    assert_eq!(writes(&fx), [desired(S, [true, false])]);
    assert!(matches!(
        causes(&fx)[..],
        [Cause::HealthChange {
            slot: S,
            up: false,
            ..
        }]
    ));
    assert!(m.intent().pin.is_some());
}

#[test]
fn auto_drops_the_override() {
    // Automatic failback: the long-up primary gets the traffic back at once.
    let mut m = both_up(policy());
    m.step(ms(2000), flip(S, None, false)).unwrap();
    let fx = m.step(ms(3000), Input::Auto { who: alice() }).unwrap();
    assert_eq!(writes(&fx), [desired(P, [true, true])]);
    assert_eq!(causes(&fx), [Cause::Auto]);
    assert_eq!(events(&fx)[0].who, Some(alice()));
    assert!(m.step(ms(3001), Input::Auto { who: alice() }).unwrap().is_empty());

    // Manual failback: traffic stays where it is.
    let mut m = both_up(Policy {
        failback: Failback::Manual,
        ..policy()
    });
    m.step(ms(2000), flip(S, None, false)).unwrap();
    let fx = m.step(ms(3000), Input::Auto { who: alice() }).unwrap();
    assert!(writes(&fx).is_empty());
    assert_eq!(causes(&fx), [Cause::Auto]);
    assert_eq!((m.desired().active, m.intent().pin), (S, None));
}

#[test]
fn draining_the_primary_moves_traffic_and_undrain_returns_it() {
    let mut m = both_up(policy());
    let fx = m.step(ms(2000), drain(P, true)).unwrap();
    let drained = Desired {
        drained: [true, false],
        ..desired(S, [true, true])
    };
    assert_eq!(writes(&fx), [drained]);
    let ev = &events(&fx)[0];
    assert_eq!((ev.from, ev.to, &ev.cause), (P, S, &Cause::Drain { slot: P }));
    assert_eq!(ev.who, Some(alice()));
    assert!(m.step(ms(2001), drain(P, true)).unwrap().is_empty(), "idempotent");
    assert_eq!(m.next_deadline(), None, "no failback to a drained primary");
    // Up for longer than the delay: back at once.
    let fx = m.step(ms(3000), drain(P, false)).unwrap();
    assert_eq!(writes(&fx), [desired(P, [true, true])]);
    assert_eq!(causes(&fx), [Cause::Undrain { slot: P }]);
}

#[test]
fn undrain_of_a_recently_up_primary_waits_for_the_delay() {
    let mut m = both_up(policy());
    m.step(ms(10), drain(P, true)).unwrap();
    probes(&mut m, 100, P, false, 2);
    probes(&mut m, 200, P, true, 3);
    let fx = m.step(ms(500), drain(P, false)).unwrap();
    assert_eq!(writes(&fx), [desired(S, [true, true])]);
    assert_eq!(causes(&fx), [Cause::Undrain { slot: P }]);
    assert_eq!(m.next_deadline(), Some(ms(1202)));
    assert_eq!(causes(&tick(&mut m, 1202)), [Cause::Failback]);
}

#[test]
fn draining_the_secondary() {
    // While standby: only the bit changes.
    let mut m = both_up(policy());
    let fx = m.step(ms(10), drain(S, true)).unwrap();
    let bits = Desired {
        drained: [false, true],
        ..desired(P, [true, true])
    };
    assert_eq!(writes(&fx), [bits]);
    assert_eq!(causes(&fx), [Cause::Drain { slot: S }]);
    // Drain is a preference, health a fact: a down primary still fails over to it.
    let fx = probes(&mut m, 20, P, false, 2);
    assert_eq!(
        writes(&fx),
        [Desired {
            active: S,
            up: [false, true],
            ..bits
        }]
    );
    assert_eq!(causes(&fx), [failover()]);
    let fx = m.step(ms(30), drain(S, false)).unwrap();
    assert_eq!(writes(&fx), [desired(S, [false, true])]);
    assert_eq!(causes(&fx), [Cause::Undrain { slot: S }]);

    // While active, even with manual failback: traffic goes to the eligible primary.
    let mut m = failed_over(
        Policy {
            failback: Failback::Manual,
            ..policy()
        },
        10,
    );
    probes(&mut m, 100, P, true, 3);
    let fx = m.step(ms(200), drain(S, true)).unwrap();
    assert_eq!(writes(&fx), [Desired { active: P, ..bits }]);
    let ev = &events(&fx)[0];
    assert_eq!((ev.from, ev.to, &ev.cause), (S, P, &Cause::Drain { slot: S }));
}

#[test]
fn draining_both_keeps_the_active_backend() {
    let mut m = both_up(policy());
    m.step(ms(10), drain(S, true)).unwrap();
    let fx = m.step(ms(20), drain(P, true)).unwrap();
    let both = Desired {
        drained: [true, true],
        ..desired(P, [true, true])
    };
    assert_eq!(writes(&fx), [both]);
    assert_eq!(causes(&fx), [Cause::Drain { slot: P }]);
}

#[test]
fn draining_the_pinned_backend_ends_an_unforced_pin() {
    let mut m = both_up(policy());
    m.step(ms(10), flip(S, None, false)).unwrap();
    let fx = m.step(ms(20), drain(S, true)).unwrap();
    assert_eq!(m.desired().active, P);
    assert_eq!(causes(&fx), [Cause::Drain { slot: S }]);
    assert_eq!(m.intent().pin, None);
    // A forced one stays.
    m.step(ms(30), flip(S, None, true)).unwrap();
    m.step(ms(40), drain(S, false)).unwrap();
    m.step(ms(50), drain(S, true)).unwrap();
    assert_eq!((m.desired().active, m.intent().pin.is_some()), (S, true));
}

#[test]
fn share_is_copied_into_the_desired_state() {
    let mut m = machine(Policy {
        share: 30,
        ..policy()
    });
    assert_eq!(m.desired().share, 30);
    let fx = m.set_policy(
        Policy {
            share: 150,
            ..policy()
        },
        ms(10),
    );
    assert_eq!(writes(&fx).len(), 1);
    assert_eq!(writes(&fx)[0].share, 100, "clamped to 100 %");
    assert_eq!(causes(&fx), [Cause::PolicyChange]);
    assert!(
        m.set_policy(
            Policy {
                share: 100,
                ..policy()
            },
            ms(20)
        )
        .is_empty()
    );
}

#[test]
fn set_policy_keeps_health_and_intent() {
    let mut m = failed_over(policy(), 10);
    m.step(ms(20), drain(S, true)).unwrap();
    assert!(m.set_policy(Policy { rise: 5, ..policy() }, ms(30)).is_empty());
    let view = m.view();
    assert_eq!(view.backends.map(|b| b.state), [State::Down, State::Up]);
    assert_eq!(view.intent.drained, [false, true]);
    // The new rise applies.
    assert!(probes(&mut m, 40, P, true, 4).is_empty());
    assert_eq!(writes(&probe(&mut m, 44, P, true)).len(), 1);
}

#[test]
fn flap_damping_holds_a_flapping_backend_down() {
    let flap = FlapDamping {
        window: Duration::from_secs(60),
        max_flaps: 1,
        hold: Duration::from_secs(2),
        max_hold: Duration::from_secs(10),
    };
    let mut m = both_up(Policy { flap, ..policy() });
    // First transition: tolerated.
    probes(&mut m, 10, S, false, 2);
    assert_eq!(writes(&probes(&mut m, 20, S, true, 3)).len(), 1);
    // Second: held down once it would rise.
    probes(&mut m, 30, S, false, 2);
    let fx = probes(&mut m, 40, S, true, 3);
    assert!(writes(&fx).is_empty());
    assert_eq!(
        causes(&fx),
        [Cause::FlapHold {
            slot: S,
            until: ms(2042),
            flaps: 2
        }]
    );
    assert_eq!(m.view().backends[1].held_until, Some(ms(2042)));
    assert!(
        probes(&mut m, 50, S, true, 3).is_empty(),
        "passes during the hold change nothing"
    );
    assert_eq!(m.next_deadline(), Some(ms(2042)));
    let err = m.step(ms(1042), flip(S, None, false)).unwrap_err();
    assert!(
        err.to_string().contains("held down for flapping, 1.0 s left"),
        "{err}"
    );
    let fx = tick(&mut m, 2042);
    assert_eq!(writes(&fx), [desired(P, [true, true])]);
    assert!(matches!(
        causes(&fx)[..],
        [Cause::HealthChange {
            slot: S,
            up: true,
            ..
        }]
    ));

    // Third: the hold doubles; a failure during it cancels it.
    probes(&mut m, 3000, S, false, 2);
    let fx = probes(&mut m, 3010, S, true, 3);
    assert!(matches!(causes(&fx)[..], [Cause::FlapHold { flaps: 3, until, .. }] if until == ms(7012)));
    assert!(probe(&mut m, 3020, S, false).is_empty());
    assert_eq!(m.next_deadline(), None);
    // Held again in the same down episode: the hold restarts, told once already.
    let fx = probes(&mut m, 3030, S, true, 3);
    assert!(causes(&fx).is_empty(), "{fx:?}");
    assert_eq!(m.view().backends[1].held_until, Some(ms(7032)));
    // A step after the hold's end ends it, whatever the input.
    let fx = probe(&mut m, 8000, P, true);
    assert_eq!(writes(&fx), [desired(P, [true, true])]);
}

#[test]
fn a_refused_flip_does_not_swallow_due_timers() {
    let flap = FlapDamping {
        max_flaps: 0,
        ..FlapDamping::default()
    };
    let mut m = both_up(Policy { flap, ..policy() });
    probes(&mut m, 10, S, false, 2);
    probes(&mut m, 20, S, true, 3);
    assert_eq!(m.next_deadline(), Some(ms(5022)));
    assert!(m.step(ms(6000), flip(S, Some(10), false)).is_err());
    assert_eq!(m.view().backends[1].held_until, Some(ms(5022)));
    assert_eq!(writes(&tick(&mut m, 6000)), [desired(P, [true, true])]);
}

#[test]
fn adopt_failed_over_does_not_flap() {
    let seed = Seed {
        desired: desired(S, [false, true]),
        intent: Intent::default(),
        flaps: Default::default(),
    };
    let mut m = Machine::adopt("web".into(), policy(), ms(0), seed.clone());
    assert_eq!(m.view().desired, seed.desired);
    assert_eq!(m.desired(), seed.desired);
    // First verdicts confirm what the data plane does: nothing to do.
    assert!(probes(&mut m, 1, P, false, 3).is_empty());
    assert!(probes(&mut m, 1, S, true, 3).is_empty());
    assert_eq!(m.next_deadline(), None);
    let fx = probes(&mut m, 100, P, true, 3);
    assert_eq!(writes(&fx), [desired(S, [true, true])]);
    assert!(matches!(
        causes(&fx)[..],
        [Cause::HealthChange {
            slot: P,
            up: true,
            ..
        }]
    ));
    assert_eq!(m.next_deadline(), Some(ms(1102)));
    assert_eq!(causes(&tick(&mut m, 1102)), [Cause::Failback]);

    // The primary the data plane had down must pass `rise` probes, as any
    // down backend (a restart is no shortcut back into traffic, issue 10,
    // fault 6); then no failback before the delay.
    let mut m = Machine::adopt("web".into(), policy(), ms(0), seed);
    assert!(probes(&mut m, 98, P, true, 2).is_empty());
    let fx = probe(&mut m, 100, P, true);
    assert_eq!(writes(&fx), [desired(S, [true, true])]);
    assert!(matches!(
        causes(&fx)[..],
        [Cause::HealthChange {
            slot: P,
            up: true,
            ..
        }]
    ));
    assert_eq!(m.next_deadline(), Some(ms(1100)));
    assert!(tick(&mut m, 1099).is_empty());
    assert_eq!(causes(&tick(&mut m, 1100)), [Cause::Failback]);
}

#[test]
fn adopt_failed_over_up_primary_waits_for_its_first_pass_and_delay() {
    let seed = Seed {
        desired: desired(S, [true, true]),
        intent: Intent::default(),
        flaps: Default::default(),
    };
    let mut m = Machine::adopt("web".into(), policy(), ms(0), seed);
    assert!(tick(&mut m, 5000).is_empty());
    assert!(probe(&mut m, 5001, P, true).is_empty());
    assert_eq!(m.next_deadline(), Some(ms(6001)));
}

#[test]
fn adopt_failed_over_and_drained_does_not_flap() {
    let drained = Desired {
        drained: [true, false],
        ..desired(S, [true, true])
    };
    let pin = Override {
        to: S,
        until: Some(ms(90_000)),
        force: false,
        who: alice(),
        why: None,
        at: ms(0),
    };
    let seed = Seed {
        desired: drained,
        intent: Intent {
            pin: Some(pin),
            drained: [true, false],
            fenced: [false; 2],
        },
        flaps: Default::default(),
    };
    let mut m = Machine::adopt("web".into(), policy(), ms(10_000), seed.clone());
    assert_eq!(m.intent(), seed.intent);
    assert!(probes(&mut m, 10_001, P, true, 3).is_empty());
    assert!(probes(&mut m, 10_001, S, true, 3).is_empty());
    assert_eq!(m.next_deadline(), Some(ms(90_000)));
    // The pin ends; the primary is still drained: traffic stays.
    let fx = tick(&mut m, 90_000);
    assert!(writes(&fx).is_empty());
    assert_eq!(causes(&fx), [Cause::OverrideExpired]);
    assert_eq!(m.next_deadline(), None);
}

#[test]
fn adopt_rewrites_drains_that_differ_from_the_intent_at_the_first_step() {
    let seed = Seed {
        desired: desired(P, [true, true]),
        intent: Intent {
            pin: None,
            drained: [false, true],
            fenced: [false; 2],
        },
        flaps: Default::default(),
    };
    let mut m = Machine::adopt("web".into(), policy(), ms(0), seed);
    let fx = probe(&mut m, 1, P, true);
    assert_eq!(writes(&fx)[0].drained, [false, true]);
    assert_eq!(causes(&fx), [Cause::Resync]);
}

#[test]
fn time_never_runs_backwards() {
    let mut m = failed_over(policy(), 10);
    probes(&mut m, 1000, P, true, 3);
    // An input stamped in the past is taken as happening now.
    assert!(tick(&mut m, 500).is_empty());
    assert_eq!(m.view().at, ms(1002));
}

#[test]
fn view_reports_health_and_reasons() {
    let mut m = failed_over(policy(), 10);
    let view = m.view();
    let p = &view.backends[0];
    assert_eq!(
        (p.state, p.since, p.usable, p.fails),
        (State::Down, ms(11), false, 2)
    );
    assert_eq!(
        (p.reason.clone(), p.last_ok),
        (Some(Reason::Timeout), Some(ms(1)))
    );
    assert_eq!(view.backends[1].state, State::Up);
    assert_eq!(view.failback_at, None);
    probes(&mut m, 100, P, true, 3);
    assert_eq!(m.view().failback_at, Some(ms(1102)));
    assert_eq!(m.name(), "web");
}

#[test]
fn an_unforced_override_breaking_into_all_down_reports_both() {
    let mut m = failed_over(policy(), 10);
    m.step(ms(20), flip(S, None, false)).unwrap();
    let fx = probes(&mut m, 30, S, false, 2);
    assert_eq!(writes(&fx), [desired(S, [false, false])]);
    assert!(matches!(
        causes(&fx)[..],
        [Cause::AllDown { .. }, Cause::OverrideBroken { slot: S, .. }]
    ));
    assert!(
        events(&fx)
            .iter()
            .all(|e| e.detection == Some(Duration::from_millis(1)))
    );
    assert_eq!(m.intent().pin, None);
}

#[test]
fn intent_and_events_survive_serialization() {
    let mut m = both_up(policy());
    let fx = m.step(ms(10), flip(S, Some(5000), false)).unwrap();
    m.step(ms(20), drain(P, true)).unwrap();
    let intent = m.intent();
    let text = toml::to_string(&intent).unwrap();
    assert!(text.contains("[override]"), "{text}");
    assert_eq!(toml::from_str::<Intent>(&text).unwrap(), intent);
    let ev = events(&fx).remove(0);
    assert_eq!(
        toml::from_str::<Event>(&toml::to_string(&ev).unwrap()).unwrap(),
        ev
    );
    let view = m.view();
    assert_eq!(
        toml::from_str::<View>(&toml::to_string(&view).unwrap()).unwrap(),
        view
    );
}

/// Issue 10, fault 3: a reload that restarts a service (one address
/// changed) keeps the health and intent of the backends that stayed.
#[test]
fn a_restart_by_reload_keeps_health_and_intent_of_unchanged_backends() {
    let mut m = machine(policy());
    probes(&mut m, 0, P, true, 1);
    probes(&mut m, 0, S, true, 1);
    m.step(ms(10), drain(P, true)).unwrap();
    // The primary dies too.
    probes(&mut m, 20, P, false, 2);
    assert_eq!(m.view().backends[0].state, State::Down);
    // The secondary's address changes: the primary keeps down and drained,
    // the new secondary starts unknown; traffic stays off the primary.
    let n = m.carry_over(policy(), ms(30), [Some(P), None]);
    let v = n.view();
    assert_eq!(v.backends[0].state, State::Down);
    assert_eq!(v.backends[1].state, State::Unknown);
    assert!(v.desired.drained[0] && !v.desired.drained[1]);
    assert_eq!(v.desired.active, S);
    assert!(!v.desired.up[0], "a dead primary is not counted up");
    // An override follows its backend; one naming a changed backend goes.
    let mut m = machine(policy());
    probes(&mut m, 0, P, true, 1);
    probes(&mut m, 0, S, true, 1);
    m.step(ms(5), flip(S, None, false)).unwrap();
    let kept = m.carry_over(policy(), ms(6), [Some(P), Some(S)]);
    assert_eq!(kept.view().intent.pin.map(|o| o.to), Some(S));
    assert_eq!(kept.view().desired.active, S);
    let swapped = m.carry_over(policy(), ms(6), [Some(S), Some(P)]);
    assert_eq!(swapped.view().intent.pin.map(|o| o.to), Some(P));
    let gone = m.carry_over(policy(), ms(6), [Some(P), None]);
    assert_eq!(gone.view().intent.pin, None);
    assert_eq!(gone.view().desired.active, P);
}

/// Issue 10, fault 6: flap history survives a restart. A primary that
/// flapped before the daemon restarted is held down after its `rise` passes,
/// as it would have been without the restart.
#[test]
fn an_adopted_flapping_backend_is_held_as_before_the_restart() {
    let flaps: Vec<Nanos> = (1..=4).map(|i| ms(i * 1000)).collect();
    let seed = Seed {
        desired: desired(S, [false, true]),
        intent: Intent::default(),
        flaps: [flaps, Vec::new()],
    };
    let mut m = Machine::adopt("web".into(), policy(), ms(5000), seed);
    assert_eq!(m.flaps()[0].len(), 4);
    let fx = probes(&mut m, 5001, P, true, 3);
    assert!(writes(&fx).is_empty(), "{fx:?}");
    assert!(m.view().backends[0].held_until.is_some());
    // No failback while held.
    assert!(tick(&mut m, 7000).is_empty());
    assert_eq!(m.view().desired.active, S);
}

#[test]
fn a_backend_flapping_while_held_is_reported_held_once() {
    let flap = FlapDamping {
        window: Duration::from_secs(60),
        max_flaps: 1,
        hold: Duration::from_secs(2),
        max_hold: Duration::from_secs(10),
    };
    let mut m = both_up(Policy { flap, ..policy() });
    probes(&mut m, 10, S, false, 2);
    probes(&mut m, 20, S, true, 3);
    probes(&mut m, 30, S, false, 2);
    let fx = probes(&mut m, 40, S, true, 3);
    assert_eq!(causes(&fx).len(), 1, "held: told once");
    // It fails during the hold and rises again, over and over: still held,
    // still one down episode, nothing more to tell.
    for t in [100, 200, 300] {
        probes(&mut m, t, S, false, 1);
        let fx = probes(&mut m, t + 10, S, true, 3);
        assert!(fx.is_empty(), "{fx:?}");
        assert!(m.view().backends[1].held_until.is_some());
    }
    assert!(m.next_deadline().is_some(), "the hold still ends by itself");
}

#[test]
fn servable_waits_for_a_verdict_and_ends_only_when_all_down_drops_or_passes() {
    // Fresh: nothing probed yet, nothing to announce.
    let mut m = machine(Policy {
        all_down: AllDown::Drop,
        ..policy()
    });
    assert_eq!(m.servable(), None);
    // One probe is no verdict yet (fall = 2).
    probe(&mut m, 1, P, false);
    assert_eq!(m.servable(), None);
    // A verdict, even a failing one: the secondary (unknown) counts as up.
    probe(&mut m, 2, P, false);
    assert_eq!(m.servable(), Some(true), "the secondary serves");
    probes(&mut m, 10, S, false, 2);
    assert_eq!(m.servable(), Some(false), "both down, all_down = drop");
    probes(&mut m, 20, S, true, 3);
    assert_eq!(m.servable(), Some(true));

    // all_down = keep forwards to a down backend: still served.
    let mut m = both_up(policy());
    probes(&mut m, 100, P, false, 2);
    probes(&mut m, 110, S, false, 2);
    assert!(m.desired().up == [false, false]);
    assert_eq!(m.servable(), Some(true));

    // Adopted: unknown with the pinned up bits, undecided until a verdict;
    // adopted all down with drop: not servable at once.
    let seed = |up: [bool; 2], all_down| Seed {
        desired: Desired {
            active: P,
            up,
            drained: [false; 2],
            all_down,
            share: 0,
        },
        intent: Intent::default(),
        flaps: Default::default(),
    };
    let pol = Policy {
        all_down: AllDown::Pass,
        ..policy()
    };
    let a = Machine::adopt("web".into(), pol.clone(), ms(0), seed([true, true], None));
    assert_eq!(a.servable(), None);
    let a = Machine::adopt(
        "web".into(),
        pol,
        ms(0),
        seed([false, false], Some(AllDown::Pass)),
    );
    assert_eq!(a.servable(), Some(false));
}

// ---- promotion and fencing ----

fn promoting(fence: bool, on_failure: PromoteFailure) -> Policy {
    Policy {
        promote: Some(on_failure),
        fence,
        ..policy()
    }
}

/// The promotions started by these effects: (number, its event's cause).
fn promotions(effects: &[Effect]) -> Vec<(u64, Cause)> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Promote { seq, event } => Some((*seq, event.cause.clone())),
            _ => None,
        })
        .collect()
}

fn promoted(m: &mut Machine, at: u64, seq: u64, ok: bool) -> Vec<Effect> {
    let input = Input::Promoted {
        seq,
        ok,
        took: Duration::from_millis(200),
        detail: if ok { "exit status 0" } else { "exit status 1" }.into(),
    };
    m.step(ms(at), input).unwrap()
}

#[test]
fn traffic_moves_to_the_secondary_only_once_it_is_promoted() {
    let mut m = both_up(promoting(false, PromoteFailure::Stay));
    let fx = probes(&mut m, 10, P, false, 2);
    // The primary is down; traffic waits (keep: it still goes where it was).
    assert_eq!(writes(&fx), vec![desired(P, [false, true])]);
    let started = promotions(&fx);
    assert_eq!(started.len(), 1, "{fx:?}");
    let (seq, cause) = &started[0];
    assert!(
        matches!(cause, Cause::Promoting { slot: S, on } if matches!(**on, Cause::Failover { slot: P, .. })),
        "{cause:?}"
    );
    assert_eq!(
        m.view()
            .promotion
            .as_ref()
            .map(|p| matches!(p, Promotion::Running { slot: S, .. })),
        Some(true)
    );
    // More verdicts meanwhile start no second promotion.
    assert!(promotions(&probes(&mut m, 12, P, false, 3)).is_empty());
    let fx = promoted(&mut m, 300, *seq, true);
    assert_eq!(writes(&fx), vec![desired(S, [false, true])]);
    assert_eq!(
        causes(&fx),
        vec![Cause::Promoted {
            slot: S,
            took: Duration::from_millis(200),
            failed: None
        }]
    );
    assert_eq!(events(&fx)[0].from, P);
    assert_eq!(events(&fx)[0].to, S);
}

#[test]
fn an_answer_to_another_promotion_is_ignored() {
    let mut m = both_up(promoting(false, PromoteFailure::Stay));
    let fx = probes(&mut m, 10, P, false, 2);
    let (seq, _) = promotions(&fx)[0].clone();
    assert!(promoted(&mut m, 20, seq + 1, true).is_empty());
    assert_eq!(m.desired().active, P);
}

#[test]
fn a_failed_promotion_keeps_traffic_and_runs_again() {
    let mut m = both_up(promoting(false, PromoteFailure::Stay));
    let fx = probes(&mut m, 10, P, false, 2);
    let (seq, _) = promotions(&fx)[0].clone();
    let fx = promoted(&mut m, 100, seq, false);
    assert!(writes(&fx).is_empty());
    assert!(
        matches!(causes(&fx)[..], [Cause::PromoteFailed { slot: S, .. }]),
        "{fx:?}"
    );
    let retry = 100 + PROMOTE_RETRY.as_millis() as u64;
    assert_eq!(m.next_deadline(), Some(ms(retry)));
    assert!(promotions(&tick(&mut m, retry - 1)).is_empty());
    let fx = tick(&mut m, retry);
    let again = promotions(&fx);
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].0, seq + 1);
    let fx = promoted(&mut m, retry + 50, seq + 1, true);
    assert_eq!(writes(&fx), vec![desired(S, [false, true])]);
}

#[test]
fn a_failed_promotion_moves_traffic_anyway_when_told_to() {
    let mut m = both_up(promoting(false, PromoteFailure::Move));
    let fx = probes(&mut m, 10, P, false, 2);
    let (seq, _) = promotions(&fx)[0].clone();
    let fx = promoted(&mut m, 100, seq, false);
    assert_eq!(writes(&fx), vec![desired(S, [false, true])]);
    assert!(
        matches!(&causes(&fx)[..], [Cause::Promoted { slot: S, failed: Some(d), .. }] if d == "exit status 1"),
        "{fx:?}"
    );
}

#[test]
fn drop_applies_while_a_promotion_holds_traffic_on_a_dead_primary() {
    let mut m = both_up(Policy {
        all_down: AllDown::Drop,
        ..promoting(false, PromoteFailure::Stay)
    });
    let fx = probes(&mut m, 10, P, false, 2);
    assert_eq!(
        writes(&fx),
        vec![Desired {
            all_down: Some(AllDown::Drop),
            ..desired(P, [false, true])
        }]
    );
    // Only a gateway that cannot serve at all stops announcing.
    assert_eq!(m.servable(), Some(true));
}

#[test]
fn a_started_promotion_finishes_even_when_the_primary_recovers() {
    let mut m = both_up(Policy {
        rise: 1,
        ..promoting(false, PromoteFailure::Stay)
    });
    let fx = probes(&mut m, 10, P, false, 2);
    let (seq, _) = promotions(&fx)[0].clone();
    // Back before the hook answers: traffic stays on the primary.
    let fx = probe(&mut m, 50, P, true);
    assert_eq!(writes(&fx), vec![desired(P, [true, true])]);
    let fx = promoted(&mut m, 100, seq, true);
    assert!(writes(&fx).is_empty());
    assert!(
        matches!(causes(&fx)[..], [Cause::Promoted { slot: S, .. }]),
        "{fx:?}"
    );
    assert_eq!(m.desired().active, P);
    // The next failure promotes again: the hook must be idempotent.
    let fx = probes(&mut m, 200, P, false, 2);
    assert_eq!(promotions(&fx).len(), 1);
}

#[test]
fn a_fenced_primary_takes_no_traffic_until_unfenced() {
    let mut m = both_up(Policy {
        fence: true,
        failback_delay: Duration::ZERO,
        ..policy()
    });
    let fx = probes(&mut m, 10, P, false, 2);
    assert_eq!(writes(&fx), vec![desired(S, [false, true])]);
    assert!(causes(&fx).contains(&Cause::Fenced { slot: P }), "{fx:?}");
    assert_eq!(m.intent().fenced, [true, false]);
    // It comes back: no failback, its up bit stays clear.
    let fx = probes(&mut m, 100, P, true, 5);
    assert!(writes(&fx).is_empty(), "{fx:?}");
    assert_eq!(m.desired(), desired(S, [false, true]));
    assert_eq!(m.view().backends[0].state, State::Up);
    // Even a forced flip does not lift the fence.
    assert_eq!(
        m.step(ms(200), flip(P, None, true)),
        Err(Refused::Fenced { slot: P })
    );
    let fx = m
        .step(
            ms(300),
            Input::Unfence {
                slot: P,
                who: alice(),
                why: None,
            },
        )
        .unwrap();
    // Unfenced and up: automatic failback (delay 0) at once.
    assert_eq!(writes(&fx), vec![desired(P, [true, true])]);
    assert_eq!(events(&fx)[0].cause, Cause::Unfenced { slot: P });
    assert_eq!(m.intent().fenced, [false, false]);
}

#[test]
fn the_fence_is_set_at_the_decision_and_keep_drops_meanwhile() {
    let mut m = both_up(promoting(true, PromoteFailure::Stay));
    let fx = probes(&mut m, 10, P, false, 2);
    // Fenced before the promotion: not even a primary that comes back may
    // take writes while the standby is being promoted.
    assert_eq!(
        writes(&fx),
        vec![Desired {
            all_down: Some(AllDown::Drop),
            ..desired(P, [false, true])
        }]
    );
    let c = causes(&fx);
    let fenced = c.iter().position(|c| *c == Cause::Fenced { slot: P });
    let promoting = c.iter().position(|c| matches!(c, Cause::Promoting { .. }));
    assert!(fenced.is_some() && promoting.is_some(), "{c:?}");
    let (seq, _) = promotions(&fx)[0].clone();
    let fx = promoted(&mut m, 400, seq, true);
    assert_eq!(writes(&fx), vec![desired(S, [false, true])]);
}

#[test]
fn draining_a_fenced_primary_fences_it_and_promotes_first() {
    let mut m = both_up(promoting(true, PromoteFailure::Stay));
    let fx = m.step(ms(10), drain(P, true)).unwrap();
    let started = promotions(&fx);
    assert_eq!(started.len(), 1, "{fx:?}");
    assert!(
        matches!(&started[0].1, Cause::Promoting { slot: S, on } if **on == Cause::Drain { slot: P }),
        "{started:?}"
    );
    assert_eq!(m.intent().fenced, [true, false]);
    // The promotion's event names the operator who drained.
    let ev = events(&fx);
    let prom = ev
        .iter()
        .find(|e| matches!(e.cause, Cause::Promoting { .. }))
        .unwrap();
    assert_eq!(prom.who, Some(alice()));
}

#[test]
fn a_fence_survives_a_restart_and_an_address_swap() {
    let mut m = both_up(Policy {
        fence: true,
        ..policy()
    });
    probes(&mut m, 10, P, false, 2);
    let seed = Seed {
        desired: m.desired(),
        intent: m.intent(),
        flaps: m.flaps(),
    };
    let mut adopted = Machine::adopt(
        "web".into(),
        Policy {
            fence: true,
            ..policy()
        },
        ms(1000),
        seed,
    );
    let fx = probes(&mut adopted, 1001, P, true, 5);
    assert!(writes(&fx).is_empty(), "{fx:?}");
    assert_eq!(adopted.desired().active, S);
    // The roles swap by a reload that swaps the addresses: the promoted
    // standby is the primary now, the old primary (fenced) the secondary.
    let swapped = adopted.carry_over(
        Policy {
            fence: true,
            ..policy()
        },
        ms(2000),
        [Some(S), Some(P)],
    );
    assert_eq!(swapped.intent().fenced, [false, true]);
    assert_eq!(swapped.desired().active, P);
    assert_eq!(swapped.desired().up, [true, false]);
}

#[test]
fn a_backend_down_for_another_member_of_the_group_counts_down_here() {
    let mut m = both_up(policy());
    let fx = m
        .step(
            ms(10),
            Input::Group {
                slot: P,
                by: Some("dns-udp".into()),
            },
        )
        .unwrap();
    assert_eq!(writes(&fx), vec![desired(S, [false, true])]);
    assert_eq!(
        causes(&fx),
        vec![Cause::Failover {
            slot: P,
            reason: Some(Reason::Group("dns-udp".into()))
        }]
    );
    // Its own verdicts still pass: what the group follows is not passed on,
    // and no failback happens while the group counts it down.
    assert!(!m.own_down(P));
    assert!(writes(&probes(&mut m, 11, P, true, 3)).is_empty());
    assert!(writes(&tick(&mut m, 5000)).is_empty());
    assert!(m.step(ms(5001), flip(P, None, false)).is_err());
    // Up again for the group: failback counts its delay from then, like
    // the member whose own probes saw it come back.
    let fx = m.step(ms(6000), Input::Group { slot: P, by: None }).unwrap();
    assert_eq!(writes(&fx), vec![desired(S, [true, true])]);
    assert!(writes(&tick(&mut m, 6000 + 999)).is_empty());
    assert_eq!(writes(&tick(&mut m, 6000 + 1000)), vec![desired(P, [true, true])]);
}
