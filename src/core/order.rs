//! Ordering of a producer's group streams.
//!
//! Video travels as one stream per group of pictures, and a WebTransport stack hands over
//! incoming streams in the order their headers completed, not always the order they were
//! opened. QUIC stream ids do grow in opening order, so a reader can put groups back in
//! order: a new stream waits for the producer's previous (lower id) stream to end before
//! it is read. A stream that turns up after a newer one is already being read is late: it
//! waits for nothing, and whatever it holds that is older than what went out is dropped by
//! the sequence check downstream.

use std::collections::HashMap;

use crate::wire::ProducerId;

/// Whose groups a stream carries: a producer, and its simulcast layer (0 without layers).
/// Each layer of a simulcast producer is its own sequence of groups.
pub type GroupKey = (ProducerId, u8);

/// Tracks, per producer (and layer), the newest stream seen and a handle the next one waits on (in
/// practice a receiver that completes when that stream has been read).
#[derive(Debug)]
pub struct GroupOrder<H> {
    newest: HashMap<GroupKey, (u64, H)>,
}

impl<H> Default for GroupOrder<H> {
    fn default() -> Self {
        Self {
            newest: HashMap::new(),
        }
    }
}

impl<H> GroupOrder<H> {
    /// Registers stream `stream_id` of `producer`, whose completion `handle` signals.
    /// Returns the handle of the stream to wait for first, if any.
    pub fn register(&mut self, producer: GroupKey, stream_id: u64, handle: H) -> Option<H> {
        match self.newest.get(&producer) {
            Some((newest, _)) if *newest > stream_id => None,
            _ => self
                .newest
                .insert(producer, (stream_id, handle))
                .map(|(_, previous)| previous),
        }
    }

    /// Forgets the producers for which `keep` says no (e.g. whose last stream ended).
    pub fn retain(&mut self, mut keep: impl FnMut(&mut H) -> bool) {
        self.newest.retain(|_, (_, handle)| keep(handle));
    }

    pub fn len(&self) -> usize {
        self.newest.len()
    }

    pub fn is_empty(&self) -> bool {
        self.newest.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::wire::ProducerId;

    #[test]
    fn streams_wait_for_their_predecessor_only() {
        let mut order = GroupOrder::default();
        assert_eq!(order.register((ProducerId(7), 0), 2, "a"), None);
        assert_eq!(order.register((ProducerId(7), 0), 6, "b"), Some("a"));
        assert_eq!(
            order.register((ProducerId(9), 0), 10, "x"),
            None,
            "another producer is independent"
        );
        // Stream 14 was accepted before stream 10 of producer 7.
        assert_eq!(order.register((ProducerId(7), 0), 18, "d"), Some("b"));
        assert_eq!(
            order.register((ProducerId(7), 0), 14, "c"),
            None,
            "late: waits for nothing"
        );
        assert_eq!(
            order.register((ProducerId(7), 0), 22, "e"),
            Some("d"),
            "the newest stays the tail"
        );
        order.retain(|h| *h != "e");
        assert_eq!(order.len(), 1);
    }
}
