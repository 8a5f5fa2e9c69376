use super::*;

const S: Duration = Duration::from_secs(1);

fn rates() -> Rates {
    Rates::default()
}

/// Sends the due echo at `at` and answers or loses it a moment later; the change.
fn echo(h: &mut Health, at: Instant, answer: bool) -> Option<Change> {
    assert!(h.due(Kind::Echo, at), "no echo due at +{:?}", at);
    h.sent(Kind::Echo, 1, at);
    if answer {
        h.answered(Kind::Echo, at + Duration::from_millis(2), rates())
    } else {
        assert_eq!(h.overdue(at + TIMEOUT), vec![Kind::Echo]);
        h.lost_one(Kind::Echo, at + TIMEOUT, rates())
    }
}

#[test]
fn a_healthy_peer_is_probed_at_the_echo_rate_and_reads_ok() {
    let t0 = Instant::now();
    let mut h = Health::new(t0);
    assert_eq!(h.reachable, None);
    assert_eq!(
        echo(&mut h, t0, true),
        None,
        "the first answer is no change"
    );
    assert_eq!(h.reachable, Some(true));
    assert_eq!(h.rtt, Some(Duration::from_millis(2)));
    // Not again before the period, and the MTU probe is due at once.
    assert!(!h.due(Kind::Echo, t0 + 4 * S));
    assert!(h.due(Kind::Echo, t0 + 5 * S));
    assert!(h.due(Kind::Mtu, t0 + S));
    assert_eq!(h.lost(), (0, 1));
}

#[test]
fn the_window_holds_the_last_ten_and_reads_lost_n_of_ten() {
    let t0 = Instant::now();
    let mut h = Health::new(t0);
    let mut t = t0;
    for i in 0..12 {
        // Two lost in a row at most: noise, never unreachable.
        let answer = i % 3 != 0;
        assert_eq!(echo(&mut h, t, answer), None);
        t += if answer { rates().echo } else { RETRY };
    }
    assert_eq!(
        h.lost(),
        (3, 10),
        "the last ten of 12 probes, 4 lost of all"
    );
    assert_eq!((h.sent_total, h.lost_total), (12, 4));
    assert_eq!(h.reachable, Some(true));
}

#[test]
fn three_lost_in_a_row_is_unreachable_told_once_and_back_is_told_with_how_long() {
    let t0 = Instant::now();
    let mut h = Health::new(t0);
    echo(&mut h, t0, true);
    // The outage begins after the answered probe: the next one goes a period later,
    // the retries a second apart.
    let first = t0 + rates().echo;
    assert_eq!(echo(&mut h, first, false), None);
    assert!(!h.due(Kind::Echo, first + TIMEOUT - Duration::from_millis(1)));
    assert_eq!(echo(&mut h, first + RETRY, false), None);
    assert_eq!(
        echo(&mut h, first + 2 * RETRY, false),
        Some(Change::Unreachable)
    );
    assert_eq!(h.reachable, Some(false));
    assert_eq!(
        h.unreachable_since,
        Some(first),
        "since the first lost probe"
    );
    // Told within a period and three retries of the outage.
    assert!(first + 2 * RETRY + TIMEOUT - t0 <= Duration::from_secs(9));
    // Still unreachable: probed every UNREACHABLE_EVERY, no new change.
    let mut t = first + 2 * RETRY + UNREACHABLE_EVERY;
    for _ in 0..3 {
        assert_eq!(echo(&mut h, t, false), None);
        t += UNREACHABLE_EVERY;
    }
    assert_eq!(
        echo(&mut h, t, true),
        Some(Change::Back(t + Duration::from_millis(2) - first))
    );
    assert_eq!((h.reachable, h.unreachable_since), (Some(true), None));
}

#[test]
fn mtu_fails_after_two_lost_big_probes_while_small_ones_cross_and_clears_on_one() {
    let t0 = Instant::now();
    let mut h = Health::new(t0);
    echo(&mut h, t0, true);
    let t = t0 + Duration::from_millis(10);
    assert!(h.due(Kind::Mtu, t));
    h.sent(Kind::Mtu, 2, t);
    assert!(!h.due(Kind::Mtu, t), "one outstanding at a time");
    assert!(h.waits_for(Kind::Mtu, 2) && !h.waits_for(Kind::Mtu, 3));
    assert_eq!(
        h.lost_one(Kind::Mtu, t + TIMEOUT, rates()),
        None,
        "one loss is noise"
    );
    let t2 = t + TIMEOUT + MTU_RETRY;
    assert!(h.due(Kind::Mtu, t2));
    h.sent(Kind::Mtu, 3, t2);
    assert_eq!(
        h.lost_one(Kind::Mtu, t2 + TIMEOUT, rates()),
        Some(Change::MtuFails)
    );
    assert_eq!(h.mtu_ok, Some(false));
    // Checked again a period later, and not told twice.
    assert!(!h.due(Kind::Mtu, t2 + rates().mtu - S));
    let t3 = t2 + rates().mtu;
    h.sent(Kind::Mtu, 4, t3);
    assert_eq!(h.lost_one(Kind::Mtu, t3 + TIMEOUT, rates()), None);
    let t4 = t3 + TIMEOUT + MTU_RETRY;
    h.sent(Kind::Mtu, 5, t4);
    assert_eq!(h.lost_one(Kind::Mtu, t4 + TIMEOUT, rates()), None);
    let t5 = t4 + rates().mtu;
    h.sent(Kind::Mtu, 6, t5);
    assert_eq!(
        h.answered(Kind::Mtu, t5 + S / 100, rates()),
        Some(Change::MtuOk)
    );
    assert_eq!(h.mtu_ok, Some(true));
    // Echo probes were never counted for MTU ones.
    assert_eq!(h.sent_total, 1);
}

