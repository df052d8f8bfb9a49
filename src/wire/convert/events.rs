//! `palyra.node.v1.Event`: a committed event on the QUIC data plane, both ways (the node sends
//! them; the CLI and tests read them back).

use std::time::UNIX_EPOCH;

use crate::events::Event;
use crate::wire::pb::node::v1 as pb;

/// Converts a committed event to its wire form.
pub fn event_to_pb(event: &Event) -> pb::Event {
    let since_epoch = event.at.duration_since(UNIX_EPOCH).unwrap_or_default();
    pb::Event {
        sequence: event.sequence,
        at: Some(prost_types::Timestamp {
            seconds: i64::try_from(since_epoch.as_secs()).unwrap_or(i64::MAX),
            nanos: i32::try_from(since_epoch.subsec_nanos()).unwrap_or(0),
        }),
        kind: event.kind.clone(),
        subject: event.subject.clone(),
        attributes: event.attributes.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
    }
}

/// Converts a received event to the domain type.
pub fn event_from_pb(event: pb::Event) -> Event {
    // Untrusted: a peer may send any numbers; out-of-range times become the epoch.
    let at = super::system_time(event.at);
    Event {
        sequence: event.sequence,
        at,
        kind: event.kind,
        subject: event.subject,
        attributes: event.attributes.into_iter().collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_event_times_do_not_panic() {
        for (seconds, nanos) in
            [(i64::MAX, 999_999_999), (i64::MAX, i32::MAX), (-1, -1), (0, i32::MIN), (i64::MIN, 5)]
        {
            let event =
                pb::Event { at: Some(prost_types::Timestamp { seconds, nanos }), ..Default::default() };
            let _ = event_from_pb(event);
        }
        let now = std::time::SystemTime::now();
        let round = event_from_pb(event_to_pb(&Event {
            sequence: 1,
            at: now,
            kind: "k".into(),
            subject: "s".into(),
            attributes: Default::default(),
        }));
        assert_eq!(round.at, now);
    }
}
