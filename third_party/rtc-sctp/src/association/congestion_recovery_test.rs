//! Peermail's regression tests for its two changes to this crate (see PATCHES.md at the
//! crate's root): after a T3-rtx timeout, slow start must grow the congestion window again
//! even when every byte the application wrote is already in flight (no new data pending),
//! and the timeout must end any fast recovery in progress.
//!
//! The scenario is the one that stalled a native peer's 5 MiB transfer to Chromium: the
//! whole window was sent, its tail was lost (the receiver's socket buffer overflowed), and
//! T3-rtx fired with nothing new to send. The receiver, seeing no gap, acknowledges each
//! round of retransmissions only after its delayed-ack timer (200 ms in Chromium).

use super::*;

/// Chunks written and sent at once, all of which are then lost.
const WINDOW: u32 = 256;
/// A receiver's delayed acknowledgement: one SACK per round of retransmissions.
const DELAYED_ACK: Duration = Duration::from_millis(200);

/// An association that has sent [`WINDOW`] reliable chunks of 1 KiB, everything it was
/// given: nothing is pending, the whole window is in flight.
fn all_in_flight(now: Instant) -> Result<Association> {
    let mut a = timed_test_association();
    a.my_next_tsn = 100;
    a.cumulative_tsn_ack_point = 99;
    a.advanced_peer_tsn_ack_point = 99;
    a.cwnd = WINDOW * a.mtu;
    a.ssthresh = a.cwnd;
    a.rwnd = 4 * a.cwnd;
    let ppi = PayloadProtocolIdentifier::Binary;
    let mut stream = a.open_stream(1, ppi)?;
    for _ in 0..WINDOW {
        stream.write_sctp(now, &Bytes::from(vec![1; 1024]), ppi)?;
    }
    assert_eq!(WINDOW as usize, data_chunks(&a.gather_outbound(now).0));
    assert!(a.pending_queue.is_empty());
    Ok(a)
}

/// Runs T3-rtx recovery of the lost window: each round the association sends what its
/// window allows and the receiver acknowledges all of it, cumulatively, one delayed-ack
/// later. Returns the number of rounds until everything is acknowledged.
fn rounds_to_recover(mut a: Association, now: Instant) -> Result<usize> {
    let mut at = now + Duration::from_secs(1);
    a.handle_timeout(at);
    assert!(
        !a.in_fast_recovery,
        "a T3-rtx timeout must end fast recovery"
    );
    let mut rounds = 0;
    while !a.inflight_queue.is_empty() {
        let sent = transmitted_data(&a.gather_outbound(at).0);
        let highest = sent
            .iter()
            .map(|c| c.tsn)
            .max()
            .expect("the association stopped retransmitting with data unacknowledged");
        at += DELAYED_ACK;
        a.handle_sack(
            &ChunkSelectiveAck {
                cumulative_tsn_ack: highest,
                advertised_receiver_window_credit: 4 * WINDOW * a.mtu,
                ..Default::default()
            },
            at,
        )?;
        rounds += 1;
        assert!(
            rounds <= WINDOW as usize,
            "more rounds than chunks: {rounds}"
        );
    }
    Ok(rounds)
}

#[test]
fn t3_recovery_grows_the_window_when_nothing_new_is_pending() -> Result<()> {
    let now = Instant::now();
    let rounds = rounds_to_recover(all_in_flight(now)?, now)?;
    // Slow start from one MTU doubles the window each round: about log2(256) rounds. With
    // the window stuck at one MTU it took one round (200 ms) per chunk: 256 rounds.
    assert!(
        rounds <= 12,
        "{WINDOW} lost chunks took {rounds} delayed-ack rounds to recover"
    );
    Ok(())
}

#[test]
fn t3_during_fast_recovery_ends_it_and_grows_the_window() -> Result<()> {
    let now = Instant::now();
    let mut a = all_in_flight(now)?;
    // Fast recovery entered for an earlier loss, its exit point at the end of the window.
    a.in_fast_recovery = true;
    a.fast_recover_exit_point = a.my_next_tsn.wrapping_sub(1);
    let rounds = rounds_to_recover(a, now)?;
    assert!(
        rounds <= 12,
        "{WINDOW} lost chunks took {rounds} delayed-ack rounds to recover"
    );
    Ok(())
}