#[test]
fn an_unreachable_peer_is_no_mtu_failure_and_is_mtu_probed_again_once_back() {
    let t0 = Instant::now();
    let mut h = Health::new(t0);
    echo(&mut h, t0, true);
    h.sent(Kind::Mtu, 9, t0 + S);
    h.answered(Kind::Mtu, t0 + S, rates());
    let mut t = t0 + rates().echo;
    for _ in 0..LOST_IN_A_ROW {
        echo(&mut h, t, false);
        t += RETRY;
    }
    assert_eq!((h.reachable, h.mtu_ok), (Some(false), None));
    assert!(
        !h.due(Kind::Mtu, t + rates().mtu),
        "no MTU probe while unreachable"
    );
    let back = t + S;
    assert!(matches!(echo(&mut h, back, true), Some(Change::Back(_))));
    assert!(h.due(Kind::Mtu, back + S), "MTU probed at once when back");
}

#[test]
fn wake_at_is_the_next_due_probe_or_timeout() {
    let t0 = Instant::now();
    let mut h = Health::new(t0 + 3 * S);
    assert_eq!(
        h.wake_at(),
        t0 + 3 * S,
        "an unknown peer: no MTU probe scheduled"
    );
    h.sent(Kind::Echo, 1, t0 + 3 * S);
    assert_eq!(
        h.wake_at(),
        t0 + 4 * S,
        "its timeout, not its due time again"
    );
    h.answered(Kind::Echo, t0 + 3 * S, rates());
    assert_eq!(h.wake_at(), t0 + 3 * S, "the MTU probe, due at once");
    h.sent(Kind::Mtu, 2, t0 + 3 * S);
    assert_eq!(h.wake_at(), t0 + 3 * S + TIMEOUT);
}

/// The cost the docs state: 100 peers, one family, VXLAN over IPv4, the default rates.
/// An echo is 20 (IP) + 8 (ICMP) + 8 (payload) = 36 bytes; the MTU probe is the pod
/// MTU, 1450 on a 1500-byte underlay; VXLAN adds 50 and the outer Ethernet header 14.
#[test]
fn probes_of_100_peers_cost_under_10_kb_per_second() {
    let bps = bytes_per_second(100, rates(), 36, 1450, 64);
    // Echo: 100 * 2 * 100 B / 5 s = 4000 B/s; MTU: 100 * 2 * 1514 B / 60 s = 5047 B/s.
    assert!((bps - 9046.7).abs() < 1.0, "{bps}");
    assert!(bps < 10_000.0);
}

#[test]
fn losses_before_the_first_answer_are_no_verdict_unless_three_in_a_row() {
    let t0 = Instant::now();
    let mut h = Health::new(t0);
    // A peer that just joined answers once it routes back to this node.
    assert_eq!(echo(&mut h, t0, false), None);
    assert_eq!(echo(&mut h, t0 + RETRY, true), None);
    assert_eq!((h.reachable, h.lost()), (Some(true), (0, 1)));
    assert_eq!(h.lost_total, 1, "the metric counts every loss");
    // One that never answers is unreachable, its window saying why.
    let mut h = Health::new(t0);
    for i in 0..LOST_IN_A_ROW {
        let c = echo(&mut h, t0 + RETRY * i, false);
        assert_eq!(c.is_some(), i + 1 == LOST_IN_A_ROW);
    }
    assert_eq!((h.reachable, h.lost()), (Some(false), (3, 3)));
}

#[test]
fn many_peers_slow_the_probes_to_a_bounded_rate() {
    let r = Rates::default();
    assert_eq!(r.for_paths(100), r, "100 paths: the default rates");
    let big = r.for_paths(5000);
    assert_eq!(big.echo, Duration::from_secs(250));
    assert_eq!(big.mtu, Duration::from_secs(3000));
    assert!(5000.0 / big.echo.as_secs_f64() <= f64::from(MAX_ECHO_PER_SEC) + 1e-9);
}
